"""One-line loading of LF-ViT / CF-ViT / timm DeiT weights (`lfvit_jax.io.state_dict` maps their
names), and the project's own converted format: an orbax checkpoint of the parameters plus
model_config.json.
"""
import json

import jax
import orbax.checkpoint as ocp

from lfvit_jax import tasks
from lfvit_jax.io import storage
from lfvit_jax.io.state_dict import assign, grid_side, read_state_dict
from lfvit_jax.models.vit import VARIANTS

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


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
        h1 = grid_side(sd["pos_embed_list.0"].shape[1], "pos_embed_list.0")
        h2 = grid_side(sd["pos_embed_list.1"].shape[1], "pos_embed_list.1")
        if h2 != 2 * h1:
            raise ValueError(f"Fine grid {h2} is not twice the coarse grid {h1}.")
        cfg.update(name="lfvit", img_size=h2 * patch)
    elif "pos_embed" in sd:
        cfg.update(img_size=grid_side(sd["pos_embed"].shape[1], "pos_embed") * patch)
    return cfg


def load_pretrained(path, allow_pickle=False, **overrides):
    """(model, variables) from an official LF-ViT / CF-ViT checkpoint, a timm DeiT state_dict, or a
    directory written by `python -m lfvit_jax.cli.convert`. Architecture settings are read from the
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
    return task.model, {"params": assign(sd, task.abstract_params(), fresh, fresh_prefixes)}


def save_converted(path, model, variables):
    """Writes the project's own format: an orbax params checkpoint plus model_config.json."""
    path = storage.path(path)
    if path.exists():
        raise ValueError(f"{path} exists; choose a new destination or delete it first.")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / PARAMS_DIR, variables["params"])
    ckptr.wait_until_finished()
    (path / CONFIG_FILE).write_text(json.dumps(tasks.for_model(model).model_config(), indent=1))


def load_converted(path, **overrides):
    """Reads what `save_converted` wrote; overrides change non-shape settings (e.g. region_size)."""
    path = storage.path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.exists():
        raise ValueError(f"{path} is not a converted checkpoint (no {CONFIG_FILE}); write one with "
                         "`python -m lfvit_jax.cli.convert SRC DST`.")
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("matmul_dtype", None)  # written by earlier versions; the precision is the job's
    cfg.update(overrides)
    task = tasks.build(cfg)
    # On one device: a target with a sharding is also what makes orbax check the shapes.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: x.update(sharding=device), task.abstract_params())
    try:
        params = ocp.StandardCheckpointer().restore(path / PARAMS_DIR, target)
    except Exception as e:  # orbax reports shape/structure problems with several exception types
        raise ValueError(f"Could not restore {path} into the model built from its config with "
                         f"overrides {overrides}: {e}") from e
    return task.model, {"params": params}


def convert(src, dst, allow_pickle=False, **overrides):
    """Reads `src` (as `load_pretrained`), writes the converted format to `dst`; returns the
    model's config and its number of parameters."""
    model, variables = load_pretrained(src, allow_pickle=allow_pickle, **overrides)
    save_converted(dst, model, variables)
    count = sum(x.size for x in jax.tree_util.tree_leaves(variables))
    return tasks.for_model(model).model_config(), count
