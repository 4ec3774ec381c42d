"""tfds (array_record) -> grain input pipelines for training and evaluation, without TensorFlow.

Training: the release's repeated-augmentation stream (a per-epoch shuffled order, repeated
forever), each process reading its part of every global batch. Every random choice derives from
(seed, stream position), so the grain iterator state (the position) is all a checkpoint needs to
resume the exact stream; grain rejects a state saved under another worker count (its positions
map to other batches). Evaluation: the split
is padded to whole global batches, process p takes positions p, p + P, ...; padding has _mask False.
"""
import io
import logging
import math
import os
import queue
import sys
import threading

from absl import flags
import grain.python as grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lfvit_jax.core.errors import UsageError
from lfvit_jax.data import augment, cluttered_mnist, randaugment
from lfvit_jax.io import storage

_PREPARE = "lfvit prepare"


def data_dir(data_cfg):
    """The config's data_dir, else $LFVIT_DATA_DIR, else ~/tensorflow_datasets."""
    path = data_cfg.data_dir or os.environ.get("LFVIT_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(path)


def prepared_builder(data_cfg):
    """The tfds builder of a prepared dataset; cluttered MNIST is built here on first use."""
    name, directory = data_cfg.name, data_dir(data_cfg)
    if name == "cluttered_mnist":
        builder = cluttered_mnist.ClutteredMnist(data_dir=directory, file_format="array_record")
        if not builder.is_prepared() and storage.is_remote(directory):
            raise FileNotFoundError(f"Dataset {name!r} is not prepared under {directory} (a "
                                    "bucket is not built into on first use). Prepare it with: "
                                    f"{_PREPARE} cluttered_mnist --data_dir {directory}")
        if not builder.is_prepared():
            try:
                builder.download_and_prepare()
            except FileExistsError:
                # Another process sharing data_dir (multi-process runs) finished the same
                # deterministic build first; its result is the one to read.
                if not builder.is_prepared():
                    raise
        return builder
    try:
        builder = tfds.builder(name, data_dir=directory)
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        command = ("imagenet2012 --manual_dir DIR_WITH_ILSVRC2012_TARS" if name == "imagenet2012"
                   else f"tfds {name}")
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared under {directory}. Prepare it with: {_PREPARE} "
            f"{command} --data_dir {directory}  (or, from an image-folder tree: {_PREPARE} "
            f"folder ROOT --name {name} --data_dir {directory})")
    return builder


def _source(data_cfg, builder, split):
    # An unknown split is a ValueError from tfds that lists the splits.
    return builder.as_data_source(split, decoders={data_cfg.image_key: tfds.decode.SkipDecoding()})


def _num_classes(data_cfg, builder):
    feature = builder.info.features[data_cfg.label_key]
    stored = getattr(feature, "num_classes", None)
    if data_cfg.num_classes and stored and data_cfg.num_classes != stored:
        raise UsageError(f"num_classes={data_cfg.num_classes} in the data config, but "
                         f"{data_cfg.name!r} has {stored} classes; fix num_classes.")
    if not (data_cfg.num_classes or stored):
        raise UsageError(f"Set num_classes in the data config: {data_cfg.name!r} does not say.")
    return data_cfg.num_classes or stored


def read_all(data_cfg, builder, split):
    """Every record of a split in order, read front to back: one request per few MiB where
    random access (`as_data_source`) makes one request per record, ~30 ms each from a bucket."""
    from array_record.python import array_record_module
    features = builder.info.features
    decoders = {data_cfg.image_key: tfds.decode.SkipDecoding()}
    for path in builder.info.splits[split].filepaths:
        reader = array_record_module.ArrayRecordReader(os.fspath(path),
                                                       "readahead_buffer_size:4194304")
        try:
            for record in reader.read_all():
                yield features.deserialize_example_np(record, decoders=decoders)
        finally:
            reader.close()


def get_dataset_info(data_cfg):
    builder = prepared_builder(data_cfg)
    return dict(num_classes=_num_classes(data_cfg, builder), image_size=data_cfg.image_size,
                train_examples=len(_source(data_cfg, builder, data_cfg.train_split)),
                eval_examples=len(_source(data_cfg, builder, data_cfg.eval_split)))


def _check(data_cfg, global_batch_size, process_index, process_count):
    """(process_index, process_count, per-process batch), checked; None means this process."""
    if data_cfg.on_corrupt not in ("skip", "error"):
        raise UsageError(f"on_corrupt must be 'skip' or 'error', got {data_cfg.on_corrupt!r}.")
    if data_cfg.workers and not flags.FLAGS.is_parsed():
        # grain 0.2.18 reads its absl flags when it starts workers; outside an absl app
        # (tests, notebooks) nothing has parsed them, so take their defaults.
        flags.FLAGS.mark_as_parsed()
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count}).")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise UsageError(f"Global batch size {global_batch_size} must be a positive multiple "
                         f"of the process count {process_count}.")
    return process_index, process_count, global_batch_size // process_count


def decode(data, file_hint, on_corrupt):
    """Encoded bytes -> PIL image in 'L' or 'RGB', or None for a skipped corrupt image."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if on_corrupt == "error":
            raise ValueError(f"Corrupt or unreadable image ({file_hint}): {e}. Set "
                             "on_corrupt='skip' in the data config to skip it.") from e
        logging.warning("Skipping corrupt image (%s): %s", file_hint, e)
        return None
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def _check_label(label, num_classes, where):
    if not 0 <= label < num_classes:
        raise ValueError(f"Label {label} of {where} is outside [0, {num_classes}); the dataset "
                         "and num_classes in the data config disagree.")
    return np.int32(label)


class TrainSampler:
    """The release's RASampler layout over grain's positions, for any process and worker count.

    The release's stream: each epoch a fresh permutation, each image repeated `repeats` times in
    a row ([a, a, a, b, b, b, ...]), cut to whole global batches of G; step k takes slots
    k G .. k G + G - 1 and process p of P the slots = p (mod P) among them, so an image's copies
    share a step, on different processes. grain gives process p the positions = p (mod P), and with
    W workers, worker w every W-th of those, each worker batching B = G / P of its own in turn
    (local batch k from worker k mod W). Position g is mapped to the slot that lands where the
    release puts it, and draws its augmentation from (seed, slot): the batches are the same for
    any W. (A skipped corrupt image shifts that worker's later examples by one.)
    """

    def __init__(self, num_records, global_batch, process_count, workers, seed, repeats=1):
        if num_records < global_batch:
            raise ValueError(f"{num_records} records cannot fill a global batch of "
                             f"{global_batch}.")
        self.num_records, self.global_batch = num_records, global_batch
        self.process_count, self.workers = process_count, workers
        self.seed, self.repeats = int(seed), int(repeats)
        self.local_batch = global_batch // process_count
        self.epoch_length = num_records // global_batch * global_batch  # whole steps, as drop_last
        self._perm_epoch, self._perm = None, None

    def __repr__(self):  # grain checks a restored iterator state against repr(sampler)
        return (f"TrainSampler(num_records={self.num_records}, global_batch={self.global_batch}, "
                f"process_count={self.process_count}, workers={self.workers}, seed={self.seed}, "
                f"repeats={self.repeats})")

    def __len__(self):
        return sys.maxsize

    def slot(self, index):
        """The release's stream position of grain position `index`."""
        process, local = index % self.process_count, index // self.process_count
        workers = max(self.workers, 1)
        worker, j = local % workers, local // workers
        turn, row = divmod(j, self.local_batch)
        step = turn * workers + worker
        return step * self.global_batch + row * self.process_count + process

    def record_key(self, index):
        epoch, position = divmod(self.slot(index), self.epoch_length)
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch, 0x5EED])
            self._perm, self._perm_epoch = rng.permutation(self.num_records), epoch
        return int(self._perm[position // self.repeats])

    def __getitem__(self, index):
        return grain.RecordMetadata(index=index, record_key=self.record_key(index),
                                    rng=np.random.default_rng([self.seed, self.slot(index)]))


class EvalSampler:
    """Positions 0..padded-1 in order; positions past the split read the padding record."""

    def __init__(self, num_records, padded):
        self.num_records, self.padded = num_records, padded

    def __len__(self):
        return self.padded

    def __getitem__(self, index):
        if not 0 <= index < self.padded:
            raise IndexError(f"Position {index} is outside [0, {self.padded}).")
        return grain.RecordMetadata(index=index, record_key=min(index, self.num_records))


class PaddedSource:
    """A data source with one extra record, None, that stands for padding."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source) + 1

    def __getitem__(self, key):
        return None if key == len(self.source) else self.source[key]


class TrainExample(grain.RandomMapTransform):
    """Decode (or compose a cluttered-MNIST canvas), then DeiT's per-image augmentation."""

    def __init__(self, data_cfg, num_classes, clutter_pool=None):
        self.cfg = data_cfg.to_dict()
        self.num_classes = num_classes
        self.clutter_pool = clutter_pool
        self.rand_augment = (randaugment.RandAugment(
            data_cfg.rand_augment, data_cfg.mean, data_cfg.interpolation)
            if data_cfg.rand_augment else None)

    def random_map(self, record, rng):
        cfg = self.cfg
        label = _check_label(int(record[cfg["label_key"]]), self.num_classes, "a train record")
        img = decode(record[cfg["image_key"]], "a train record", cfg["on_corrupt"])
        if img is None:
            return {"_corrupt": True}
        if self.clutter_pool is not None:
            canvas, _ = cluttered_mnist.compose(np.asarray(img), self.clutter_pool, rng)
            img = Image.fromarray(canvas)
        size = cfg["image_size"]
        if cfg["random_resized_crop"]:
            img = augment.random_resized_crop(img, rng, size, cfg["interpolation"],
                                              tuple(cfg["crop_scale"]))
        else:
            img, _ = augment.resize_center_crop(img, size, cfg["crop_pct"], cfg["interpolation"])
        if cfg["hflip"] > 0 and rng.uniform() < cfg["hflip"]:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        elif cfg["color_jitter"] > 0:
            img = augment.color_jitter(img, rng, cfg["color_jitter"])
        x = augment.normalize(img, cfg["mean"], cfg["std"])
        x = augment.random_erasing(x, rng, cfg["reprob"])
        return {"image": x, "label": label}


class NotCorrupt(grain.FilterTransform):
    def filter(self, element):
        return "_corrupt" not in element


class MixBatch(grain.RandomMapTransform):
    """Per-batch mixup/cutmix and label smoothing; labels become float32 soft targets."""

    def __init__(self, data_cfg, num_classes):
        self.kwargs = dict(num_classes=num_classes, mixup=data_cfg.mixup, cutmix=data_cfg.cutmix,
                           switch_prob=data_cfg.mixup_switch_prob,
                           smoothing=data_cfg.label_smoothing)

    def random_map(self, batch, rng):
        images, targets = augment.mixup_cutmix(batch["image"], batch["label"], rng, **self.kwargs)
        return {"image": images, "label": targets}


class EvalExample(grain.MapTransform):
    """Resize the shorter side to S / crop_pct, centre-crop S, normalize; carry mask and bbox."""

    def __init__(self, data_cfg, num_classes, with_bbox):
        self.cfg = data_cfg.to_dict()
        self.num_classes, self.with_bbox = num_classes, with_bbox

    def map(self, record):
        cfg, size = self.cfg, self.cfg["image_size"]
        out = {"image": np.zeros((size, size, 3), np.float32), "label": np.int32(0),
               "_mask": np.False_, "_corrupt": np.False_}
        if self.with_bbox:
            out["bbox"] = np.zeros(4, np.float32)
        if record is None:  # padding
            return out
        label = _check_label(int(record[cfg["label_key"]]), self.num_classes, "an eval record")
        img = decode(record[cfg["image_key"]], "an eval record", cfg["on_corrupt"])
        if img is None:
            out["_corrupt"] = np.True_
            return out
        img, (scale_y, scale_x, top, left) = augment.resize_center_crop(
            img, size, cfg["crop_pct"], cfg["interpolation"])
        out.update(image=augment.normalize(img, cfg["mean"], cfg["std"]), label=label,
                   _mask=np.True_)
        if self.with_bbox:
            box = np.asarray(record["bbox"], np.float32) * [scale_y, scale_x, scale_y, scale_x]
            box -= np.array([top, left, top, left], np.float32)
            out["bbox"] = np.clip(box, 0, size).astype(np.float32)
        return out


def _loader(data_cfg, source, sampler, operations, process_index, process_count):
    return grain.DataLoader(
        data_source=source, sampler=sampler, operations=operations,
        worker_count=data_cfg.workers, worker_buffer_size=data_cfg.worker_buffer_size,
        read_options=grain.ReadOptions(num_threads=data_cfg.read_threads,
                                       prefetch_buffer_size=data_cfg.read_buffer_size),
        shard_options=grain.ShardOptions(process_index, process_count, drop_remainder=True))


class Prefetch:
    """Runs a grain iterator `depth` batches ahead on a thread. Its state is the one after the last
    batch handed out, so a checkpoint resumes where training was, not where the thread was."""

    def __init__(self, iterator, depth):
        self._it, self._depth = iterator, depth
        self._thread = self._queue = self._stop = self._state = None

    def __iter__(self):
        return self

    def _produce(self, out, stop):
        try:
            while not stop.is_set():
                item = (next(self._it), self._it.get_state(), None)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # StopIteration too: handed to the consumer
            out.put((None, None, e))

    def __next__(self):
        if self._thread is None:
            self._state = self._it.get_state()  # read before the thread runs: never concurrently
            self._queue, self._stop = queue.Queue(self._depth), threading.Event()
            self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop),
                                            daemon=True, name="lfvit-prefetch")
            self._thread.start()
        batch, state, error = self._queue.get()
        if error is not None:
            self._halt()
            raise error
        self._state = state
        return batch

    def _halt(self):
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.1)
                except queue.Empty:
                    pass
            self._thread = None

    def get_state(self):
        return self._it.get_state() if self._thread is None else self._state

    def set_state(self, state):
        self._halt()
        self._it.set_state(state)

    def start_prefetch(self):
        """Called by grain's checkpoint restore; the thread starts at the next batch."""


def train_iterator(data_cfg, global_batch_size, *, seed, process_index=None, process_count=None):
    """Endless, resumable iterator of this process's batches: images and soft-target labels."""
    process_index, process_count, local_batch = _check(data_cfg, global_batch_size,
                                                       process_index, process_count)
    if (data_cfg.mixup > 0 or data_cfg.cutmix > 0) and local_batch % 2:
        raise UsageError(f"Mixup/cutmix pair each example with its mirror in the batch, so the "
                         f"per-process batch must be even; got {local_batch}.")
    if data_cfg.repeated_aug < 1:
        raise UsageError(f"repeated_aug must be >= 1 (1 = off), got {data_cfg.repeated_aug}.")
    builder = prepared_builder(data_cfg)
    num_classes = _num_classes(data_cfg, builder)
    clutter_pool = None
    if data_cfg.name == "cluttered_mnist":  # train records are bare digits; canvases come here
        # All of them are read for the clutter pool anyway: the examples are served from
        # memory too, not read and parsed again each time (a third of the pipeline's time).
        source = list(read_all(data_cfg, builder, data_cfg.train_split))
        clutter_pool = np.stack([np.asarray(Image.open(io.BytesIO(r["image"]))) for r in source])
    else:
        source = _source(data_cfg, builder, data_cfg.train_split)
    loader = _loader(
        data_cfg, source, TrainSampler(len(source), global_batch_size, process_count,
                                       data_cfg.workers, seed, data_cfg.repeated_aug),
        [TrainExample(data_cfg, num_classes, clutter_pool), NotCorrupt(),
         grain.Batch(local_batch, drop_remainder=True), MixBatch(data_cfg, num_classes)],
        process_index, process_count)
    if data_cfg.prefetch and not data_cfg.workers:  # grain's workers already run ahead
        return Prefetch(iter(loader), data_cfg.prefetch)
    return iter(loader)


def eval_iterator(data_cfg, global_batch_size, *, split=None, process_index=None,
                  process_count=None):
    """This process's eval batches ('image', 'label', '_mask' False for padding, 'bbox' if stored);
    every process yields as many batches, and every example appears once across processes."""
    process_index, process_count, local_batch = _check(data_cfg, global_batch_size,
                                                       process_index, process_count)
    builder = prepared_builder(data_cfg)
    split = split or data_cfg.eval_split
    source = _source(data_cfg, builder, split)
    padded = math.ceil(len(source) / global_batch_size) * global_batch_size
    # Batched here, not by grain: grain workers each batch their own positions, which would
    # leave a partial batch per worker and break the equal batch counts.
    loader = _loader(
        data_cfg, PaddedSource(source), EvalSampler(len(source), padded),
        [EvalExample(data_cfg, _num_classes(data_cfg, builder), "bbox" in builder.info.features)],
        process_index, process_count)
    return _batches(iter(loader), local_batch, f"{data_cfg.name}/{split}")


def _batches(examples, batch_size, where):
    """Stacks consecutive examples (whose count is a multiple of batch_size); counts corrupt."""
    skipped = 0
    while chunk := [example for _, example in zip(range(batch_size), examples)]:
        batch = {key: np.stack([e[key] for e in chunk]) for key in chunk[0]}
        skipped += int(batch.pop("_corrupt").sum())
        yield batch
    if skipped:
        logging.warning("%d corrupt images in %s were skipped (masked out of the evaluation).",
                        skipped, where)


class Dataset:
    """A config's dataset as training and evaluation use it: sizes and lazily opened iterators."""

    def __init__(self, data_cfg):
        self.cfg = data_cfg

    @property
    def info(self):
        return get_dataset_info(self.cfg)

    def train_iterator(self, global_batch_size, seed):
        return train_iterator(self.cfg, global_batch_size, seed=seed)

    def eval_iterator(self, global_batch_size):
        return eval_iterator(self.cfg, global_batch_size)
