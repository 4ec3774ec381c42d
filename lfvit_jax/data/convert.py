"""Writes an image-folder tree (`ROOT/<split>/<class>/<image>`) or ImageNet's tars as a tfds
array_record dataset without TensorFlow, resumably: each shard is renamed into place when complete,
with a marker file that a rerun skips it by, and the tfds metadata is written last, so a
half-written dataset is never taken for a prepared one.
"""
import contextlib
import functools
import io
import json
import logging
import multiprocessing
import os
import tarfile
from typing import Callable, Iterable, NamedTuple, Optional

import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image
from tqdm import tqdm

from lfvit_jax.data import defaults

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_VAL_LABELS = "datasets/imagenet2012/validation_labels.txt"
IMAGENET_VERSION = "5.1.0"  # the version tfds's registered imagenet2012 builder reads

class Shard(NamedTuple):
    # Yields (file_name, encoded image bytes, label); picklable, for worker processes.
    items: Callable[[], Iterable[tuple[str, bytes, int]]]
    size: Optional[int]  # number of items when known in advance (for the progress bar)


def image_features(class_names):
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=class_names),
        "file_name": tfds.features.Text()})


def checked_jpeg(data, file_name, on_corrupt):
    """JPEG bytes of a readable image (other formats and CMYK re-encoded); a corrupt one gives
    None with on_corrupt='skip' and raises with 'error'."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.format == "JPEG" and img.mode in ("RGB", "L"):
                return data
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=95)
            return out.getvalue()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if on_corrupt == "error":
            raise ValueError(f"Corrupt or unreadable image {file_name!r}: {e}. Remove it, or "
                             "convert with on_corrupt='skip' to skip such images.") from e
        return None


def _write_shard(path, shard, class_names, on_corrupt):
    """Writes one shard to `path` atomically; returns its marker dict."""
    features = image_features(class_names)
    serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
    tmp = f"{path}.tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    written, skipped = 0, []
    for file_name, data, label in shard.items():
        if not 0 <= label < len(class_names):
            writer.close()
            raise ValueError(f"Label {label} of {file_name!r} is outside [0, {len(class_names)}).")
        data = checked_jpeg(data, file_name, on_corrupt)
        if data is None:
            skipped.append(file_name)
            continue
        example = {"image": data, "label": label, "file_name": file_name}
        writer.write(serializer.serialize_example(features.encode_example(example)))
        written += 1
    writer.close()
    os.replace(tmp, path)
    marker = {"num_examples": written, "skipped": skipped}
    with open(f"{path}.done.json", "w") as f:
        json.dump(marker, f)
    return marker


def _write_shard_job(job):
    _, path, shard, class_names, on_corrupt = job
    if os.path.exists(f"{path}.done.json"):  # finished by an earlier, interrupted run
        with open(f"{path}.done.json") as f:
            return json.load(f), True
    return _write_shard(path, shard, class_names, on_corrupt), False


def write_dataset(data_dir, name, splits, class_names, *, version="1.0.0", on_corrupt="skip",
                  workers=0):
    """Writes `splits` ({split: [Shard]}) as tfds `name`; returns skipped images per split."""
    if on_corrupt not in ("skip", "error"):
        raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}.")
    out_dir = os.path.join(os.path.expanduser(data_dir), name, version)
    if os.path.exists(os.path.join(out_dir, "dataset_info.json")):
        raise FileExistsError(f"{out_dir} already holds a prepared dataset; delete it to rebuild.")
    os.makedirs(out_dir, exist_ok=True)
    jobs = []
    for split, shards in splits.items():
        for i, shard in enumerate(shards):
            path = os.path.join(
                out_dir, f"{name}-{split}.array_record-{i:05d}-of-{len(shards):05d}")
            jobs.append((split, path, shard, list(class_names), on_corrupt))
    sizes = [job[2].size for job in jobs]
    total = sum(sizes) if None not in sizes else None
    skipped = {split: [] for split in splits}
    lengths = {split: [] for split in splits}
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers else None
    with tqdm(total=total, unit="img", desc=f"Converting {name}") as bar, (
            pool or contextlib.nullcontext()):
        results = pool.imap(_write_shard_job, jobs) if pool else map(_write_shard_job, jobs)
        for (split, *_), (marker, reused) in zip(jobs, results):
            skipped[split] += marker["skipped"]
            lengths[split].append(marker["num_examples"])
            bar.update(marker["num_examples"] + len(marker["skipped"]))
            if reused:
                bar.set_postfix_str("resumed")
    # Split infos from our own counts: tfds would compute them with TensorFlow.
    split_infos = [
        tfds.core.SplitInfo(
            name=split, shard_lengths=lengths[split],
            num_bytes=sum(os.path.getsize(path) for s, path, *_ in jobs if s == split),
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=out_dir, dataset_name=name, split=split,
                filetype_suffix="array_record"))
        for split in splits]
    tfds.folder_dataset.write_metadata(data_dir=out_dir, features=image_features(class_names),
                                       split_infos=split_infos, check_data=False)
    for _, path, *_ in jobs:
        os.remove(f"{path}.done.json")
    for split, names in skipped.items():
        if names:
            logging.warning("Skipped %d corrupt images in split %r: %s", len(names), split,
                            ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
    return {split: len(names) for split, names in skipped.items()}


def _read_files(entries):
    for path, label in entries:
        with open(path, "rb") as f:
            yield os.path.basename(path), f.read(), label


def folder_splits(root, splits=None, examples_per_shard=1024):
    """Shards of `root/<split>/<class>/<image>`; classes are the sorted class folders of the
    first split. Returns (splits dict, class_names). 'val' becomes 'validation' as in tfds."""
    root = os.path.expanduser(root)
    splits = splits or sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not splits:
        raise ValueError(f"{root} has no split folders; expected ROOT/<split>/<class>/<image>.")
    class_names = sorted(d.name for d in os.scandir(os.path.join(root, splits[0])) if d.is_dir())
    if not class_names:
        raise ValueError(f"{os.path.join(root, splits[0])} has no class folders; expected "
                         "ROOT/<split>/<class>/<image>.")
    out = {}
    for split in splits:
        split_dir = os.path.join(root, split)
        entries = []
        for class_name in sorted(os.listdir(split_dir)):
            class_dir = os.path.join(split_dir, class_name)
            if not os.path.isdir(class_dir):
                continue
            if class_name not in class_names:
                raise ValueError(f"Class folder {class_dir} is not a class of split "
                                 f"{splits[0]!r}; every split must use the same class folders.")
            label = class_names.index(class_name)
            entries += [(os.path.join(class_dir, f), label) for f in sorted(os.listdir(class_dir))
                        if f.lower().endswith(IMAGE_SUFFIXES)]
        if not entries:
            raise ValueError(f"{split_dir} has no images ({', '.join(IMAGE_SUFFIXES)}) in "
                             "class folders; remove it or name the splits with --splits.")
        chunks = [entries[i:i + examples_per_shard]
                  for i in range(0, len(entries), examples_per_shard)]
        out["validation" if split == "val" else split] = [
            Shard(functools.partial(_read_files, chunk), len(chunk)) for chunk in chunks]
    return out, class_names


def _tar_index(path):
    """[(name, data offset, size)] of the regular files in an uncompressed tar (headers only)."""
    with tarfile.open(path, "r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


def _read_at(path, offset, size):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _read_val_chunk(path, entries):
    return ((name, _read_at(path, offset, size), label) for name, offset, size, label in entries)


def _read_class_tar(path, offset, size, label):
    with tarfile.open(fileobj=io.BytesIO(_read_at(path, offset, size)), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                yield os.path.basename(member.name), tar.extractfile(member).read(), label


def imagenet_splits(manual_dir, examples_per_shard=1024):
    """(splits, class_names) of ILSVRC2012_img_{train,val}.tar, labelled as tfds's imagenet2012."""
    class_names = defaults.class_names(defaults.imagenet_config())[1]
    train = os.path.join(manual_dir, "ILSVRC2012_img_train.tar")
    val = os.path.join(manual_dir, "ILSVRC2012_img_val.tar")
    out = {}
    if os.path.exists(train):
        out["train"] = [
            Shard(functools.partial(_read_class_tar, train, offset, size,
                                    class_names.index(name[:-len(".tar")])), None)
            for name, offset, size in sorted(_tar_index(train))]
    if os.path.exists(val):
        with open(tfds.core.tfds_path(IMAGENET_VAL_LABELS)) as f:
            wnids = f.read().split()
        entries = [(name, offset, size, class_names.index(wnid))
                   for (name, offset, size), wnid in zip(sorted(_tar_index(val)), wnids)]
        out["validation"] = [
            Shard(functools.partial(_read_val_chunk, val, entries[i:i + examples_per_shard]),
                  len(entries[i:i + examples_per_shard]))
            for i in range(0, len(entries), examples_per_shard)]
    if not out:
        raise FileNotFoundError(f"Neither {train} nor {val} exists; download them from "
                                "https://image-net.org/download-images (registration needed).")
    return out, class_names
