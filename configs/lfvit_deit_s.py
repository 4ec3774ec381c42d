"""LF-ViT with a DeiT-S backbone, the official release's settings.

Arguments: res=224|288 (any multiple of 32 works), m=<region side in coarse tokens>.

  python -m lfvit_jax.flops --config configs/lfvit_deit_s.py:res=224,m=5
  python -m lfvit_jax.flops --config configs/lfvit_deit_s.py:res=288,m=6
"""
import ml_collections

from lfvit_jax.config_args import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, res=224, m=5)
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        name="lfvit",
        num_classes=1000,
        img_size=arg.res,
        patch=16,
        width=384,
        depth=12,
        num_heads=6,
        mlp_dim=1536,
        drop_path=0.1,
        region_size=arg.m,
        alpha=0.88,
        beta=0.99,
        gca_blocks=tuple(range(3, 12)),
        region_method="ngca",
        fusion=True,
        reuse_tokens=True,
    ))
    return config
