"""lfvit_jax: LF-ViT (Localization-and-Focus Vision Transformer) in JAX/Flax.

The names below load on first use, so that importing a light submodule (the exit queue, the
region geometry, the config language) does not import JAX.
"""
import importlib

_EXPORTS = {"LFViT": ("lfvit_jax.models.lfvit", "LFViT"),
            "DeiT": ("lfvit_jax.models.vit", "DeiT"),
            "build_task": ("lfvit_jax.tasks", "build"),
            "load_pretrained": ("lfvit_jax.weights.pretrained", "load_pretrained")}

__all__ = sorted(_EXPORTS) + ["build_model"]


def build_model(model_cfg):
    """LFViT or DeiT from a dict-like model config (see configs/lfvit_deit_s.py)."""
    return __getattr__("build_task")(model_cfg).model


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lfvit_jax' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)
