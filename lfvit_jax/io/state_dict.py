"""PyTorch state_dicts as Flax parameters. Names map by rule (`blocks.3.attn.qkv.weight` ->
`blocks_3/attn/qkv/kernel`): Linear weights are transposed, conv weights go OIHW -> HWIO, LayerNorm
`weight` becomes `scale`. Reading .pth files needs PyTorch; .npz files of the arrays do not.
"""
import io
import logging
import math
import os
import zipfile

import jax
import numpy as np
from flax import traverse_util

from lfvit_jax.io import storage

log = logging.getLogger(__name__)


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
                         "of state_dict arrays, or a directory written by `python -m lfvit_jax.cli.convert`.")
    for k, v in sd.items():
        if not np.issubdtype(v.dtype, np.floating):
            raise ValueError(f"{path}: {k} is {v.dtype}; weights must be floating point.")
        if not np.isfinite(v).all():
            raise ValueError(f"{path}: {k} holds NaN or inf values; these weights are damaged.")
    return {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in sd.items()}


def grid_side(num_tokens, what):
    side = math.isqrt(num_tokens - 1)
    if side * side != num_tokens - 1:
        raise ValueError(f"{what} has {num_tokens} tokens, not 1 + a square grid.")
    return side


def resample_pos_embed(pos_embed, side):
    """(1, 1 + n*n, C) -> (1, 1 + side*side, C), bicubic over the grid, cls slot kept."""
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    n, c = grid_side(pos_embed.shape[1], "pos_embed"), pos_embed.shape[-1]
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
    """Fills a Flax parameter tree (of numpy arrays) from a state_dict strictly (a ValueError lists missing,
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
    return traverse_util.unflatten_dict(out, sep="/")  # numpy: no device copy, no compilation
