"""Model construction from a config's `model` section."""
from lfvit_jax.models.lfvit import LFViT
from lfvit_jax.models.vit import VARIANTS, DeiT, resolve_width

MODELS = {"lfvit": LFViT, "deit": DeiT}

# Fields of `config.model` that only LF-ViT takes.
LFVIT_FIELDS = ("region_size", "alpha", "beta", "gca_blocks", "region_method", "fusion",
                "reuse_tokens")


def build_model(cfg):
    """Builds LFViT or DeiT from a dict-like model config (see configs/lfvit_deit_s.py)."""
    cfg = dict(cfg)
    name = cfg.pop("name", "lfvit")
    if name not in MODELS:
        raise ValueError(f"Unknown model name {name!r}; choose one of {sorted(MODELS)}.")
    width, depth, heads, mlp = resolve_width(
        cfg.pop("variant", None), cfg.pop("width", None), cfg.pop("depth", None),
        cfg.pop("num_heads", None), cfg.pop("mlp_dim", None))
    kwargs = dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp)
    if cfg.get("gca_blocks") is not None:
        cfg["gca_blocks"] = tuple(int(b) for b in cfg["gca_blocks"])
    known = set(LFViT.__dataclass_fields__) if name == "lfvit" else set(DeiT.__dataclass_fields__)
    for key, value in cfg.items():
        if key in LFVIT_FIELDS and name != "lfvit":
            continue  # a DeiT baseline config may keep LF-ViT's fields; they do not apply
        if key not in known or key in ("parent", "name"):
            raise ValueError(f"Unknown model config key {key!r} for {name}.")
        kwargs[key] = value
    return MODELS[name](**kwargs)


__all__ = ["LFViT", "DeiT", "VARIANTS", "build_model"]
