"""Batch prediction over files, folders and .npz, with a corrupt file skipped."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from lfvit_jax.data.defaults import cluttered_mnist_config
from lfvit_jax.models.lfvit import LFViT
from lfvit_jax.inference.predict import predict

TINY = dict(num_classes=10, width=32, depth=2, num_heads=2, mlp_dim=64, patch=8, img_size=64,
            region_size=2)


@pytest.fixture(scope="module")
def model_and_vars():
    model = LFViT(**TINY)
    variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    return model, variables


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
