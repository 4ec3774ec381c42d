"""Training-curve parity with the official release: the same tiny-width LF-ViT (shared/parity's
widths: C = 48, 3 heads, 12 blocks, 10 classes, 224 px, m = 5) trained by the release and by us
from the same weights on the same batches, through both phases; prints both loss curves side by
side and their largest relative gap.

  python -m benchmarks.train_parity                        # 60 steps, selection from step 30
  python -m benchmarks.train_parity --steps 20 --selection_start 10 \
      --save_testdata tests/testdata/train_curve            # the curve tests/test_train_parity.py checks

The batches are drawn once on the host by our input pipeline: the embedded cluttered MNIST with
DeiT's ImageNet augmentation (RandAugment, random erasing, mixup/cutmix, label smoothing) at
224 px, rounded to float16 (so that a short run can be committed), fed to both sides as float32.
Initial weights: tests/testdata/grad_tiny_7x7_m5/weights.npz (the release's initialisation,
shared/parity/README.md section 7). The release runs in its own Python, through
`benchmarks/train_parity_release.py` and ref_env.py (--release_dir: its venv/, ref_env.py and
lfvit_src/, set up as shared/reference/README.md says). Both sides float32, drop path off.
"""
import ast
import datetime
import json
import os
import subprocess
import tempfile

import jax
import ml_collections
import numpy as np
from absl import app, flags

from lfvit_jax.core import parallel
from lfvit_jax.data import defaults, pipeline
from lfvit_jax.models import precision
from lfvit_jax.training import recipes, trainer

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "..", "tests", "testdata", "grad_tiny_7x7_m5", "weights.npz")


def make_run(steps, selection_start, steps_per_epoch=2, warmup_epochs=2, peak_lr=1e-3, batch=8):
    if steps % steps_per_epoch or selection_start % steps_per_epoch:
        raise ValueError("steps and selection_start must be whole epochs of steps_per_epoch.")
    return dict(steps=steps, selection_start=selection_start, steps_per_epoch=steps_per_epoch,
                epochs=steps // steps_per_epoch, warmup_epochs=warmup_epochs, peak_lr=peak_lr,
                batch=batch, region_size=5)


def draw_batches(run, seed=0):
    """(images (steps, B, 3, 224, 224) float16, targets (steps, B, 10) float32)."""
    cfg = defaults.cluttered_mnist_config()
    recipe = defaults.imagenet_config()
    cfg.update({k: recipe[k] for k in ("random_resized_crop", "hflip", "rand_augment", "reprob",
                                       "mixup", "cutmix", "label_smoothing", "repeated_aug")})
    cfg.update(image_size=224, prefetch=0)
    it = pipeline.train_iterator(cfg, run["batch"], seed=seed, process_index=0, process_count=1)
    batches = [next(it) for _ in range(run["steps"])]
    images = np.stack([b["image"] for b in batches]).transpose(0, 1, 4, 2, 3)
    return images.astype(np.float16), np.stack([b["label"] for b in batches])


def our_config(run, weights=WEIGHTS, overrides=()):
    """The release's recipe in our config: LF-ViT at the tiny widths, lr per epoch, float32."""
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        name="lfvit", num_classes=10, img_size=224, patch=16, width=48, depth=12, num_heads=3,
        mlp_dim=192, region_size=run["region_size"], drop_path=0.0))
    config.data = ml_collections.ConfigDict()  # batches come from the caller
    spe = run["steps_per_epoch"]
    recipes.deit_training(config, total_epochs=run["epochs"],
                          selection_start_epoch=run["selection_start"] / spe)
    config.update(batch_size=run["batch"], eval_batch_size=run["batch"],
                  warmup_epochs=float(run["warmup_epochs"]), lr=run["peak_lr"] * 512 / run["batch"],
                  precision="float32", init_from=weights)
    for item in overrides:  # 'key=value' or 'model.key=value', value a Python literal
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        section = config
        for p in parents:
            section = section[p]
        section[leaf] = ast.literal_eval(value)
    return config


def train_ours(run, images, targets, overrides=(), mesh=None):
    """(losses, lrs) of our training loop's step on the given batches (on `mesh`, default every
    device)."""
    config = our_config(run, overrides=overrides)
    info = dict(num_classes=10, image_size=224, eval_examples=run["batch"],
                train_examples=run["batch"] * run["steps_per_epoch"])
    setup = trainer.Setup(config, info, mesh)
    state = setup.state_from_pretrained()
    sharding = parallel.batch_sharding(setup.mesh)
    losses, lrs = [], []
    for step, (x, t) in enumerate(zip(images, targets)):
        batch = parallel.to_global({"image": x.astype(np.float32).transpose(0, 2, 3, 1),
                                    "label": t}, sharding)
        state, values = setup.train_step(setup.phase(step))(state, batch)
        losses.append(float(values["loss"]))
        lrs.append(float(values["lr"]))
    return losses, lrs


def run_release(release_dir, run, images, targets, threads):
    with tempfile.TemporaryDirectory() as work:
        np.savez(os.path.join(work, "batches.npz"), images=images, targets=targets)
        with open(os.path.join(work, "run.json"), "w") as f:
            json.dump(dict(run, weights=os.path.abspath(WEIGHTS), threads=threads), f)
        subprocess.run([os.path.join(release_dir, "venv", "bin", "python"),
                        os.path.join(HERE, "train_parity_release.py"), release_dir, work],
                       check=True)
        with open(os.path.join(work, "release.json")) as f:
            return json.load(f)


def gaps(ours, release):
    return np.abs(np.asarray(ours) - np.asarray(release)) / np.abs(np.asarray(release))


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    run = make_run(FLAGS.steps, FLAGS.selection_start, FLAGS.steps_per_epoch,
                   FLAGS.warmup_epochs, FLAGS.peak_lr, FLAGS.batch)
    images, targets = draw_batches(run)
    release = run_release(FLAGS.release_dir, run, images, targets, FLAGS.threads)
    losses, lrs = train_ours(run, images, targets, FLAGS.ours)
    gap = gaps(losses, release["loss"])
    print(f"{'step':>4} {'phase':6} {'lr release':>11} {'lr ours':>11} {'loss release':>13} "
          f"{'loss ours':>13} {'rel. gap':>9}")
    for step in range(run["steps"]):
        phase = "whole" if step < run["selection_start"] else "region"
        print(f"{step:4d} {phase:6} {release['lr'][step]:11.4e} {lrs[step]:11.4e} "
              f"{release['loss'][step]:13.7f} {losses[step]:13.7f} {gap[step]:9.2e}")
    result = {"steps": run["steps"], "selection_start": run["selection_start"],
              "max_rel_gap": float(gap.max()), "argmax_step": int(gap.argmax()),
              "max_rel_gap_whole": float(gap[:run["selection_start"]].max()),
              "max_rel_gap_region": float(gap[run["selection_start"]:].max()),
              "max_lr_rel_gap": float(gaps(lrs, release["lr"]).max()),
              "ours_overrides": list(FLAGS.ours), "cpu": precision.host_cpu_model(),
              "date": datetime.date.today().isoformat(), "torch": release["torch"],
              "jax": jax.__version__}
    print(json.dumps(result))
    if FLAGS.save_testdata:
        os.makedirs(FLAGS.save_testdata, exist_ok=True)
        np.savez_compressed(os.path.join(FLAGS.save_testdata, "batches.npz"), images=images,
                            targets=targets)
        with open(os.path.join(FLAGS.save_testdata, "release_curve.json"), "w") as f:
            json.dump({"run": run, "release": release, "measured": result}, f, indent=1)


def define_flags():
    flags.DEFINE_integer("steps", 60, "Training steps (a whole number of epochs).")
    flags.DEFINE_integer("selection_start", 30, "First step with region selection.")
    flags.DEFINE_integer("steps_per_epoch", 2, "Steps an epoch (the lr changes per epoch).")
    flags.DEFINE_integer("warmup_epochs", 2, "Warm-up epochs of the lr schedule.")
    flags.DEFINE_float("peak_lr", 1e-3, "Peak learning rate (after DeiT's batch scaling).")
    flags.DEFINE_integer("batch", 8, "Images a step.")
    flags.DEFINE_integer("threads", 0, "torch threads on the release's side (0: its default).")
    flags.DEFINE_string("release_dir", "/tmp/release",
                        "Holds venv/ (torch), ref_env.py and lfvit_src/ (the release).")
    flags.DEFINE_multi_string("ours", [], "Overrides of our config, e.g. "
                              "model.whole_pos_embed=True or lr_schedule='step': what an option "
                              "changes against the release.")
    flags.DEFINE_string("save_testdata", "", "Also write the batches and the release's curve "
                        "here (tests/testdata/train_curve for the test).")


if __name__ == "__main__":
    define_flags()  # here, not at import: tests/test_train_parity.py imports this module
    app.run(main)
