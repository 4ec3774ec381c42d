"""Bad inputs through the commands users run: each gets an exit status (2: the command line is
wrong, 1: the run failed), a message naming the problem without a traceback, and loses nothing
written before. Damaged checkpoints are skipped for the newest intact step.

`main.py` runs in-process (lfvit_jax.cli parses into fresh flags each time); a few commands run as
real subprocesses. One small demo run (configs/demo.py:runlocal, 4 steps, checkpoints at 2 and 4)
is trained once by `python main.py` on one device and copied for each test that needs it.
"""
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
sys.path.insert(0, ROOT)

import main  # noqa: E402  (the repository's main.py)
from processes import process_env  # noqa: E402
from lfvit_jax.core import config_args  # noqa: E402
from lfvit_jax.inference import inputs  # noqa: E402
from lfvit_jax.data.defaults import cluttered_mnist_config  # noqa: E402

# Eight devices in tests: evaluation batches of 200, on the first 200 test canvases.
def demo(arg="runlocal"):
    """runlocal, shorter: 4 steps, checkpoints at 2 and 4."""
    return [f"--config=configs/demo.py:{arg}", "--config.eval_batch_size=200",
            "--config.data.eval_split=test[:200]", "--config.total_steps=4",
            "--config.checkpoint_every_steps=2"]


DEMO = demo()


def run_main(capsys, *args):
    code = main.run(["main.py", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def check(result, code, *words):
    status, out, err = result
    assert status == code, (status, out[-2000:], err[-3000:])
    assert "Traceback" not in err and "Traceback" not in out, err
    for word in words:
        assert word in err, (word, err)
    return out, err


def fingerprint(folder):
    """Every file under `folder` with the hash of its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def quiet_run(argv):
    """main.py in-process for a fixture: (status, stdout, stderr), kept out of the tests' own."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main.run(argv)
    return code, out.getvalue(), err.getvalue()


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_device_env():
    """A real process on one device (the compilation cache is the session's, see conftest)."""
    return process_env(1)


def train_process(workdir, env):
    return subprocess.run([sys.executable, "main.py", *DEMO, "--workdir", str(workdir)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=400)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_device_env):
    """The demo run, trained by `python main.py` on one device (its checkpoints then hold one
    copy of each array, so damage to any of their data files is damage to the state)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    result = train_process(workdir, one_device_env)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
    """A fresh copy of the trained run, and the fingerprint of its files before the test."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy, fingerprint(copy)


def flip(path, start, count):
    data = bytearray(open(path, "rb").read())
    for i in range(start, start + count):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def largest_value(step_dir, prefix):
    """(data file, offset, length) of the largest saved array under `prefix` ('params.' or
    'opt_state.'), read from the index of orbax's OCDBT store with tensorstore's public dump."""
    import tensorstore as ts
    root = os.path.join(step_dir, "state", "ocdbt.process_0")
    store = ts.KvStore.open(f"file://{root}/").result()
    version = ts.ocdbt.dump(store).result()["versions"][-1]
    assert version["root_height"] == 0  # a small state: one node of the index holds every key
    node = ts.ocdbt.dump(store, version["root"]["location"]).result()
    refs = [e["indirect_value"].removeprefix("value::").rsplit(":", 2) for e in node["entries"]
            if e["key"].startswith(prefix.encode()) and "indirect_value" in e]
    name, offset, length = max(refs, key=lambda ref: int(ref[2]))
    return os.path.join(root, name), int(offset), int(length)


def flip_params(step_dir, prefix="params.", count=400):
    """Damages the bytes of the step's largest parameter array (or, by prefix, another's)."""
    path, offset, length = largest_value(step_dir, prefix)
    flip(path, offset + length // 4, min(count, length // 2))


# --- The command line and the config: exit 2, nothing written -----------------------------------

USAGE = [
    (DEMO + ["--config.nonexistent=1"], ["Unknown config key --config.nonexistent", "batch_size"]),
    (DEMO + ["--config.model.nope=1"], ["Unknown config key --config.model.nope", "region_size"]),
    (DEMO + ["--config.batch_size=x"], ["--config.batch_size", "int"]),
    (["--config", "configs/demo.py:runlocal,m=x"], ["m='x'", "int"]),
    (["--config", "configs/demo.py:runlocal,baseline=maybe"], ["baseline='maybe'", "boolean"]),
    (["--config", "configs/demo.py:runlocal,m=99"], ["m=99", "[1, 4]"]),
    (["--config", "configs/demo.py:runlocal,m=2,m=3"], ["'m' is given twice"]),
    (["--config", "configs/demo.py:rez=3"], ["Unknown config argument 'rez'", "'runlocal'"]),
    (["--config", "configs/demo.py:alpha"], ["'alpha' needs a value"]),
    (["--config", "configs/lfvit_deit_s.py:runlocal,res=288"], ["runlocal trains at 64 px"]),
    (["--config", "configs/nope.py"], ["Config 'configs/nope.py' not found", "'demo'"]),
    (DEMO + ["--config.precision=float16"], ["precision", "float32"]),
    (DEMO + ["--bogus"], ["Unknown flag --bogus"]),
    (DEMO + ["--mode=fly"], ["--mode", "train"]),
    (DEMO + ["--mode=eval", "--checkpoint=newest"], ["'latest', 'best' or a step number"]),
    (DEMO + ["--mode=predict"], ["--input is required"]),
    (DEMO + ["--mode=predict", "--input=x.png", "--batch_size=0"],
     ["--batch_size"]),
    (DEMO + ["--mode=predict", "--input=x.png", "--threshold=1.5"], ["--threshold", "[0.0, 1.0]"]),
    ([], ["--config is required"]),
    (["--mode=eval", "--config.data.eval_split=tset"], ["--config is needed", "no trained run"]),
]


@pytest.mark.parametrize("args,words", USAGE, ids=[" ".join(a[-1:]) + f"-{i}"
                                                    for i, (a, _) in enumerate(USAGE)])
def test_usage_errors_exit_2_and_write_nothing(capsys, tmp_path, args, words):
    workdir = tmp_path / "w"
    check(run_main(capsys, *args, "--workdir", workdir), 2, *words)
    assert not workdir.exists()


def test_missing_workdir_flag(capsys):
    check(run_main(capsys, *DEMO), 2, "--workdir")


def test_runlocal_keeps_an_explicit_m():
    assert config_args.load_config("demo.py:runlocal,m=3").model.region_size == 3
    assert config_args.load_config("demo.py:runlocal").model.region_size == 2
    assert config_args.load_config("demo.py:runlocal,baseline=0").model.name == "lfvit"


def test_verbosity_shows_the_traceback(capsys, tmp_path):
    status, _, err = run_main(capsys, "--config", "configs/demo.py:runlocal,m=x", "--workdir",
                              tmp_path, "--verbosity=1")
    assert status == 2 and "Traceback" in err


# --- A trained run: refused configs and inputs keep everything -----------------------------------

@pytest.mark.slow
def test_train_with_another_model_keeps_the_run(capsys, run_copy):
    workdir, before = run_copy
    check(run_main(capsys, *demo("runlocal,m=1"), "--workdir", workdir), 2,
          "different", "model.region_size", "fresh --workdir")
    assert fingerprint(workdir) == before


@pytest.mark.slow
def test_checkpoint_of_another_model_is_summarised(capsys, run_copy):
    workdir, before = run_copy
    os.remove(workdir / "config.json")  # only the checkpoint can tell
    _, err = check(run_main(capsys, *DEMO, "--config.model.width=48", "--workdir", workdir), 1,
                   "do not fit", "shape", "fresh --workdir")
    assert len(err.splitlines()) <= 4
    assert not (workdir / "config.json").exists()  # nothing written before validation
    assert fingerprint(workdir) == {k: v for k, v in before.items() if k != "config.json"}


@pytest.mark.slow
def test_eval_with_another_model_is_refused(capsys, run_copy):
    workdir, before = run_copy
    check(run_main(capsys, "--mode=eval", *demo("runlocal,m=1"), "--workdir", workdir), 2,
          "differs from the run", "Omit --config")
    assert fingerprint(workdir) == before


@pytest.mark.slow
def test_eval_of_a_missing_step(capsys, run_copy):
    workdir, before = run_copy
    check(run_main(capsys, "--mode=eval", "--checkpoint=5", "--workdir", workdir), 1,
          "No step 5", "[2, 4]")
    assert fingerprint(workdir) == before


@pytest.mark.slow
def test_eval_of_an_unknown_split(capsys, run_copy):
    workdir, before = run_copy
    _, err = check(run_main(capsys, "--mode=eval", "--config=configs/demo.py:runlocal",
                            "--config.eval_batch_size=200", "--config.data.eval_split=tset",
                            "--workdir", workdir), 1, "tset")
    assert len(err.splitlines()) <= 14
    assert fingerprint(workdir) == before


@pytest.mark.slow
def test_predict_missing_input(capsys, run_copy):
    workdir, before = run_copy
    check(run_main(capsys, "--mode=predict", "--input=/nonexistent.png", "--workdir", workdir),
          1, "/nonexistent.png does not exist")
    assert fingerprint(workdir) == before


@pytest.mark.slow
def test_predict_empty_folder(capsys, run_copy, tmp_path):
    workdir, before = run_copy
    (tmp_path / "empty").mkdir()
    check(run_main(capsys, "--mode=predict", f"--input={tmp_path / 'empty'}", "--workdir",
                   workdir), 1, "No images")
    assert fingerprint(workdir) == before


@pytest.mark.slow
def test_predict_never_overwrites_earlier_predictions(capsys, run_copy, tmp_path):
    workdir, _ = run_copy
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    out = tmp_path / "preds"
    check(run_main(capsys, "--mode=predict", f"--input={image}", f"--output={out}",
                   "--workdir", workdir), 0)
    before = fingerprint(out)
    check(run_main(capsys, "--mode=predict", f"--input={image}", f"--output={out}",
                   "--workdir", workdir), 2, "not empty", "--overwrite")
    assert fingerprint(out) == before


@pytest.mark.slow
def test_predict_nothing_readable(capsys, run_copy, tmp_path):
    workdir, _ = run_copy
    (tmp_path / "a.png").write_bytes(b"\x89PNG not really")
    _, err = check(run_main(capsys, "--mode=predict", f"--input={tmp_path / 'a.png'}",
                            f"--output={tmp_path / 'o'}", "--workdir", workdir), 1,
                   "No image could be classified", "unreadable image")


# --- Every kind of image file, and bad .npz arrays, in one prediction run ------------------------

def _zoo(folder):
    """name -> (file, expected error words or None, expected 8-bit grey level or None)."""
    folder.mkdir()
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(folder / "grey16.png")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(folder / "flat16.png")
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).convert("P").save(folder / "palette.gif")
    Image.fromarray(half).save(folder / "plain.webp", lossless=True)
    Image.fromarray(half).save(folder / "plain.tiff")
    Image.fromarray(half).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent: white
    Image.fromarray(rgba).save(folder / "transparent.png")
    tall = np.zeros((32, 64, 3), np.uint8)
    tall[:, :32] = 255
    img = Image.fromarray(tall)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(folder / "rotated.jpg", exif=exif, quality=100)
    Image.fromarray(np.full((1, 30000), 200, np.uint8)).save(folder / "strip.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    cfg = cluttered_mnist_config()
    good = np.zeros((2, 64, 64, 3), np.float32)
    np.savez(folder / "uint8.npz", images=np.zeros((2, 64, 64, 3), np.uint8))
    bad = good.copy()
    bad[1, 3, 3, 0] = np.nan
    np.savez(folder / "nan.npz", images=bad)
    np.savez(folder / "unnormalized.npz", images=np.full((1, 64, 64, 3), 200.0))
    np.savez(folder / "shape.npz", images=np.zeros((1, 32, 32, 3), np.float32))
    np.savez(folder / "objects.npz", images=np.array([None, 1], dtype=object))
    np.savez(folder / "noimages.npz", pixels=good)
    (folder / "garbage.npz").write_bytes(b"not a zip file")
    return cfg


ZOO_ERRORS = {
    "broken.jpg": ["unreadable image"],
    "uint8.npz": ["is uint8", "normalized as in training", "mean (0.5, 0.5, 0.5)"],
    "nan.npz[1]": ["NaN or inf"],
    "unnormalized.npz[0]": ["outside the normalized range", "[-1, 1]", "std (0.5, 0.5, 0.5)"],
    "shape.npz": ["shape (1, 32, 32, 3)", "(N, 64, 64, 3)"],
    "objects.npz": ["Python objects"],
    "noimages.npz": ["no 'images' array", "pixels"],
    "garbage.npz": ["not a readable .npz"],
}
ZOO_OK = ["grey16.png", "flat16.png", "palette.gif", "plain.webp", "plain.tiff", "cmyk.jpg",
          "transparent.png", "rotated.jpg", "strip.png", "nan.npz[0]"]


@pytest.fixture(scope="module")
def zoo_run(runlocal_runs, tmp_path_factory):
    base = tmp_path_factory.mktemp("zoo")
    cfg = _zoo(base / "in")
    npz = sorted(str(p) for p in (base / "in").glob("*.npz"))
    argv = ["main.py", "--mode=predict", f"--input={base / 'in'}", *[f"--input={p}" for p in npz],
            f"--output={base / 'out'}", "--workdir", str(runlocal_runs["lfvit"]), "--batch_size=8"]
    code, out, err = quiet_run(argv)
    lines = (base / "out" / "predictions.jsonl").read_text().splitlines()

    def strict(constant):
        raise ValueError(f"not strict JSON: {constant}")
    records = {os.path.basename(r["file"]): r
               for r in (json.loads(line, parse_constant=strict) for line in lines)}
    summary = last_json(out)
    skipped = {os.path.basename(s["file"]): s["error"] for s in summary["skipped_files"]}
    return code, err, records, skipped, cfg, base / "in"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO_ERRORS))
def test_zoo_bad_files_are_reported(zoo_run, name):
    code, err, records, skipped, _, _ = zoo_run
    assert code == 0 and "Traceback" not in err
    assert name not in records
    for word in ZOO_ERRORS[name]:
        assert word in skipped[name], (word, skipped[name])
        assert word in err


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_OK)
def test_zoo_readable_files_are_predicted(zoo_run, name):
    _, _, records, _, _, _ = zoo_run
    record = records[name]
    assert 0 <= record["class"] < 10 and 0 <= record["confidence"] <= 1


def test_decoding_is_faithful(tmp_path):
    cfg = _zoo(tmp_path / "in")
    load = lambda name: np.asarray(inputs.load_image(str(tmp_path / "in" / name)))
    grey = load("grey16.png")
    assert grey.dtype == np.uint8 and grey.max() == 255 and abs(grey.mean() - 127.5) < 1
    assert (load("flat16.png") == round(40000 / 257)).all()  # scaled, not clipped to 255
    assert (load("transparent.png") == 255).all()
    np.testing.assert_array_equal(load("palette.gif")[0, [0, 40]], [[255] * 3, [0] * 3])
    cmyk = load("cmyk.jpg").astype(int)
    assert (cmyk[:, :30] > 240).all() and (cmyk[:, 34:] < 15).all()
    rotated = load("rotated.jpg")
    assert rotated.shape[:2] == (64, 32)  # upright: 32 wide, 64 tall; white half on top
    assert rotated[:28].mean() > 240 and rotated[36:].mean() < 15
    strip = inputs.preprocess(inputs.load_image(str(tmp_path / "in" / "strip.png")), cfg, 64)
    np.testing.assert_allclose(strip, (200 / 255 - 0.5) / 0.5, atol=1e-6)


def test_too_many_pixels(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_PIXELS", 1000)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="40x40 = 1,600 pixels, more than the 1,000"):
        inputs.load_image(str(tmp_path / "big.png"))


@pytest.mark.slow
def test_nonfinite_outputs_are_reported_per_image(tmp_path):
    import jax
    from lfvit_jax.models.lfvit import LFViT
    from lfvit_jax.inference.predict import predict
    model = LFViT(num_classes=10, width=32, depth=2, num_heads=2, mlp_dim=64, patch=8,
                  img_size=64, region_size=2)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    variables = jax.tree.map(lambda x: x * np.nan if x.ndim == 1 and x.shape[0] == 10 else x,
                             variables)  # NaN classifier biases
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 64, 64, 3), np.float32))
    summary = predict(model, variables, [str(tmp_path / "x.npz")], cluttered_mnist_config(),
                      str(tmp_path / "out"), threshold=0.5, batch_size=2, progress=False)
    assert summary["nonfinite"] == 2 and summary["predicted"] == 0
    for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line, parse_constant=lambda c: pytest.fail(c))
        assert record["class"] is None and "not finite" in record["error"]


# --- Damaged checkpoints --------------------------------------------------------------------------

@pytest.mark.slow
def test_flipped_bytes_eval_uses_the_previous_step_and_training_resumes_exactly(
        capsys, trained, tmp_path, one_device_env):
    pristine, damaged = tmp_path / "pristine", tmp_path / "damaged"
    shutil.copytree(trained, pristine)
    shutil.copytree(trained, damaged)
    out, _ = check(run_main(capsys, "--mode=eval", "--checkpoint=2", "--workdir", pristine), 0)
    step2 = last_json(out)
    assert step2["step"] == 2
    flip_params(damaged / "checkpoints" / "4")
    # Caught by the checksums, or before them by the decompressor of the damaged chunk.
    out, err = check(run_main(capsys, "--mode=eval", "--workdir", damaged), 0,
                     f"{damaged}/checkpoints/4 is corrupt")
    assert len(err.splitlines()) <= 2, err
    assert last_json(out) == step2
    # Training (on one device, as the run was) sets the damaged step aside, resumes from step 2
    # and redoes steps 3-4 exactly.
    result = train_process(damaged, one_device_env)
    out, err = check((result.returncode, result.stdout, result.stderr), 0,
                     f"{damaged}/checkpoints/4 is corrupt", "4.corrupt")
    assert "start at step 2/4" in out
    assert (damaged / "checkpoints" / "4.corrupt").is_dir()
    restore = lambda w: ocp.tree.to_flat_dict(ocp.StandardCheckpointer().restore(
        str(w / "checkpoints" / "4" / "state")))
    a, b = restore(trained), restore(damaged)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def _damage_truncate(step):
    path, offset, length = largest_value(step, "params.")
    with open(path, "r+b") as f:
        f.truncate(offset + length // 2)


def _damage_metadata(step):
    os.remove(step / "state" / "_METADATA")


def _damage_checksums(step):
    for root, _, files in os.walk(step / "checksums"):
        for f in files:
            open(os.path.join(root, f), "w").write("{not json")


def _damage_emptied(step):
    shutil.rmtree(step)
    step.mkdir()


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_metadata, _damage_checksums,
                                    _damage_emptied], ids=lambda f: f.__name__[8:])
@pytest.mark.slow
def test_damaged_latest_step_predict_uses_the_previous_one(capsys, run_copy, tmp_path, damage):
    workdir, before = run_copy
    damage(workdir / "checkpoints" / "4")
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    out, err = check(run_main(capsys, "--mode=predict", f"--input={image}",
                              f"--output={tmp_path / 'o'}", "--workdir", workdir), 0,
                     f"{workdir}/checkpoints/4 is")
    assert f"Predicting with {workdir}/checkpoints/2" in out
    assert len(err.splitlines()) <= 6, err


@pytest.mark.slow
def test_no_intact_step_is_an_error(capsys, run_copy):
    workdir, _ = run_copy
    for step in ("2", "4"):
        flip_params(workdir / "checkpoints" / step)
    before = fingerprint(workdir)
    check(run_main(capsys, "--mode=eval", "--workdir", workdir), 1, "No intact checkpoint",
          "checkpoints/2 is corrupt", "new --workdir")
    check(run_main(capsys, *DEMO, "--workdir", workdir), 1, "No intact checkpoint")
    assert fingerprint(workdir) == before  # nothing set aside, nothing written


@pytest.mark.slow
def test_a_named_damaged_step_is_an_error(capsys, run_copy):
    workdir, _ = run_copy
    flip_params(workdir / "checkpoints" / "4")
    check(run_main(capsys, "--mode=eval", "--checkpoint=4", "--workdir", workdir), 1,
          "checkpoints/4 is corrupt")


@pytest.mark.slow
def test_eval_reads_and_verifies_the_parameters_alone(capsys, run_copy):
    """Damage to the optimizer state does not touch what eval reads: step 4's parameters, intact
    by their checksums, give the training run's own final numbers."""
    workdir, _ = run_copy
    flip_params(workdir / "checkpoints" / "4", prefix="opt_state.")
    out, err = check(run_main(capsys, "--mode=eval", "--workdir", workdir), 0)
    result = last_json(out)
    final = json.loads((workdir / "eval_result.json").read_text())
    assert result["step"] == 4 and result["focus_top1"] == final["focus_top1"]
    assert "corrupt" not in err


# --- The other entry points, as real processes ---------------------------------------------------

def subprocess_run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


SUBPROCESSES = [
    (["main.py", "--config", "configs/demo.py:runlocal", "--config.nonexistent=1",
      "--workdir", "/tmp/never"], 2, ["Unknown config key"]),
    (["-m", "lfvit_jax.cli.main", "flops", "--config", "configs/demo.py:m=x"], 2, ["m='x'"]),
    (["-m", "lfvit_jax.cli.main", "convert", "--src", "/nonexistent.pth", "--dst", "/tmp/never"], 1,
     ["/nonexistent.pth does not exist"]),
    (["-m", "lfvit_jax.cli.main", "figures", "--workdir", "/nonexistent"], 1, ["no finished run"]),
    (["-m", "lfvit_jax.cli.main", "match", "--workdir", "/nonexistent"], 2, ["--baseline"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,code,words", SUBPROCESSES, ids=lambda a: str(a)[:30])
def test_entry_points_as_processes(args, code, words):
    result = subprocess_run(*args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr
    assert len(result.stderr.splitlines()) <= 4, result.stderr


def test_convert_refuses_damaged_weights(tmp_path):
    from lfvit_jax.io.state_dict import read_state_dict
    np.savez(tmp_path / "ints.npz", **{"head.weight": np.ones((10, 32), np.int64)})
    np.savez(tmp_path / "nan.npz", **{"head.weight": np.full((10, 32), np.nan, np.float32)})
    with pytest.raises(ValueError, match="head.weight is int64; weights must be floating"):
        read_state_dict(str(tmp_path / "ints.npz"))
    with pytest.raises(ValueError, match="head.weight holds NaN"):
        read_state_dict(str(tmp_path / "nan.npz"))
