"""lfvit_jax: LF-ViT (Localization-and-Focus Vision Transformer) in JAX/Flax."""
from lfvit_jax.models import DeiT, LFViT
from lfvit_jax.pretrained import load_pretrained
from lfvit_jax.tasks import build as build_task


def build_model(model_cfg):
    """LFViT or DeiT from a dict-like model config (see configs/lfvit_deit_s.py)."""
    return build_task(model_cfg).model


__all__ = ["LFViT", "DeiT", "build_model", "build_task", "load_pretrained"]
