"""Folder-tree and ImageNet-tar conversion to tfds array_record, on real generated JPEG files."""
import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lfvit_jax.data import defaults, pipeline
from lfvit_jax.cli import app, prepare
from lfvit_jax.data import convert

CLASSES = ("n_apple", "n_bear", "n_cat")


def run_prepare(argv):
    """`lfvit prepare ARGV` with its exceptions raised, not printed."""
    prepare.main(*app.parse(prepare, app.new_flags(prepare), ["lfvit prepare"] + argv))


def _jpeg(value, size=(20, 14), mode="RGB"):
    out = io.BytesIO()
    Image.new(mode, size, value if mode != "CMYK" else (value, 0, 0, 0)).save(out, "JPEG",
                                                                            quality=95)
    return out.getvalue()


def _tree(root):
    """train: 3 classes x 5 JPEGs; val: 3 classes x 2, plus one corrupt file and one PNG."""
    files = {}
    for split, per_class in (("train", 5), ("val", 2)):
        for c, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(per_class):
                path = root / split / name / f"{name}_{i}.JPEG"
                path.write_bytes(_jpeg(40 * c + 10 * i, size=(20 + i, 14 + c)))
                files[path.name] = (split, c)
    (root / "val" / CLASSES[0] / "broken.JPEG").write_bytes(_jpeg(5)[:200])
    png = io.BytesIO()
    Image.new("RGB", (9, 9), (200, 0, 0)).save(png, "PNG")
    (root / "val" / CLASSES[1] / "disguised.JPEG").write_bytes(png.getvalue())
    (root / "val" / CLASSES[1] / "notes.txt").write_text("not an image")
    return files


def _cfg(data_dir, name):
    cfg = defaults.get_config(name)
    cfg.update(data_dir=str(data_dir), image_size=16, crop_pct=1.0, workers=0)
    return cfg


def test_folder_conversion_round_trip(tmp_path, capsys):
    _tree(tmp_path / "tree")
    run_prepare(["folder", str(tmp_path / "tree"), "--name", "tiny_folder", "--data_dir",
                  str(tmp_path / "tfds"), "--examples_per_shard", "4", "--workers", "2"])
    assert "{'train': 0, 'validation': 1}" in capsys.readouterr().out  # broken.JPEG
    cfg = _cfg(tmp_path / "tfds", "tiny_folder")
    assert pipeline.get_dataset_info(cfg) == dict(num_classes=3, image_size=16, train_examples=15,
                                              eval_examples=7)
    builder = tfds.builder("tiny_folder", data_dir=str(tmp_path / "tfds"))
    assert builder.info.features["label"].names == list(CLASSES)
    source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    by_name = {source[i]["file_name"]: source[i] for i in range(len(source))}
    for c, name in enumerate(CLASSES):  # stored bytes are the original files, labels by folder
        record = by_name[f"{name}_3.JPEG".encode()]
        assert record["label"] == c
        assert record["image"] == (tmp_path / "tree" / "train" / name / f"{name}_3.JPEG"
                                   ).read_bytes()
    val = builder.as_data_source("validation", decoders={"image": tfds.decode.SkipDecoding()})
    disguised = next(val[i] for i in range(len(val)) if val[i]["file_name"] == b"disguised.JPEG")
    assert Image.open(io.BytesIO(disguised["image"])).format == "JPEG"  # re-encoded
    batches = list(pipeline.eval_iterator(cfg, 4))
    labels = np.concatenate([b["label"][b["_mask"]] for b in batches])
    np.testing.assert_array_equal(np.bincount(labels), [2, 3, 2])
    train = next(pipeline.train_iterator(cfg, 4, seed=0))
    assert train["image"].shape == (4, 16, 16, 3) and train["label"].shape == (4, 3)


def test_folder_conversion_resumes_after_interruption(tmp_path, monkeypatch):
    _tree(tmp_path / "tree")
    args = ["folder", str(tmp_path / "tree"), "--name", "resumed", "--data_dir",
            str(tmp_path / "tfds"), "--examples_per_shard", "4"]
    written = []
    original = convert._write_shard

    def interrupted(path, *rest):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(os.path.basename(path))
        return original(path, *rest)

    monkeypatch.setattr(convert, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(args)
    with pytest.raises(FileNotFoundError, match="prepare folder ROOT --name resumed"):
        pipeline.get_dataset_info(_cfg(tmp_path / "tfds", "resumed"))  # half-written: not prepared
    first = list(written)
    written.clear()
    monkeypatch.setattr(convert, "_write_shard", lambda path, *rest: (
        written.append(os.path.basename(path)), original(path, *rest))[1])
    run_prepare(args)
    assert not set(first) & set(written) and len(first) + len(written) == 4 + 2
    assert pipeline.get_dataset_info(_cfg(tmp_path / "tfds", "resumed"))["train_examples"] == 15


def test_folder_conversion_errors(tmp_path):
    _tree(tmp_path / "tree")
    with pytest.raises(ValueError, match="broken.JPEG"):
        run_prepare(["folder", str(tmp_path / "tree"), "--name", "strict", "--data_dir",
                      str(tmp_path / "tfds"), "--on_corrupt", "error"])
    with pytest.raises(ValueError, match="another --name"):
        run_prepare(["folder", str(tmp_path / "tree"), "--name", "mnist", "--data_dir",
                      str(tmp_path / "tfds")])
    os.makedirs(tmp_path / "tree" / "test" / CLASSES[0])
    with pytest.raises(ValueError, match="test has no images"):
        run_prepare(["folder", str(tmp_path / "tree"), "--name", "empty_split", "--data_dir",
                      str(tmp_path / "tfds")])
    shard = convert.Shard(lambda: [("x.JPEG", _jpeg(1), 3)], 1)
    with pytest.raises(ValueError, match=r"Label 3 of 'x.JPEG' is outside \[0, 3\)"):
        convert.write_dataset(tmp_path / "tfds", "bad_label", {"train": [shard]}, CLASSES)


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_imagenet_tars_convert_and_read_as_tfds_imagenet2012(tmp_path):
    wnids = defaults.class_names(defaults.imagenet_config())[1]
    with open(tfds.core.tfds_path("datasets/imagenet2012/labels.txt")) as f:
        assert f.read().split() == wnids  # the packaged classes are in tfds's label order
    with open(tfds.core.tfds_path(convert.IMAGENET_VAL_LABELS)) as f:
        val_wnids = f.read().split()[:3]
    class_tars = []
    for wnid in wnids[:2]:
        inner = tmp_path / f"{wnid}.tar"
        _tar(inner, [(f"{wnid}_{i}.JPEG", _jpeg(30 * i)) for i in range(2)])
        class_tars.append((inner.name, inner.read_bytes()))
    manual = tmp_path / "manual"
    manual.mkdir()
    _tar(manual / "ILSVRC2012_img_train.tar", class_tars)
    cmyk = _jpeg(60, mode="CMYK")
    _tar(manual / "ILSVRC2012_img_val.tar", [
        (f"ILSVRC2012_val_{i:08d}.JPEG", cmyk if i == 2 else _jpeg(i)) for i in (3, 1, 2)])
    run_prepare(["imagenet2012", "--manual_dir", str(manual), "--data_dir",
                  str(tmp_path / "tfds")])
    cfg = _cfg(tmp_path / "tfds", "imagenet2012")
    assert pipeline.get_dataset_info(cfg) == dict(num_classes=1000, image_size=16,
                                              train_examples=4, eval_examples=3)
    val = tfds.data_source("imagenet2012", split="validation", data_dir=str(tmp_path / "tfds"))
    labels = {val[i]["file_name"]: val[i]["label"] for i in range(3)}
    assert labels == {f"ILSVRC2012_val_{i:08d}.JPEG".encode(): wnids.index(val_wnids[i - 1])
                      for i in (1, 2, 3)}
    cmyk_record = next(val[i] for i in range(3)
                       if val[i]["file_name"] == b"ILSVRC2012_val_00000002.JPEG")
    assert cmyk_record["image"].shape[-1] == 3  # CMYK re-encoded as RGB; tfds decodes it
    train = tfds.data_source("imagenet2012", split="train", data_dir=str(tmp_path / "tfds"))
    assert sorted(int(train[i]["label"]) for i in range(4)) == [0, 0, 1, 1]


@pytest.mark.slow
def test_prepare_commands_for_registered_builders(tmp_path, capsys):
    # `tfds NAME` runs a registered builder without TensorFlow (ours needs no download).
    run_prepare(["tfds", "cluttered_mnist", "--data_dir", str(tmp_path / "a")])
    run_prepare(["cluttered_mnist", "--data_dir", str(tmp_path / "b")])
    out = capsys.readouterr().out
    for d in ("a", "b"):
        assert str(tmp_path / d / "cluttered_mnist" / "1.0.0") in out
        info = pipeline.get_dataset_info(_cfg(tmp_path / d, "cluttered_mnist"))
        assert info["train_examples"] == 4000
