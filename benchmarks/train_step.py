"""LF-ViT train-step time over DeiT train-step time, same backbone, same batch, one run.

Times both LF-ViT phases (focus on the whole image, then on the selected region) against a DeiT
built from the same model config (name='deit'), through the real jitted, donated train step.

  python -m benchmarks.train_step --config demo --batch 128
  python -m benchmarks.train_step --config lfvit_deit_s:res=224,m=5 --batch 64
  python -m benchmarks.train_step --config demo --batch 64 --precision bfloat16
"""
import json
import time

import jax
import numpy as np
from absl import app, flags

from lfvit_jax.core import config_args, parallel
from lfvit_jax.training import trainer

flags.DEFINE_string("config", "demo", "An LF-ViT config: a name (demo, lfvit_deit_s:res=224) "
                    "or a path.")
flags.DEFINE_integer("batch", 64, "Global batch per step.")
flags.DEFINE_enum("precision", None, ["float32", "bfloat16"], "Operand dtype of the step's "
                  "matmuls (sets config.precision; default the config's).")
flags.DEFINE_integer("steps", 5, "Timed steps per model and phase (after one warm-up step).")
FLAGS = flags.FLAGS


def seconds_per_step(config, phase, batch, steps):
    """Random images and labels with the sizes of the model config: no dataset is read."""
    config.batch_size = config.eval_batch_size = batch
    info = dict(num_classes=config.model.num_classes, image_size=config.model.img_size,
                train_examples=batch * 1000, eval_examples=batch)
    setup = trainer.Setup(config, info)
    state = setup.scratch_state()
    rng = np.random.default_rng(0)
    size, classes = config.model.img_size, config.model.num_classes
    host = {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
            "label": np.full((batch, classes), 1 / classes, np.float32)}
    gbatch = parallel.to_global(host, parallel.batch_sharding(setup.mesh))
    step = setup.train_step(phase)
    state, values = step(state, gbatch)  # compile
    jax.block_until_ready(values)
    start = time.perf_counter()
    for _ in range(steps):
        state, values = step(state, gbatch)
    jax.block_until_ready(values)
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    config = config_args.load_config(FLAGS.config)
    if config.model.name != "lfvit":
        raise ValueError("Give an LF-ViT config; its DeiT twin is built from the same model section.")
    if FLAGS.precision:
        config.precision = FLAGS.precision
    deit_config = config.copy_and_resolve_references()
    with deit_config.unlocked():
        deit_config.model.name = "deit"
    result = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
              "precision": config.precision, "batch": FLAGS.batch}
    result["deit_s"] = seconds_per_step(deit_config, "full", FLAGS.batch, FLAGS.steps)
    for phase in ("whole", "region"):
        t = seconds_per_step(config.copy_and_resolve_references(), phase, FLAGS.batch,
                             FLAGS.steps)
        result[f"lfvit_{phase}_s"] = t
        result[f"ratio_{phase}"] = t / result["deit_s"]
        print(f"LF-ViT {phase:6} phase: {t * 1e3:9.1f} ms/step = {t / result['deit_s']:.2f} x "
              f"DeiT ({result['deit_s'] * 1e3:.1f} ms/step)", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
