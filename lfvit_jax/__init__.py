"""lfvit_jax: LF-ViT (Localization-and-Focus Vision Transformer) in JAX/Flax."""
from lfvit_jax.models import DeiT, LFViT, build_model
from lfvit_jax.pretrained import load_pretrained

__all__ = ["LFViT", "DeiT", "build_model", "load_pretrained"]
