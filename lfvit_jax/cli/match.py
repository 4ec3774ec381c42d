"""`lfvit match`: the cheapest exit threshold of an LF-ViT run that is at least as accurate as a
baseline (DeiT) run, with its FLOPs ratio."""
import json
import sys

from absl import flags

from lfvit_jax.cli import app
from lfvit_jax.evaluation import evaluate


def define_flags(fv, argv):
    del argv
    flags.DEFINE_string("workdir", None, "A finished LF-ViT training run.", flag_values=fv)
    flags.DEFINE_string("baseline", None, "A finished baseline (DeiT) run of the same data.",
                        flag_values=fv)
    flags.mark_flags_as_required(["workdir", "baseline"], flag_values=fv)


def main(FLAGS):
    print(json.dumps(evaluate.match_baseline(FLAGS.workdir, FLAGS.baseline)))


if __name__ == "__main__":
    sys.exit(app.run(define_flags, main))
