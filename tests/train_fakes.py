"""A synthetic dataset behind the `lfvit_jax.data.Dataset` interface, and tiny configs: loop tests
in seconds.

Class c is a bright square at a class-dependent place plus noise; its box is the square.
Iterators are grain datasets, so their state checkpoints exactly like the real pipeline's.
"""
import sys
import time

import grain
import jax
import ml_collections
import numpy as np

from lfvit_jax.training import recipes


def data_config(image_size=32, num_classes=4, train_examples=64, eval_examples=20, delay=0.0,
                nan_from_batch=-1):
    """`delay`: seconds each training batch takes; `nan_from_batch`: NaN images from there on."""
    return ml_collections.ConfigDict(dict(image_size=image_size, num_classes=num_classes,
                                          train_examples=train_examples,
                                          eval_examples=eval_examples, delay=delay,
                                          nan_from_batch=nan_from_batch,
                                          mean=(0.0,) * 3, std=(1.0,) * 3))


def get_dataset_info(cfg):
    return dict(num_classes=cfg.num_classes, image_size=cfg.image_size,
                train_examples=cfg.train_examples, eval_examples=cfg.eval_examples)


def _example(cfg, index, split):
    rng = np.random.default_rng([index, split])
    label = index % cfg.num_classes
    s, side = cfg.image_size, cfg.image_size // 4
    image = rng.normal(0, 0.3, (s, s, 3)).astype(np.float32)
    y = (label * side) % (s - side)
    x = rng.integers(0, s - side)
    image[y:y + side, x:x + side] += 1.5
    return image, label, np.array([y, x, y + side, x + side], np.float32)


def _process(process_index, process_count):
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count)


def train_iterator(cfg, global_batch_size, *, seed, process_index=None, process_count=None):
    pi, pc = _process(process_index, process_count)
    local = global_batch_size // pc

    def make(position, indices):
        mine = indices[pi * local:(pi + 1) * local]
        images, labels, _ = zip(*(_example(cfg, int(i), 0) for i in mine))
        onehot = np.eye(cfg.num_classes, dtype=np.float32)[list(labels)]
        images = np.stack(images)
        if 0 <= cfg.nan_from_batch <= position:
            images[:] = np.nan
        time.sleep(cfg.delay)
        return {"image": images, "label": 0.9 * onehot + 0.1 / cfg.num_classes}

    ds = (grain.MapDataset.range(cfg.train_examples).shuffle(seed=seed).repeat()
          .batch(global_batch_size, drop_remainder=True).map_with_index(make))
    return iter(ds.to_iter_dataset())


def eval_iterator(cfg, global_batch_size, *, split=None, process_index=None, process_count=None):
    del split
    pi, pc = _process(process_index, process_count)
    local = global_batch_size // pc
    n = cfg.eval_examples
    for start in range(0, n, global_batch_size):
        rows = range(start + pi * local, start + (pi + 1) * local)
        examples = [_example(cfg, min(i, n - 1), 1) for i in rows]
        images, labels, boxes = zip(*examples)
        yield {"image": np.stack(images), "label": np.array(labels, np.int32),
               "_mask": np.array([i < n for i in rows]), "bbox": np.stack(boxes)}


class Dataset:
    """What the training loop and evaluation ask of a dataset, for `data_config()`'s configs."""

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def info(self):
        return get_dataset_info(self.cfg)

    def train_iterator(self, global_batch_size, seed):
        return train_iterator(self.cfg, global_batch_size, seed=seed)

    def eval_iterator(self, global_batch_size):
        return eval_iterator(self.cfg, global_batch_size)


def tiny_config(name="lfvit", **overrides):
    """Width 32, depth 2, patch 8 on 32 px images; 4 steps/epoch, selection from epoch 2 of 4."""
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        name=name, num_classes=4, img_size=32, patch=8, width=32, depth=2, num_heads=2,
        mlp_dim=64, drop_path=0.1))
    if name == "lfvit":
        config.model.update(region_size=1, alpha=1.0, beta=0.99, gca_blocks=(0, 1),
                            region_method="ngca", fusion=True, reuse_tokens=True)
    config.data = data_config()
    recipes.deit_training(config, total_epochs=4, selection_start_epoch=2)
    config.update(batch_size=16, eval_batch_size=8, warmup_epochs=1, lr=1e-3,
                  precision="float32", log_every_steps=2, eval_every_epochs=4,
                  checkpoint_every_steps=4)
    config.update(overrides)
    return config


if __name__ == "__main__":
    # python tests/train_fakes.py WORKDIR DELAY NAN_FROM_BATCH: the loop test's training run,
    # 8 steps of 16 (region selection from step 4, a checkpoint every 2 steps).
    from lfvit_jax.training import trainer
    workdir, delay, nan_from = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    config = tiny_config(total_epochs=2.0, selection_start_epoch=1.0, eval_every_epochs=2.0,
                         checkpoint_every_steps=2)
    config.data.update(delay=delay, nan_from_batch=nan_from)
    trainer.train_and_evaluate(config, workdir, Dataset(config.data))
