"""`main.py --mode eval|predict` in two processes x 4 CPU devices (127.0.0.1) give exactly what one
process x 8 devices gives: the same eval summary, the same predictions in the same order."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import copy_run
from lfvit_jax.evaluation import evaluate
from lfvit_jax.inference import predict
from lfvit_jax.io import rundir
from processes import ROOT, finish, launch

pytestmark = pytest.mark.slow  # processes on localhost


@pytest.fixture(scope="module")
def run(runlocal_runs, tmp_path_factory):
    """A copy of the session's finished runlocal LF-ViT run (8 devices), and its config."""
    workdir = copy_run(runlocal_runs["lfvit"], tmp_path_factory.mktemp("mp"))
    return workdir, rundir.read_config(workdir)


def two_processes(args):
    """main.py in two processes of 4 devices each; returns process 0's output."""
    codes, outs = finish(launch([os.path.join(ROOT, "main.py"), *args],
                                JAX_DEFAULT_MATMUL_PRECISION="highest"))  # as conftest sets here
    assert codes == [0, 0], "\n".join(outs)
    return outs[0]


def last_json(out):
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def test_eval_in_two_processes_equals_one(run):
    workdir, config = run
    loaded, _, summary, _ = evaluate.evaluate_weights(config, str(workdir))
    out = two_processes(["--mode=eval", f"--workdir={workdir}"])
    multi = last_json(out)
    assert multi.pop("step") == loaded.step == 8
    assert multi == json.loads(json.dumps(summary))


@pytest.mark.parametrize("save_logits", ["final", "all"])  # streaming; both stages on all
def test_predict_in_two_processes_equals_one(run, tmp_path, save_logits):
    workdir, config = run
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        canvas = np.zeros((64, 64), np.uint8)
        canvas[rng.integers(0, 36):, rng.integers(0, 36):][:28, :28] = rng.integers(
            0, 255, (28, 28), np.uint8)
        Image.fromarray(canvas).save(images / f"img{i:02d}.png")
    (images / "zz_broken.png").write_bytes(b"not a png")  # last: batches stay the same

    def single(threshold, out):
        return predict.predict_checkpoint(config, str(workdir), [str(images)], threshold,
                                          batch_size=8, output=str(out),
                                          save_logits=save_logits)
    # An exit threshold between the images' confidences: some exit, some go on to focus.
    single(0.5, tmp_path / "probe")
    confidences = sorted(r["loc_confidence"] for r in rows(tmp_path / "probe"))
    threshold = (confidences[4] + confidences[5]) / 2
    one = single(threshold, tmp_path / "one")
    assert 0 < one["exited_fraction"] < 1 and one["skipped"] == 1
    out = two_processes(["--mode=predict", f"--workdir={workdir}", f"--input={images}",
                         "--batch_size=8", f"--threshold={threshold!r}",
                         f"--output={tmp_path / 'two'}", f"--save_logits={save_logits}"])
    two = last_json(out)
    assert {k: two[k] for k in ("images", "predicted", "skipped", "exited_fraction")} == {
        k: one[k] for k in ("images", "predicted", "skipped", "exited_fraction")}
    assert [s["file"] for s in two["skipped_files"]] == [str(images / "zz_broken.png")]
    assert rows(tmp_path / "two") == rows(tmp_path / "one")
    assert [r["file"] for r in rows(tmp_path / "two")] == [
        str(images / f"img{i:02d}.png") for i in range(10)]
    a, b = np.load(tmp_path / "one/predictions.npz"), np.load(tmp_path / "two/predictions.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def rows(folder):
    return [json.loads(l) for l in (folder / "predictions.jsonl").read_text().splitlines()]
