"""Evaluate a checkpoint: accuracy and FLOPs at every exit threshold.

Both stages run on every image of the config's evaluation split; the results go to
WORKDIR/eval_step<S>_<tag>/ (or --output). Reads the parameters only, never the training data or
the optimizer state.

  lfvit eval --workdir workdirs/demo                      # the run's own config.json
  lfvit eval --workdir workdirs/demo --checkpoint best --precision bfloat16
"""
from absl import flags

from lfvit_jax.cli import jobs
from lfvit_jax.core.errors import UsageError
from lfvit_jax.evaluation import evaluate

CONFIG = True
REQUIRED = ("workdir",)
PRECISIONS = ("float32", "bfloat16")


def define_flags(fv):
    d = dict(flag_values=fv)
    jobs.define_flags(fv, "a config whose model is the run's (default: the workdir's "
                      "config.json); needed for weights from config.resume or config.init_from")
    define_checkpoint_flags(fv)
    flags.DEFINE_string("output", None, "folder for the evaluation (default: a new "
                        "WORKDIR/eval_step<S>_<tag>; give one for a read-only workdir)", **d)


def define_checkpoint_flags(fv):
    d = dict(flag_values=fv)
    flags.DEFINE_string("checkpoint", "latest", "'latest' (the newest intact step), 'best' (the "
                        "best/ item, picked on the evaluation split) or a step number", **d)
    flags.DEFINE_enum("precision", "float32", PRECISIONS, "operands of every matmul; bfloat16 "
                      "accumulates in float32 and keeps LayerNorm, softmax, GELU, the region "
                      "choice and the exit decision in float32", **d)


def job_config(FLAGS, overrides, *paths):
    """The config of an eval or predict job (its `paths` checked first), at --precision."""
    if FLAGS.checkpoint not in ("latest", "best") and not FLAGS.checkpoint.isdigit():
        raise UsageError(f"--checkpoint={FLAGS.checkpoint} is not 'latest', 'best' or a step "
                         "number.")
    jobs.start(FLAGS, *paths)
    cfg = jobs.config(FLAGS, overrides, check_model=True)
    cfg.precision = FLAGS.precision
    return cfg


def main(FLAGS, overrides, args):
    del args
    evaluate.evaluate_checkpoint(job_config(FLAGS, overrides, FLAGS.output), FLAGS.workdir,
                                 FLAGS.checkpoint, output=FLAGS.output)
