"""Evaluate a checkpoint: accuracy and FLOPs at every exit threshold.

Both stages run on every image of the config's evaluation split; the results go to
WORKDIR/eval_step<S>_<tag>/ (or --output). Reads the parameters only, never the training data or
the optimizer state.

  lfvit eval --workdir workdirs/demo                      # the run's own config.json
  lfvit eval --workdir workdirs/demo --checkpoint best --precision bfloat16
"""
from absl import flags

from lfvit_jax.cli import jobs
from lfvit_jax.evaluation import evaluate

CONFIG = True
REQUIRED = ("workdir",)


def define_flags(fv):
    d = dict(flag_values=fv)
    jobs.define_flags(fv, "a config whose model is the run's (default: the workdir's "
                      "config.json); needed for weights from config.resume or config.init_from")
    jobs.define_checkpoint_flags(fv)
    flags.DEFINE_string("output", None, "folder for the evaluation (default: a new "
                        "WORKDIR/eval_step<S>_<tag>; give one for a read-only workdir)", **d)


def main(FLAGS, overrides, args):
    del args
    evaluate.evaluate_checkpoint(jobs.eval_config(FLAGS, overrides, FLAGS.output), FLAGS.workdir,
                                 FLAGS.checkpoint, output=FLAGS.output)
