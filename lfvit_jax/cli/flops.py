"""Count a config's FLOPs per image, stage by stage.

In the release's convention (1 multiply-add = 1 FLOP), with XLA's own count as a cross-check.

  lfvit flops --config lfvit_deit_s:res=224,m=5
  lfvit flops --config demo --focus whole
"""
import json

from absl import flags

from lfvit_jax import tasks
from lfvit_jax.core import config_args

CONFIG = True
REQUIRED = ("config",)


def define_flags(fv):
    d = dict(flag_values=fv)
    flags.DEFINE_string("config", None, "a packaged config (demo, lfvit_deit_s:res=288,m=6, "
                        "deit_s) or a config file's path", **d)
    flags.DEFINE_enum("focus", "region", ["region", "whole"], "the focus stage on the selected "
                      "region (inference) or on the whole image (the first training phase)", **d)


def main(FLAGS, overrides, args):
    del args
    config = config_args.load_config(FLAGS.config)
    for key, text in overrides:
        config_args.override(config, key, text)
    table, out = tasks.build(config.model).flops_report(FLAGS.focus)
    print(table)
    print(json.dumps(out))
