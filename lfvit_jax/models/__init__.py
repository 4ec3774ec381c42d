"""The two model kinds; `lfvit_jax.tasks.build` constructs either from a config's `model`."""
from lfvit_jax.models.lfvit import LFViT, Localization
from lfvit_jax.models.vit import VARIANTS, DeiT, resolve_width

__all__ = ["LFViT", "DeiT", "Localization", "VARIANTS", "resolve_width"]
