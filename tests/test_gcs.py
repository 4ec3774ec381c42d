"""A run that lives in a bucket (a GCS emulator on 127.0.0.1): the dataset prepared into it,
training into it, SIGKILL and an exact resume from it, eval and predict reading the run from it
and writing there, and nothing written to local disk under a `gs:` folder. A bucket that cannot
be used is reported in one line, fast."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from processes import ROOT, TESTS, free_port, process_env
from lfvit_jax.io import rundir, storage
from lfvit_jax.data.defaults import cluttered_mnist_config
from lfvit_jax.data.pipeline import eval_iterator

pytestmark = pytest.mark.slow  # a GCS emulator and training processes



@pytest.fixture(scope="module")
def env(gcs):
    return process_env(2, **gcs.env)


@pytest.fixture(scope="module")
def data(gcs, env):
    """cluttered MNIST prepared straight into the bucket."""
    url = f"gs://{gcs.bucket}/data"
    out = subprocess.run([sys.executable, "-m", "lfvit_jax.cli.main", "prepare", "cluttered_mnist",
                          "--data_dir", url], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Uploaded to {url}" in out.stdout
    return url


def launch(args, env, cwd, script=(os.path.join(ROOT, "main.py"),)):
    return subprocess.Popen([sys.executable, *script, *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc, timeout=400):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def state(url):
    return ocp.tree.to_flat_dict(ocp.StandardCheckpointer().restore(storage.path(url)))


def test_run_in_a_bucket(gcs, data, env, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    bucket = f"gs://{gcs.bucket}"
    flags = ["--config", os.path.join(ROOT, "configs/demo.py:runlocal"),
             f"--config.data.data_dir={data}"]
    rc, out = finish(launch(flags + ["--workdir", f"{bucket}/straight"], env, cwd))
    assert rc == 0, out
    # Killed between its checkpoints 4 and 8 (batches after the fifth come slowly).
    killed = f"{bucket}/killed"
    proc = launch(flags + ["--workdir", killed], env, cwd,
                  script=(os.path.join(TESTS, "slow_main.py"), "5", "1.0"))
    deadline = time.time() + 300
    while not storage.path(f"{killed}/checkpoints/4/commit_success.txt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert not storage.path(f"{killed}/checkpoints/8").exists()
    rc, out = finish(launch(flags + ["--workdir", killed], env, cwd))
    assert rc == 0, out
    assert "start at step 4/8" in out, out
    a, b = state(f"{bucket}/straight/checkpoints/8/state"), state(f"{killed}/checkpoints/8/state")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    trained = json.loads(storage.path(f"{killed}/eval_result.json").read_text())
    lines = storage.path(f"{killed}/metrics.jsonl").read_text().splitlines()
    # The killed run may have logged step 6 before it died; the resumed run logs 6 and 8.
    logged = [json.loads(l)["step"] for l in lines if "train/loss" in l]
    assert sorted(set(logged)) == [2, 4, 6, 8] and logged[-2:] == [6, 8], logged
    assert any(p.name.startswith("events.out.tfevents") for p in storage.path(killed).iterdir())

    # eval and predict read the run from the bucket and write there.
    rc, out = finish(launch(["--mode", "eval", "--workdir", killed], env, cwd))
    assert rc == 0, out
    assert f"results in {killed}/eval_step8_" in out, out
    folder = storage.path(out.split("results in ")[1].split()[0])
    assert json.loads((folder / "eval_result.json").read_text())["top1"] == trained["top1"]
    rng = np.random.default_rng(0)
    for i in range(5):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64), np.uint8)).save(buffer, format="png")
        storage.path(f"{bucket}/inputs/img{i}.png").write_bytes(buffer.getvalue())
    rc, out = finish(launch(["--mode", "predict", "--workdir", killed, "--input",
                             f"{bucket}/inputs", "--batch_size", "4"], env, cwd))
    assert rc == 0, out
    rows = [json.loads(l) for l in
            storage.path(f"{killed}/predictions_1/predictions.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [f"{bucket}/inputs/img{i}.png" for i in range(5)]
    assert all(0 <= r["class"] < 10 for r in rows)
    assert list(cwd.iterdir()) == []  # no ./gs:/... and nothing else on local disk


def test_copy_a_prepared_dataset_to_local_disk(data, env, tmp_path):
    local = tmp_path / "tfds"
    out = subprocess.run([sys.executable, "-m", "lfvit_jax.cli.main", "prepare", "copy",
                          "cluttered_mnist", "--source", data, "--data_dir", str(local)],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    files = storage.files(f"{data}/cluttered_mnist")
    assert files == storage.files(local / "cluttered_mnist") and len(files) == 4
    batches = {}
    for where in (data, str(local)):
        cfg = cluttered_mnist_config()
        cfg.data_dir = where
        batches[where] = next(eval_iterator(cfg, 100, process_index=0, process_count=1))
    for key in batches[data]:
        np.testing.assert_array_equal(batches[data][key], batches[str(local)][key])


def check_in_a_fresh_process(url, **env):
    """`storage.check_reachable(url)` in a new process (as a job's first step), the environment
    cleared of credentials and emulators and then given `env`: (seconds, what it printed)."""
    clean = {k: v for k, v in os.environ.items()
             if k not in storage.EMULATOR_VARIABLES + ("GOOGLE_APPLICATION_CREDENTIALS",)}
    code = ("from lfvit_jax.io import storage\ntry:\n    storage.check_reachable("
            f"{url!r}, 'local/folder', None)\nexcept ValueError as e:\n    print(f'Error: {{e}}')")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(clean, PYTHONPATH=ROOT, **env), timeout=60)
    return time.perf_counter() - start, out.stdout + out.stderr


def test_a_bucket_without_credentials_fails_fast_in_one_line(tmp_path):
    seconds, out = check_in_a_fresh_process("gs://some-bucket/run", HOME=str(tmp_path),
                                            CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    assert seconds < 10 and len(out.splitlines()) == 1, out
    assert out.startswith("Error: gs://some-bucket/run: no Google Cloud credentials found; set "
                          "GOOGLE_APPLICATION_CREDENTIALS"), out
    assert "STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL" in out


def test_an_unreachable_emulator_fails_fast_in_one_line():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    seconds, out = check_in_a_fresh_process("gs://b/x", STORAGE_EMULATOR_HOST=url)
    assert seconds < 10 and out == (f"Error: gs://b/x: cannot reach STORAGE_EMULATOR_HOST={url} "
                                    "(ConnectionError); check that the emulator runs.\n"), out


def test_a_reachable_bucket_passes_and_a_missing_one_is_named(gcs):
    storage.check_reachable(f"gs://{gcs.bucket}/anything/below", "/local/path")
    with pytest.raises(ValueError, match=r"gs://no-such-bucket/x: there is no bucket "
                                         r"no-such-bucket; create it or fix the name \(HTTP 404"):
        storage.check_reachable(f"gs://{gcs.bucket}/run", "gs://no-such-bucket/x")


def test_an_output_folder_in_a_bucket_is_checked_and_removed_on_failure(gcs):
    folder = storage.path(f"gs://{gcs.bucket}/outputs/run/preds")
    with pytest.raises(RuntimeError, match="failed"):
        with rundir.output_folder(folder) as out:
            (out / "predictions.jsonl").write_text("{}\n")
            raise RuntimeError("the job failed")
    assert not storage.path(f"gs://{gcs.bucket}/outputs").exists()
    with rundir.output_folder(folder) as out:
        (out / "predictions.jsonl").write_text("{}\n")
    assert [p.name for p in folder.iterdir()] == ["predictions.jsonl"]
