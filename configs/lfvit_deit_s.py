"""LF-ViT with a DeiT-S backbone on ImageNet, the official release's settings.

Arguments: res=224|288 (any multiple of 32 works), m=<region side in coarse tokens>, runlocal.

  lfvit train --config lfvit_deit_s:res=224,m=5 --workdir workdirs/lfvit_s224
  lfvit train --config lfvit_deit_s:res=288,m=5 --workdir workdirs/lfvit_s288
  lfvit train --config lfvit_deit_s:runlocal --workdir /tmp/lfvit_runlocal
  lfvit flops --config lfvit_deit_s:res=224,m=5

The release trains both resolutions from scratch, and at 288 with m = 5 too (its constructor sets
region_size 5 for every image size but 224). Starting from a timm DeiT-S checkpoint
(--config.init_from=deit_small_patch16_224.pth) is an option of ours, not the release's recipe.
"""
import ml_collections

from lfvit_jax.core import config_args
from lfvit_jax.data import defaults
from lfvit_jax.training import recipes


def get_config(arg=None):
    given = config_args.given(arg)
    arg = config_args.parse_arg(arg, res=224, m=5, runlocal=False)
    config = ml_collections.ConfigDict()
    config.model = recipes.deit_s_model(
        "lfvit", arg.res, region_size=arg.m, alpha=0.88, beta=0.99,
        gca_blocks=tuple(range(3, 12)), region_method="ngca", fusion=True, reuse_tokens=True)
    config.data = defaults.imagenet_config()
    config.data.image_size = arg.res
    recipes.deit_training(config, total_epochs=300, selection_start_epoch=231)
    if arg.runlocal:
        recipes.runlocal(config, given)
    return config
