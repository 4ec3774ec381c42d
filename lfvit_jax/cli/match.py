"""Find the cheapest exit threshold at least as accurate as a baseline run.

Compares a finished LF-ViT run with a finished baseline (DeiT) run of the same data (both with
their eval_result.json) and reports the threshold's FLOPs against the baseline's.

  lfvit match --workdir workdirs/demo --baseline workdirs/demo_baseline
"""
import json

from absl import flags

from lfvit_jax.evaluation import evaluate

REQUIRED = ("workdir", "baseline")


def define_flags(fv):
    flags.DEFINE_string("workdir", None, "a finished LF-ViT run (or its evaluation folder)",
                        flag_values=fv)
    flags.DEFINE_string("baseline", None, "a finished baseline (DeiT) run of the same data",
                        flag_values=fv)


def main(FLAGS, overrides, args):
    del overrides, args
    print(json.dumps(evaluate.match_baseline(FLAGS.workdir, FLAGS.baseline)))
