"""`lfvit figures`: the README's figures from a trained demo workdir."""
import json
import sys

from absl import flags
from etils import epath

from lfvit_jax import demo
from lfvit_jax.cli import app
from lfvit_jax.evaluation import figures
from lfvit_jax.io import rundir


def define_flags(fv, argv):
    del argv
    d = dict(flag_values=fv)
    flags.DEFINE_string("workdir", None, "a finished demo run (main.py --workdir)", **d)
    flags.DEFINE_string("out", None, "folder for the figures (default: WORKDIR/figures)", **d)
    flags.DEFINE_float("threshold", None, "exit threshold eta in the panel titles (default: "
                       "the median localization confidence: about half the images exit)", **d)
    flags.DEFINE_string("baseline", None, "a finished baseline run (configs/demo.py:baseline): "
                        "its point joins the budget curve", **d)
    flags.mark_flags_as_required(["workdir"], **d)


def main(FLAGS):
    cfg = rundir.read_config(FLAGS.workdir)
    if cfg is None:
        raise ValueError(f"{FLAGS.workdir} holds no finished run (no config.json); train one with "
                         "python main.py --config configs/demo.py --workdir ...")
    task, arrays, summary, images = demo.evaluate_split(cfg, FLAGS.workdir)
    threshold = (figures.half_exit_threshold(arrays) if FLAGS.threshold is None
                 else FLAGS.threshold)
    numbers = figures.write_all(
        task.grid, arrays, summary, images, cfg.data,
        FLAGS.out or epath.Path(FLAGS.workdir) / "figures", threshold,
        figures.baseline_point(FLAGS.baseline) if FLAGS.baseline else None)
    numbers.pop("sweep")
    print(json.dumps(numbers))


if __name__ == "__main__":
    sys.exit(app.run(define_flags, main))
