"""`lfvit flops`: the per-stage FLOPs table of a config's model, with XLA's cross-check."""
import json
import sys

from absl import flags
from ml_collections import config_flags

from lfvit_jax import tasks
from lfvit_jax.cli import app


def define_flags(fv, argv):
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py:arg).",
                                    lock_config=True, sys_argv=argv, flag_values=fv)
    flags.DEFINE_enum("focus", "region", ["region", "whole"],
                      "Focus stage on the selected region (inference) or the whole image (first "
                      "training phase).", flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)


def main(FLAGS):
    table, out = tasks.build(FLAGS.config.model).flops_report(FLAGS.focus)
    print(table)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(app.run(define_flags, main))
