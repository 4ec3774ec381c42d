"""Training-stream throughput (images/s) of the input pipeline on this machine.

  python -m benchmarks.input_pipeline [--workers 0,2] [--batches 8] [--batch 32]

Measures (a) ImageNet-like data: locally generated JPEGs of ImageNet's typical size (about
500x375), converted to tfds array_record, read with the full DeiT recipe at 224 px; and
(b) the embedded cluttered MNIST (64 px canvases composed on the fly). Not part of the tests.
"""
import io
import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from lfvit_jax.data import convert, defaults, pipeline

flags.DEFINE_list("workers", ["0", "2"], "grain worker counts to compare")
flags.DEFINE_integer("batches", 16, "batches timed per setting")
flags.DEFINE_integer("batch", 32, "images per batch")
FLAGS = flags.FLAGS


def _photo_like_jpeg(rng):
    """Smooth colour fields plus texture, so JPEG size and decode cost resemble photos."""
    h, w = int(rng.integers(333, 400)), int(rng.integers(450, 500))
    coarse = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.int16)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _imagenet_like(data_dir, num_images=256, num_classes=8):
    rng = np.random.default_rng(0)
    items = [(f"img_{i}.JPEG", _photo_like_jpeg(rng), i % num_classes)
             for i in range(num_images)]
    shards = [convert.Shard(lambda chunk=items[i:i + 64]: chunk, 64)
              for i in range(0, num_images, 64)]
    classes = [f"class_{c}" for c in range(num_classes)]
    convert.write_dataset(data_dir, "imagenet_like", {"train": shards, "validation": shards[:1]},
                          classes)


def _rate(cfg, batch, batches):
    it = pipeline.train_iterator(cfg, batch, seed=0)
    next(it)  # start-up (worker processes, first reads) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - start)


def main(argv):
    del argv
    print(f"CPU cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        _imagenet_like(tmp)
        for workers in map(int, FLAGS.workers):
            cfg = defaults.imagenet_config()
            cfg.update(name="imagenet_like", num_classes=8, data_dir=tmp, workers=workers)
            print(f"imagenet-like 224px, DeiT augmentation, workers={workers}: "
                  f"{_rate(cfg, FLAGS.batch, FLAGS.batches):.0f} images/s")
            cfg = defaults.cluttered_mnist_config()
            cfg.update(data_dir=tmp, workers=workers)
            print(f"cluttered_mnist 64px, workers={workers}: "
                  f"{_rate(cfg, FLAGS.batch, FLAGS.batches):.0f} images/s")


if __name__ == "__main__":
    app.run(main)
