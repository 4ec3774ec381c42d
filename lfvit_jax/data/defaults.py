"""Default data configs: the embedded cluttered MNIST, and ImageNet with DeiT's recipe; the class
names of both, known without opening a dataset."""
import pathlib

import ml_collections

from lfvit_jax.data import augment


def _common(**overrides):
    cfg = dict(
        name="",
        data_dir="",  # local or gs://; empty: $LFVIT_DATA_DIR, else ~/tensorflow_datasets
        image_key="image", label_key="label", image_size=224, num_classes=0,
        train_split="train", eval_split="validation",
        workers=0,  # grain worker processes that decode and augment; 0 = in the main process
        worker_buffer_size=2,
        prefetch=2,  # with workers=0: training batches built ahead on a thread; 0 = on demand
        # grain's read-ahead threads per reader: its default (16 threads, 500 records) costs
        # more than array_record reads from a local disk on a few cores; raise for remote data.
        read_threads=0, read_buffer_size=0,
        # Training augmentation (DeiT / timm names).
        random_resized_crop=True, crop_scale=(0.08, 1.0), hflip=0.5, rand_augment="",
        color_jitter=0.0,  # as timm: only applied when rand_augment is off
        reprob=0.0, mixup=0.0, cutmix=0.0, mixup_switch_prob=0.5, label_smoothing=0.0,
        repeated_aug=1,
        # Evaluation view: shorter side to image_size / crop_pct, centre crop image_size.
        crop_pct=0.875, interpolation="bicubic",
        mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD,
        on_corrupt="skip",  # 'skip' (count and warn) or 'error'
    )
    return ml_collections.ConfigDict({**cfg, **overrides})


def cluttered_mnist_config():
    """64 px canvases whose fresh placements are the augmentation: no crop or flip (digits are
    not mirror-symmetric), no mixup. Pixels map to [-1, 1]: the canvases are mostly black, so
    MNIST's own statistics would not centre them either."""
    return _common(
        name="cluttered_mnist", image_size=64, num_classes=10, eval_split="test",
        random_resized_crop=False, hflip=0.0, label_smoothing=0.1, crop_pct=1.0,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def imagenet_config():
    """tfds imagenet2012 with DeiT's training recipe (section 10 of lfvit-algorithm.md)."""
    return _common(
        name="imagenet2012", image_size=224, num_classes=1000, workers=8,
        rand_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, reprob=0.25,
        mixup=0.8, cutmix=1.0, label_smoothing=0.1, repeated_aug=3)


def get_config(name):
    """Default data config by dataset name; any other tfds name gets the ImageNet recipe."""
    if name == "cluttered_mnist":
        return cluttered_mnist_config()
    cfg = imagenet_config()
    if name != "imagenet2012":
        cfg.name, cfg.num_classes = name, 0  # 0: taken from the dataset's label feature
    return cfg


def class_names(data_cfg):
    """(names, WordNet ids or None) of the dataset's classes in label order, (None, None) when
    unknown. ImageNet's come from the packaged imagenet_classes.txt (its header: their source)."""
    if data_cfg.name == "imagenet2012":
        text = pathlib.Path(__file__).with_name("imagenet_classes.txt").read_text()
        wnids, names = zip(*(line.split("\t") for line in text.splitlines() if line[0] != "#"))
        return list(names), list(wnids)
    if data_cfg.name == "cluttered_mnist":
        return [str(digit) for digit in range(10)], None
    return None, None
