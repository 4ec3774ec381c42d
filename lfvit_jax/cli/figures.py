"""Draw the README's figures from a trained demo run.

Writes overlays.png, budget_curve.png, stage_counts.png, easy_hard.png and figures.json (the
numbers behind them).

  lfvit figures --workdir workdirs/demo --baseline workdirs/demo_baseline --out docs/figures
"""
import json

from absl import flags
from etils import epath

from lfvit_jax import demo
from lfvit_jax.evaluation import figures
from lfvit_jax.io import rundir

REQUIRED = ("workdir",)


def define_flags(fv):
    d = dict(flag_values=fv)
    flags.DEFINE_string("workdir", None, "a finished demo run (lfvit train --workdir)", **d)
    flags.DEFINE_string("out", None, "folder for the figures (default: WORKDIR/figures)", **d)
    flags.DEFINE_float("threshold", None, "exit threshold eta in the panel titles (default: the "
                       "median localization confidence: about half the images exit)", **d)
    flags.DEFINE_string("baseline", None, "a finished baseline run (--config demo:baseline): its "
                        "point joins the budget curve", **d)


def main(FLAGS, overrides, args):
    del overrides, args
    cfg = rundir.read_config(FLAGS.workdir)
    if cfg is None:
        raise ValueError(f"{FLAGS.workdir} holds no finished run (no config.json); train one with "
                         "lfvit train --config demo --workdir ...")
    task, arrays, summary, images = demo.evaluate_split(cfg, FLAGS.workdir)
    threshold = (figures.half_exit_threshold(arrays) if FLAGS.threshold is None
                 else FLAGS.threshold)
    numbers = figures.write_all(
        task.grid, arrays, summary, images, cfg.data,
        FLAGS.out or epath.Path(FLAGS.workdir) / "figures", threshold,
        figures.baseline_point(FLAGS.baseline) if FLAGS.baseline else None)
    numbers.pop("sweep")
    print(json.dumps(numbers))
