"""The plain DeiT-S baseline (one full-resolution pass), trained by the same loop as LF-ViT.

Arguments: res=<image size>, runlocal.

  lfvit train --config deit_s:res=224 --workdir workdirs/deit_s224
  lfvit train --config deit_s:runlocal --workdir /tmp/deit_runlocal
  lfvit flops --config deit_s
"""
import ml_collections

from lfvit_jax.core import config_args
from lfvit_jax.data import defaults
from lfvit_jax.training import recipes


def get_config(arg=None):
    given = config_args.given(arg)
    arg = config_args.parse_arg(arg, res=224, runlocal=False)
    config = ml_collections.ConfigDict()
    config.model = recipes.deit_s_model("deit", arg.res)
    config.data = defaults.imagenet_config()
    config.data.image_size = arg.res
    recipes.deit_training(config, total_epochs=300, selection_start_epoch=0)
    if arg.runlocal:
        recipes.runlocal(config, given)
    return config
