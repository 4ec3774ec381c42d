"""`main.py --mode predict|eval` as users run it: weights alone, no dataset, guarded outputs."""
import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import main  # noqa: E402  (the repository's entry point)

from conftest import LazyRuns, copy_run  # noqa: E402
from lfvit_jax import load_pretrained  # noqa: E402
from lfvit_jax.data import pipeline  # noqa: E402
from lfvit_jax.data.defaults import imagenet_config  # noqa: E402
from lfvit_jax.inference import predict  # noqa: E402
from lfvit_jax.inference.inputs import preprocess  # noqa: E402
from lfvit_jax.weights import pretrained  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# Weights written by the official implementation (tests/testdata): width 48, 12 blocks, 3 heads,
# 10 classes, 224 px, in the release's state_dict layout.
OFFICIAL = os.path.join(HERE, "testdata", "tiny_7x7_m4", "weights.npz")
TINY_FLAGS = ["--config=configs/lfvit_deit_s.py:res=224,m=4", "--config.model.width=48",
              "--config.model.num_heads=3", "--config.model.mlp_dim=192",
              "--config.model.num_classes=10"]


def run_main(args):
    """main.py in this process (fresh flags each time); returns its exit status."""
    return main.run(["main.py"] + [str(a) for a in args])


@pytest.fixture
def no_dataset(tmp_path, monkeypatch):
    """Empty data folders, and any attempt to open a dataset fails the test."""
    empty = tmp_path / "empty_data"
    empty.mkdir()
    monkeypatch.setenv("LFVIT_DATA_DIR", str(empty))
    monkeypatch.setenv("TFDS_DATA_DIR", str(empty))

    def refuse(*args, **kwargs):
        raise AssertionError("predict opened a dataset")
    monkeypatch.setattr(pipeline, "prepared_builder", refuse)
    monkeypatch.setattr(pipeline.tfds, "builder", refuse)
    yield empty
    assert not any(empty.iterdir()), "something was written into the data folder"


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (240 + 10 * i, 260, 3), np.uint8)).save(
            folder / f"photo{i}.jpg", quality=95)
    return folder


def read_rows(out_dir):
    return [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]


def python_api_logits(model, variables, folder, threshold):
    """The same JPEGs through the Python API: preprocess, then the model with its threshold."""
    cfg = imagenet_config()
    files = sorted(folder.iterdir())
    images = np.stack([preprocess(Image.open(f), cfg, model.img_size) for f in files])
    return jax.jit(model.apply)(variables, images, threshold)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["official_npz", "converted"])
def test_predict_from_weights_alone(tmp_path, no_dataset, jpegs, source):
    weights = OFFICIAL
    if source == "converted":
        weights = tmp_path / "converted"
        pretrained.convert(OFFICIAL, str(weights), num_heads=3, region_size=4)
    model_files = snapshot(weights) if source == "converted" else None
    out = tmp_path / "preds"
    rc = run_main(["--mode=predict", f"--workdir={tmp_path / 'new_run'}", *TINY_FLAGS,
                   f"--config.init_from={weights}", f"--input={jpegs}", f"--output={out}",
                   "--threshold=0.3", "--batch_size=8", "--save_logits=all"])
    assert rc == 0
    rows, saved = read_rows(out), np.load(out / "predictions.npz")
    model, variables = load_pretrained(OFFICIAL, num_heads=3, region_size=4)
    direct = python_api_logits(model, variables, jpegs, 0.3)
    assert [os.path.basename(r["file"]) for r in rows] == [f"photo{i}.jpg" for i in range(5)]
    np.testing.assert_allclose(saved["logits"], direct["logits"], atol=2e-5)
    np.testing.assert_allclose(saved["focus_logits"], direct["focus_logits"], atol=2e-5)
    assert [r["stage"] for r in rows] == [1 if e else 2 for e in np.asarray(direct["exited"])]
    assert [r["class"] for r in rows] == np.asarray(direct["logits"]).argmax(-1).tolist()
    # Ten classes are not ImageNet's thousand: no names rather than wrong ones.
    assert "class_name" not in rows[0]
    assert not (tmp_path / "new_run").exists() or not any((tmp_path / "new_run").iterdir())
    if model_files is not None:  # the model folder is only read
        assert snapshot(weights) == model_files


@pytest.fixture(scope="module")
def trained(runlocal_runs, tmp_path_factory):
    """Copies of the session's finished runlocal runs (['lfvit'], ['deit']), made when first
    used."""
    root = tmp_path_factory.mktemp("runs")
    return LazyRuns(lambda name: copy_run(runlocal_runs[name], root))


@pytest.fixture
def trained_run(trained, kind):
    """`kind`'s run, trained if it was not yet before the test's guard against datasets."""
    return trained[kind]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["lfvit", pytest.param("deit", marks=pytest.mark.slow)])
def test_predict_from_a_trained_run(tmp_path, trained_run, no_dataset, kind, capsys):
    """The command line on a run's own config and weights: a line per image, then the summary."""
    run = trained_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64), np.uint8)).save(folder / f"d{i}.png")
    before = snapshot(run)
    assert run_main(["--mode=predict", f"--workdir={run}", f"--input={folder}",
                     "--batch_size=8"]) == 0
    out = run / "predictions_1"
    rows = read_rows(out)
    assert len(rows) == 3 and all(r["class_name"] == str(r["class"]) for r in rows)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"Predicting with {run}/checkpoints/8 (params) into {out}"
    assert printed[1:4] == [predict.console_line(r) for r in rows]  # a line per image
    assert printed[4].startswith("Predicted 3 of 3 images in 3 files (0 skipped; ")
    if kind == "deit":  # one pass decides every image: no stages, no regions
        assert all(set(r) == {"file", "class", "class_name", "confidence"} for r in rows)
        assert not any("stage" in line or "exited" in line for line in printed[:5])
    else:
        assert all(r["stage"] in (1, 2) and len(r["region_box"]) == 4 for r in rows)
        assert "exited after localization" in printed[4]
    # A second run gets a fresh folder; an existing --output is refused unless --overwrite.
    assert run_main(["--mode=predict", f"--workdir={run}", f"--input={folder}",
                     "--batch_size=8"]) == 0
    assert read_rows(run / "predictions_2") == rows
    capsys.readouterr()
    assert run_main(["--mode=predict", f"--workdir={run}", f"--input={folder}",
                     f"--output={out}", "--batch_size=8"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert read_rows(out) == rows
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not str(k).startswith("predictions_")} == before


def test_nothing_classified_exits_non_zero_and_keeps_earlier_output(tmp_path, trained, capsys):
    run, out = trained["lfvit"], tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text("earlier\n")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rc = run_main(["--mode=predict", f"--workdir={run}", f"--input={tmp_path / 'broken.png'}",
                   f"--output={tmp_path / 'fresh'}"])
    assert rc == 1
    assert ("Predicted 0 of 1 image in 1 file (1 skipped: 1 unreadable image; 0 with non-finite "
            "outputs); ") in capsys.readouterr().out
    assert (out / "predictions.jsonl").read_text() == "earlier\n"


def test_eval_refuses_a_changed_model_and_keeps_the_run_files(trained, capsys):
    run = trained["lfvit"]
    before = snapshot(run)
    assert run_main(["--mode=eval", f"--workdir={run}", "--config=configs/demo.py:runlocal",
                     "--config.model.region_size=1"]) == 2
    assert "model.region_size" in capsys.readouterr().err
    assert run_main(["--mode=eval", f"--workdir={run}"]) == 0
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing overwritten
    new = {k for k in after if k not in before}
    assert new and all(str(k).startswith("eval_step8_") for k in new)
    result = json.loads(next(after[k] for k in new if k.name == "eval_result.json"))
    final = json.loads(before[pathlib.Path("eval_result.json")])
    assert result["focus_top1"] == final["focus_top1"]  # the same weights and data as training's


@pytest.mark.slow
def test_checkpoint_best_and_a_missing_step(trained, capsys):
    run = trained["lfvit"]
    assert run_main(["--mode=eval", f"--workdir={run}", "--checkpoint=best"]) == 0
    capsys.readouterr()
    assert run_main(["--mode=eval", f"--workdir={run}", "--checkpoint=3"]) == 1
    assert "No step 3" in capsys.readouterr().err
