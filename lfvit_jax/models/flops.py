"""FLOPs per image in the release's convention, with XLA's own count as a cross-check.

The convention reproduces the published LF-ViT figures exactly: 1 multiply-add = 1 FLOP for matmuls
and the patch embedding; LayerNorm 5 per element; nearest upsampling 1 per output element; softmax,
GELU and additions 0; stage 2 without its classifier head. XLA counts what this implementation
runs, which skips some of that work (`skipped_gflops`).
"""
import collections
import jax
import jax.numpy as jnp

from lfvit_jax.models.vit import DeiT


def block_flops(n, width, mlp_dim):
    """One transformer block on n tokens."""
    attn = n * width * 3 * width + 2 * n * n * width + n * width * width
    mlp = 2 * n * width * mlp_dim
    return attn + mlp + 2 * 5 * n * width


def _patch_embed(tokens, model):
    return tokens * model.patch * model.patch * 3 * model.width


def focus_tokens(model, mode="region"):
    """Stage-2 sequence length (cls included)."""
    h1 = model.h1
    if mode == "whole":
        return 1 + 4 * h1 * h1
    return 1 + 4 * model.num_kept + (h1 * h1 - model.num_kept if model.reuse_tokens else 0)


def deit_table(model):
    """[(stage, part, flops)] for one image of a DeiT; stage 'deit'."""
    c, depth = model.width, model.depth
    n = (model.img_size // model.patch) ** 2
    return [("deit", "patch embedding", _patch_embed(n, model)),
            ("deit", f"{depth} blocks x {n + 1} tokens",
             depth * block_flops(n + 1, c, model.mlp_dim)),
            ("deit", "final norm", 5 * (n + 1) * c),
            ("deit", "head", c * model.num_classes)]


def lfvit_table(model, focus_mode="region"):
    """[(stage, part, flops)] for one image of an LF-ViT; stages 'stage1' and 'stage2'."""
    c, depth, h1 = model.width, model.depth, model.h1
    n1, n2 = 1 + h1 * h1, focus_tokens(model, focus_mode)
    rows = [("stage1", f"patch embedding ({model.img_size // 2}px)", _patch_embed(h1 * h1, model)),
            ("stage1", f"{depth} blocks x {n1} tokens", depth * block_flops(n1, c, model.mlp_dim)),
            ("stage1", "final norm", 5 * n1 * c),
            ("stage1", "head", c * model.num_classes),
            ("stage2", f"patch embedding ({model.img_size}px)", _patch_embed(4 * h1 * h1, model))]
    if model.fusion:
        rows += [("stage2", "reuse block (norm + MLP)", 5 * h1 * h1 * c + 2 * h1 * h1 * c * 4 * c),
                 ("stage2", "nearest upsample x2", 4 * h1 * h1 * c)]
    rows += [("stage2", f"{depth} blocks x {n2} tokens", depth * block_flops(n2, c, model.mlp_dim)),
             ("stage2", "final norm", 5 * n2 * c)]
    return rows


def gflops_by_stage(rows):
    total = collections.Counter()
    for stage, _, f in rows:
        total[stage] += f
    return {stage: f / 1e9 for stage, f in total.items()}


def cls_only_skipped(n, width, mlp_dim):
    """Work of a last block and final norm over n tokens that a classifier does not need: all
    but the class token's queries, attention row, projection, MLP and norm."""
    full = block_flops(n, width, mlp_dim) + 5 * n * width
    kept = (n * width * 3 * width + 2 * n * width + width * width + 2 * width * mlp_dim
            + 5 * n * width + 2 * 5 * width)
    return full - kept


def deit_skipped(model):
    """GFLOPs of the convention this DeiT does not run: its last block for the class token only."""
    n = 1 + (model.img_size // model.patch) ** 2
    return cls_only_skipped(n, model.width, model.mlp_dim) / 1e9


def lfvit_skipped(model, focus_mode="region"):
    """GFLOPs of the convention not run here: stage 2's last block beyond the class token, and in
    region mode the embedding and fusion of unselected patches and the upsampling."""
    c = model.width
    skipped = cls_only_skipped(focus_tokens(model, focus_mode), c, model.mlp_dim)
    if focus_mode == "region":
        h1, k = model.h1, model.num_kept
        skipped += _patch_embed(4 * h1 * h1 - 4 * k, model)
        if model.fusion:
            skipped += (h1 * h1 - k) * (5 * c + 2 * c * 4 * c) + 4 * h1 * h1 * c
    return skipped / 1e9


def deit_summary(model):
    return {"gflops": gflops_by_stage(deit_table(model))["deit"]}


def lfvit_summary(model, focus_mode="region"):
    """{'stage1_gflops', 'stage2_gflops', 'stage12_gflops'} per image."""
    g = gflops_by_stage(lfvit_table(model, focus_mode))
    return {"stage1_gflops": g["stage1"], "stage2_gflops": g["stage2"],
            "stage12_gflops": g["stage1"] + g["stage2"]}


def xla_gflops(model, method=None, **kwargs):
    """XLA's count for one image of `model.apply(..., method=method)`, in multiply-adds."""
    images = jax.ShapeDtypeStruct((1, model.img_size, model.img_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    fn = lambda v, x: model.apply(v, x, method=method, **kwargs)
    return jax.jit(fn).lower(variables, images).cost_analysis()["flops"] / 2 / 1e9


def deit_gflops(model):
    """GFLOPs of the plain DeiT with the same backbone at the full resolution: the baseline."""
    fields = {k: getattr(model, k) for k in ("num_classes", "width", "depth", "num_heads",
                                             "mlp_dim", "patch", "img_size")}
    return deit_summary(DeiT(**fields))["gflops"]


def _table_lines(rows):
    return [f"{'stage':8} {'part':38} {'GFLOPs':>12}"] + [
        f"{stage:8} {part:38} {f / 1e9:12.6f}" for stage, part, f in rows]


def deit_report(model):
    """(readable table, JSON summary with XLA's cross-check)."""
    lines = _table_lines(deit_table(model))
    out = dict(deit_summary(model), xla_gflops=xla_gflops(model), skipped_gflops=deit_skipped(model))
    lines.append(f"{'total':8} {'':38} {out['gflops']:12.6f}   (XLA: {out['xla_gflops']:.6f})")
    lines.append(f"Not run here: {out['skipped_gflops']:.6f} GFLOPs of the last block, which "
                 "runs for the class token only.")
    return "\n".join(lines), out


def lfvit_report(model, focus_mode="region"):
    lines = _table_lines(lfvit_table(model, focus_mode))
    out = dict(lfvit_summary(model, focus_mode), region_size=model.region_size,
               kept_tokens=model.num_kept, stage2_tokens=focus_tokens(model, focus_mode),
               xla_stage1_gflops=xla_gflops(model, method=type(model).localize),
               xla_stage12_gflops=xla_gflops(model, focus=focus_mode),
               skipped_gflops=lfvit_skipped(model, focus_mode))
    lines.append(f"{'total':8} {'stage 1':38} {out['stage1_gflops']:12.6f}   "
                 f"(XLA: {out['xla_stage1_gflops']:.6f})")
    lines.append(f"{'total':8} {'stage 1 + 2':38} {out['stage12_gflops']:12.6f}   "
                 f"(XLA: {out['xla_stage12_gflops']:.6f}, includes the stage-2 head and "
                 "elementwise ops)")
    lines.append(f"Of the release's stage 2, {out['skipped_gflops']:.6f} GFLOPs are not run "
                 "here: the last block runs for the class token only"
                 + (", and only the selected patches are embedded and fused."
                    if focus_mode == "region" else "."))
    return "\n".join(lines), out
