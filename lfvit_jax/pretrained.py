"""One-line loading of LF-ViT / CF-ViT / timm DeiT weights, and the project's own checkpoint format.
PyTorch names map to Flax paths by rule (`blocks.3.attn.qkv.weight` -> `blocks_3/attn/qkv/kernel`):
Linear weights are transposed, conv weights go OIHW -> HWIO, LayerNorm `weight` becomes `scale`.
"""
import io
import json
import logging
import math
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lfvit_jax import storage, tasks
from lfvit_jax.models import VARIANTS

log = logging.getLogger(__name__)

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def to_flax(torch_name, array):
    """Flax path and array for one PyTorch tensor."""
    path = []
    for part in torch_name.split("."):
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    path = tuple(path)
    if path[-1] == "weight":
        if array.ndim == 4:  # conv OIHW -> HWIO
            return path[:-1] + ("kernel",), array.transpose(2, 3, 1, 0)
        if array.ndim == 2:  # Linear (out, in) -> Dense kernel (in, out)
            return path[:-1] + ("kernel",), array.T
        return path[:-1] + ("scale",), array  # LayerNorm
    return path, array


def read_state_dict(path, allow_pickle=False):
    """A float32 numpy state_dict (finite floats only) from .pth/.pt/.bin or .npz, local or URL."""
    path = os.fspath(path)
    if not storage.path(path).exists():
        raise ValueError(f"{path} does not exist.")
    if path.endswith(".npz"):
        try:
            with np.load(io.BytesIO(storage.path(path).read_bytes()), allow_pickle=False) as f:
                sd = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise ValueError(f"{path} is not a readable .npz of state_dict arrays (numbers only, "
                             f"no Python objects): {type(e).__name__}.") from None
    elif path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch  # only for .pth files; not a requirement of the project
        except ImportError as e:
            raise ValueError(f"Reading {path} needs PyTorch (pip install torch), or convert it to "
                             ".npz of its state_dict arrays first.") from e
        try:
            obj = torch.load(io.BytesIO(storage.path(path).read_bytes()), map_location="cpu",
                             weights_only=not allow_pickle)
        except Exception as e:  # torch raises UnpicklingError subclasses that vary by version
            if allow_pickle:
                raise
            raise ValueError(f"{path} holds Python objects besides tensors (e.g. training args). "
                             "If you trust the file, pass allow_pickle=True "
                             "(CLI: --allow_pickle).") from e
        if isinstance(obj, dict):  # a training checkpoint: its first state_dict-like entry
            obj = next((obj[key] for key in ("model", "state_dict", "model_ema")
                        if isinstance(obj.get(key), dict)), obj)
        sd = {k: v.detach().cpu().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    else:
        raise ValueError(f"Unrecognised checkpoint {path!r}: expected a .pth/.pt state_dict, an .npz "
                         "of state_dict arrays, or a directory written by `python -m lfvit_jax.convert`.")
    for k, v in sd.items():
        if not np.issubdtype(v.dtype, np.floating):
            raise ValueError(f"{path}: {k} is {v.dtype}; weights must be floating point.")
        if not np.isfinite(v).all():
            raise ValueError(f"{path}: {k} holds NaN or inf values; these weights are damaged.")
    return {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in sd.items()}


def _grid_side(num_tokens, what):
    side = math.isqrt(num_tokens - 1)
    if side * side != num_tokens - 1:
        raise ValueError(f"{what} has {num_tokens} tokens, not 1 + a square grid.")
    return side


def infer_config(sd):
    """Architecture settings readable from tensor shapes."""
    if "cls_token" not in sd or "patch_embed.proj.weight" not in sd:
        raise ValueError("Not a ViT state_dict: no cls_token / patch_embed.proj.weight. "
                         f"First keys: {sorted(sd)[:5]}")
    if "dist_token" in sd:
        raise ValueError("Distilled DeiT checkpoints (with dist_token) are not supported: their "
                         "position embedding has an extra slot. Use a plain DeiT state_dict.")
    width = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    cfg = {"width": width, "depth": depth, "patch": patch,
           "mlp_dim": sd["blocks.0.mlp.fc1.weight"].shape[0],
           "num_classes": sd["head.weight"].shape[0]}
    heads = {w: h for w, _, h in VARIANTS.values()}.get(width)
    if heads:
        cfg["num_heads"] = heads
    if "pos_embed_list.1" in sd:
        h1 = _grid_side(sd["pos_embed_list.0"].shape[1], "pos_embed_list.0")
        h2 = _grid_side(sd["pos_embed_list.1"].shape[1], "pos_embed_list.1")
        if h2 != 2 * h1:
            raise ValueError(f"Fine grid {h2} is not twice the coarse grid {h1}.")
        cfg.update(name="lfvit", img_size=h2 * patch)
    elif "pos_embed" in sd:
        cfg.update(img_size=_grid_side(sd["pos_embed"].shape[1], "pos_embed") * patch)
    return cfg


def resample_pos_embed(pos_embed, side):
    """(1, 1 + n*n, C) -> (1, 1 + side*side, C), bicubic over the grid, cls slot kept."""
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    n, c = _grid_side(pos_embed.shape[1], "pos_embed"), pos_embed.shape[-1]
    grid = jax.image.resize(grid.reshape(1, n, n, c), (1, side, side, c), "bicubic",
                            antialias=False)
    return np.concatenate([cls, np.asarray(grid).reshape(1, side * side, c)], axis=1)


def deit_into_lfvit(sd, h1):
    """timm DeiT names -> LF-ViT names: the single pos_embed serves the fine grid and is resampled
    for the coarse grid; the reuse block has no counterpart and keeps its fresh initialisation."""
    sd = dict(sd)
    pos = sd.pop("pos_embed")
    if pos.shape[1] != 1 + 4 * h1 * h1:
        pos = resample_pos_embed(pos, 2 * h1)
    sd["pos_embed_list.1"] = pos
    sd["pos_embed_list.0"] = resample_pos_embed(pos, h1)
    log.warning("Loaded a DeiT state_dict into LF-ViT: pos_embed_list.0 was resampled from the "
                "%dx%d pos_embed to %dx%d, and the reuse block is freshly initialised.",
                2 * h1, 2 * h1, h1, h1)
    return sd


def assign(sd, abstract_params, fresh_params=None, allow_missing=()):
    """Fills a Flax parameter tree from a state_dict strictly (a ValueError lists missing,
    unexpected and mis-shaped keys); missing paths under `allow_missing` take `fresh_params`."""
    flat_target = traverse_util.flatten_dict(abstract_params, sep="/")
    flat_fresh = traverse_util.flatten_dict(fresh_params or {}, sep="/")
    out, unexpected, mismatched = {}, [], []
    for name, array in sd.items():
        path, value = to_flax(name, array)
        key = "/".join(path)
        if key not in flat_target:
            unexpected.append(name)
        elif tuple(value.shape) != tuple(flat_target[key].shape):
            mismatched.append(f"{name}: checkpoint {tuple(array.shape)} (as {key}: "
                              f"{tuple(value.shape)}) vs model {tuple(flat_target[key].shape)}")
        else:
            out[key] = value
    missing = [k for k in flat_target if k not in out]
    fresh = [k for k in missing if k.startswith(tuple(allow_missing))]
    missing = [k for k in missing if k not in fresh]
    problems = [f"{what}: {keys}" for what, keys in (("missing from the checkpoint", missing),
                                                     ("not used by the model", unexpected),
                                                     ("shape mismatch", mismatched)) if keys]
    if problems:
        raise ValueError("Checkpoint does not match the model config:\n  " + "\n  ".join(problems)
                         + "\nFix the overrides (e.g. img_size, num_classes, num_heads, name) or "
                         "use a checkpoint of this architecture.")
    for key in fresh:
        out[key] = np.asarray(flat_fresh[key])
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in out.items()}, sep="/")


def load_pretrained(path, allow_pickle=False, **overrides):
    """(model, variables) from an official LF-ViT / CF-ViT checkpoint, a timm DeiT state_dict, or a
    directory written by `python -m lfvit_jax.convert`. Architecture settings are read from the
    tensor shapes; `overrides` sets the rest (region_size, num_heads, name, ...) and must not
    contradict the shapes."""
    if storage.path(path).is_dir():
        return load_converted(path, **overrides)
    sd = read_state_dict(path, allow_pickle)
    cfg = infer_config(sd)
    is_deit_sd = "pos_embed" in sd
    cfg.setdefault("name", "lfvit")
    for key, value in overrides.items():
        if key in cfg and key != "name" and cfg[key] != value:
            if not (is_deit_sd and key == "img_size"):  # a DeiT pos_embed can be resampled
                raise ValueError(f"Checkpoint does not match the config: {key}={value} was asked, "
                                 f"but the weights have {key}={cfg[key]}.")
        cfg[key] = value
    if "num_heads" not in cfg:
        raise ValueError(f"Cannot infer num_heads from width {cfg['width']} (not a DeiT Ti/S/B "
                         "width); pass num_heads=... .")
    task = tasks.build(cfg)
    sd, fresh_prefixes = task.adapt_state_dict(sd)
    fresh = jax.jit(task.init_params)(jax.random.key(0)) if fresh_prefixes else None
    abstract = fresh or jax.eval_shape(task.init_params, jax.random.key(0))
    return task.model, {"params": assign(sd, abstract, fresh, fresh_prefixes)}


def save_converted(path, model, variables):
    """Writes the project's own format: an orbax params checkpoint plus model_config.json."""
    import orbax.checkpoint as ocp
    path = storage.path(path)
    if path.exists():
        raise ValueError(f"{path} exists; choose a new destination or delete it first.")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / PARAMS_DIR, variables["params"])
    ckptr.wait_until_finished()
    (path / CONFIG_FILE).write_text(json.dumps(tasks.for_model(model).model_config(), indent=1))


def load_converted(path, **overrides):
    """Reads what `save_converted` wrote; overrides change non-shape settings (e.g. region_size)."""
    import orbax.checkpoint as ocp
    path = storage.path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.exists():
        raise ValueError(f"{path} is not a converted checkpoint (no {CONFIG_FILE}); write one with "
                         "`python -m lfvit_jax.convert SRC DST`.")
    cfg = json.loads(cfg_file.read_text())
    cfg.update(overrides)
    task = tasks.build(cfg)
    abstract = jax.eval_shape(task.init_params, jax.random.key(0))
    try:
        params = ocp.StandardCheckpointer().restore(path / PARAMS_DIR, abstract)
    except Exception as e:  # orbax reports shape/structure problems with several exception types
        raise ValueError(f"Could not restore {path} into the model built from its config with "
                         f"overrides {overrides}: {e}") from e
    return task.model, {"params": params}
