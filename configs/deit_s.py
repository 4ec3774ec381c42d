"""The plain DeiT-S baseline (one full-resolution pass), for comparison with LF-ViT.

Arguments: res=<image size>.

  python -m lfvit_jax.flops --config configs/deit_s.py
"""
import ml_collections

from lfvit_jax.config_args import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, res=224)
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        name="deit",
        num_classes=1000,
        img_size=arg.res,
        patch=16,
        width=384,
        depth=12,
        num_heads=6,
        mlp_dim=1536,
        drop_path=0.1,
    ))
    return config
