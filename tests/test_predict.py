"""Batch prediction over files, folders and .npz, with a corrupt file skipped; what it tells the
console, how it counts, and the output folder checked first and left clean on failure."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from lfvit_jax import tasks
from lfvit_jax.data.defaults import class_names, cluttered_mnist_config, imagenet_config
from lfvit_jax.inference import predict as predict_module, predictors
from lfvit_jax.inference.predict import predict
from lfvit_jax.models.lfvit import LFViT
from lfvit_jax.models.vit import DeiT

TINY = dict(num_classes=10, width=32, depth=2, num_heads=2, mlp_dim=64, patch=8, img_size=64,
            region_size=2)


@pytest.fixture(scope="module")
def model_and_vars():
    model = LFViT(**TINY)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    return model, variables


@pytest.mark.slow
def test_files_folder_npz_and_a_corrupt_file(tmp_path, model_and_vars):
    model, variables = model_and_vars
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    pixels = []
    for i in range(5):
        arr = rng.integers(0, 256, (64, 64, 3), np.uint8)
        pixels.append(arr)
        Image.fromarray(arr).save(folder / ("sub" if i % 2 else "") / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    cfg = cluttered_mnist_config()
    npz_images = ((np.stack(pixels[:3]) / 255.0 - 0.5) / 0.5).astype(np.float32)
    np.savez(tmp_path / "batch.npz", images=npz_images)
    out_dir, overlays = tmp_path / "out", tmp_path / "overlays"
    summary = predict(model, variables, [str(folder), str(tmp_path / "batch.npz")], cfg,
                      str(out_dir), threshold=0.5, batch_size=4, progress=False,
                      overlays_dir=str(overlays))
    assert summary["predicted"] == 8 and summary["skipped"] == 1
    pngs = sorted(p.name for p in overlays.iterdir())
    assert len(pngs) == 8 and pngs[0].startswith("00000_") and pngs[-1] == "00007_batch_2.png"
    assert summary["skipped_files"][0]["file"].endswith("broken.jpg")
    lines = [json.loads(x) for x in (out_dir / "predictions.jsonl").read_text().splitlines()]
    saved = np.load(out_dir / "predictions.npz")
    assert len(lines) == 8 and saved["logits"].shape == (8, 10)

    # Files and their .npz copies give the same predictions as a direct forward pass.
    direct = model.apply(variables, npz_images, threshold=0.5)
    by_name = {line["file"]: (i, line) for i, line in enumerate(lines)}
    for k, name in enumerate(["img0.png", "img1.png", "img2.png"]):
        (i, from_file), = [v for f, v in by_name.items() if f.endswith(name)]
        j, from_npz = by_name[f"{tmp_path / 'batch.npz'}[{k}]"]
        np.testing.assert_allclose(saved["logits"][i], direct["logits"][k], atol=1e-4)
        np.testing.assert_allclose(saved["logits"][j], direct["logits"][k], atol=1e-4)
        assert from_file["class"] == int(np.argmax(direct["logits"][k]))
        assert from_file["stage"] == (1 if direct["exited"][k] else 2)
        assert from_file["region_box"] == model.grid.region_boxes(int(direct["region"][k])).tolist()
        assert from_file["kept_tokens"] == np.asarray(direct["coarse_index"][k]).tolist()


def test_region_box_in_pixels():
    model = LFViT(**dict(TINY, region_size=3))  # h1 = 4: 2 x 2 windows of 3 x 3 coarse tokens
    assert model.grid.region_boxes(0).tolist() == [0, 0, 48, 48]
    assert model.grid.region_boxes(3).tolist() == [16, 16, 64, 64]


def test_bad_inputs(tmp_path, model_and_vars):
    model, variables = model_and_vars
    cfg = cluttered_mnist_config()
    with pytest.raises(ValueError, match="does not exist"):
        predict(model, variables, [str(tmp_path / "nope.png")], cfg, str(tmp_path / "o"), 0.5)
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 32, 32, 3), np.float32))
    summary = predict(model, variables, [str(tmp_path / "wrong.npz")], cfg, str(tmp_path / "o"),
                      0.5, progress=False)
    assert summary["predicted"] == 0 and "expected (N, 64, 64, 3)" in summary["skipped_files"][0]["error"]


@pytest.fixture
def mixed_folder(tmp_path):
    """Three JPEGs, a file that is not an image, and two files predict does not read in a folder."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (70, 80, 3), np.uint8)).save(folder / f"p{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    np.savez(folder / "arrays.npz", images=np.zeros((2, 64, 64, 3), np.float32))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_console_lines_and_counts_on_a_mixed_folder(tmp_path, model_and_vars, mixed_folder,
                                                    capsys, caplog):
    model, variables = model_and_vars
    names = [f"digit {d}" for d in range(10)]
    summary = predict(model, variables, [str(mixed_folder)], cluttered_mnist_config(),
                      str(tmp_path / "out"), threshold=0.5, batch_size=8, progress=False,
                      class_names=names, quiet=False)
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().split("\n")
            if x]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{r['file']}  {r['class_name']}  {r['confidence']:.3f}  stage {r['stage']}"
                     for r in rows]
    assert [r["file"] for r in rows] == [str(mixed_folder / f"p{i}.jpg") for i in range(3)]
    assert {k: summary[k] for k in ("files", "images", "predicted", "skipped", "nonfinite",
                                    "skipped_by_reason", "ignored_files")} == {
        "files": 4, "images": 4, "predicted": 3, "skipped": 1, "nonfinite": 0,
        "skipped_by_reason": {"unreadable image": 1},
        "ignored_files": [str(mixed_folder / "arrays.npz"), str(mixed_folder / "notes.txt")]}
    assert "arrays.npz" in caplog.text and "notes.txt" in caplog.text
    # Throughput leaves compilation out: the model compiled here, so it is counted apart.
    assert summary["executables"] >= 1 and 0 < summary["compile_seconds"] < summary["seconds"]
    assert summary["img_per_sec"] == pytest.approx(
        3 / (summary["seconds"] - summary["compile_seconds"]))
    line = predict_module.describe(summary)
    assert line.startswith("Predicted 3 of 4 images in 4 files (1 skipped: 1 unreadable image; "
                           "0 with non-finite outputs), ")
    assert "exited after localization" in line


@pytest.mark.slow
def test_npz_entries_are_counted_one_by_one(tmp_path, model_and_vars):
    model, variables = model_and_vars
    images = np.zeros((3, 64, 64, 3), np.float32)
    images[1] = 50.0  # outside the normalized range
    np.savez(tmp_path / "three.npz", images=images)
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 32, 32, 3), np.float32))
    summary = predict(model, variables, [str(tmp_path / "three.npz"), str(tmp_path / "wrong.npz")],
                      cluttered_mnist_config(), str(tmp_path / "out"), 0.5, progress=False)
    assert {k: summary[k] for k in ("files", "images", "predicted", "skipped_by_reason")} == {
        "files": 2, "images": 4, "predicted": 2,
        "skipped_by_reason": {"rejected .npz image": 1, "unusable .npz file": 1}}


class Refuse:
    """A predictor that fails the test if anything is computed."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("predict computed before checking its output folder")


def test_unwritable_output_is_refused_before_any_compute(tmp_path, model_and_vars, monkeypatch,
                                                         mixed_folder):
    model, variables = model_and_vars
    monkeypatch.setattr(predictors, "for_task", Refuse)
    (tmp_path / "a_file").write_text("")
    for out, overlays in ((tmp_path / "a_file" / "out", None),  # cannot be made (root or not)
                          (tmp_path / "fine", tmp_path / "a_file" / "overlays")):
        with pytest.raises(ValueError, match="Cannot write to .*a_file"):
            predict(model, variables, [str(mixed_folder)], cluttered_mnist_config(), str(out),
                    0.5, progress=False, overlays_dir=overlays and str(overlays))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mixed"]


@pytest.mark.slow
def test_a_failed_run_leaves_nothing_behind(tmp_path, model_and_vars, monkeypatch, mixed_folder):
    model, variables = model_and_vars
    real = predictors.for_task

    def failing(*args, **kwargs):
        predictor = real(*args, **kwargs)

        def stream(batches, threshold):
            yield from real_stream(batches, threshold)
            raise RuntimeError("the device went away")
        real_stream = predictor.stream
        predictor.stream = stream
        return predictor
    monkeypatch.setattr(predictors, "for_task", failing)
    with pytest.raises(RuntimeError, match="went away"):
        predict(model, variables, [str(mixed_folder)], cluttered_mnist_config(),
                str(tmp_path / "new" / "preds"), 0.5, batch_size=2, progress=False,
                overlays_dir=str(tmp_path / "overlays"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"]


@pytest.mark.slow
def test_deit_rows_and_summary_say_nothing_of_stages(tmp_path, mixed_folder, capsys):
    model = DeiT(num_classes=10, width=32, depth=2, num_heads=2, mlp_dim=64, patch=8, img_size=64)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    summary = predict(model, variables, [str(mixed_folder)], cluttered_mnist_config(),
                      str(tmp_path / "out"), 0.5, progress=False, quiet=False)
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().split("\n")
            if x]
    assert all(set(r) == {"file", "class", "confidence"} for r in rows) and len(rows) == 3
    assert capsys.readouterr().out.splitlines() == [
        f"{r['file']}  class {r['class']}  {r['confidence']:.3f}" for r in rows]
    assert "exited_fraction" not in summary
    assert "exited" not in predict_module.describe(summary)


def test_imagenet_names_from_the_package_and_no_dataset_library():
    names, wnids = class_names(imagenet_config())
    assert len(names) == len(set(wnids)) == 1000
    assert (wnids[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert (wnids[999], names[999].split(",")[0]) == ("n15075141", "toilet tissue")
    row = predict_module._record(tasks.for_model(DeiT(num_classes=1000)), "x.jpg",
                                 {"logits": np.eye(1000)[None, 1] * 9}, 0, names, wnids)
    assert (row["class"], row["class_name"], row["wnid"]) == (1, names[1], "n01443537")
    assert predict_module.console_line(row) == "x.jpg  goldfish (n01443537)  0.890"
    code = ("import sys, lfvit_jax.inference.predict; print(sorted({m.split('.')[0] for m in "
            "sys.modules} & {'tensorflow_datasets', 'grain', 'matplotlib', 'tensorflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("spec", [None, "DIR", "none"])
def test_the_persistent_compilation_cache(tmp_path, spec):
    """On by default in the user's cache folder, or in a folder given, or off; a second process
    then loads the executable instead of compiling it."""
    code = ("import sys, jax, numpy as np\nfrom lfvit_jax.core import parallel\n"
            "print(parallel.enable_compilation_cache(None if sys.argv[1] == 'None' else "
            "sys.argv[1]))\nhits = []\njax.monitoring.register_event_listener(lambda e, **k: "
            "hits.append(e == '/jax/compilation_cache/cache_hits'))\n"
            "jax.jit(lambda x: x * 2 + 1)(np.ones(3))\nprint(any(hits))")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu")
    arg = str(tmp_path / "given") if spec == "DIR" else str(spec)

    def run():
        out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                             env=env, check=True, cwd=os.path.dirname(os.path.dirname(
                                 os.path.abspath(__file__))))
        return out.stdout.split()
    folder = {None: str(tmp_path / "xdg" / "lfvit_jax" / "jax"), "DIR": arg, "none": "None"}[spec]
    assert run() == [folder, "False"]
    assert run() == [folder, str(spec != "none")]
    assert os.path.isdir(folder) == (spec != "none")
