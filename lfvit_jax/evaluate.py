"""Evaluation: per-sample outputs over a split, and the summaries built from them.

`predict` returns host numpy arrays for every example (padding included, with `_mask`): both
stages' softmax, the chosen region, labels and, for cluttered MNIST, the digit boxes. Summaries
(top-1 per stage, early-exit table, region hit rate) are plain numpy on those arrays, so a
threshold sweep can reuse them without running the model again.

  python -m lfvit_jax.evaluate workdirs/demo workdirs/demo_baseline   # FLOPs at matched accuracy
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from lfvit_jax import flops, parallel, plotting, sweep
from lfvit_jax.objective import forward, is_lfvit

ARRAYS_FILE = "eval_arrays.npz"
RESULT_FILE = "eval_result.json"
CURVE_FILE = "budget_curve.png"
STAGES_FILE = "stage_counts.png"
OVERLAYS_FILE = "overlays.png"


def make_eval_step(model, param_shardings, mesh):
    def step(params, images):
        out = forward(model, params, images, train=False)
        if is_lfvit(model):
            return {"loc_probs": jax.nn.softmax(out["loc_logits"].astype(jnp.float32), -1),
                    "focus_probs": jax.nn.softmax(out["focus_logits"].astype(jnp.float32), -1),
                    "region": out["region"], "coarse_index": out["coarse_index"]}
        return {"probs": jax.nn.softmax(out["logits"].astype(jnp.float32), -1)}
    batch = parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(param_shardings, batch), out_shardings=batch)


def predict(eval_step, params, batches, mesh, to_global):
    """Runs `eval_step` over an iterable of per-process batches; returns all examples' arrays."""
    sharding = parallel.batch_sharding(mesh)
    parts = []
    for batch in batches:
        gbatch = to_global(batch, sharding)
        out = eval_step(params, gbatch["image"])
        out.update({k: v for k, v in gbatch.items() if k != "image"})
        parts.append(jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), out))
    if not parts:
        raise ValueError("The evaluation split gave no batches; check config.data and eval_batch_size.")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def region_boxes(region, h1, m, patch):
    """Pixel boxes (ymin, xmin, ymax, xmax) of window indices on the h1 x h1 coarse grid."""
    nw = h1 - m + 1
    i, j = region // nw, region % nw
    step = 2 * patch
    return np.stack([i * step, j * step, (i + m) * step, (j + m) * step], axis=-1)


def region_hits(region, bbox, h1, m, patch):
    """Whether each chosen window contains the centre of the object's box."""
    box = region_boxes(region, h1, m, patch)
    cy, cx = (bbox[:, 0] + bbox[:, 2]) / 2, (bbox[:, 1] + bbox[:, 3]) / 2
    return (box[:, 0] <= cy) & (cy < box[:, 2]) & (box[:, 1] <= cx) & (cx < box[:, 3])


def _inside(outer, inner):
    """Whether boxes `inner` (..., 4) lie wholly inside `outer`; both max-exclusive."""
    return ((outer[..., 0] <= inner[..., 0]) & (outer[..., 1] <= inner[..., 1])
            & (inner[..., 2] <= outer[..., 2]) & (inner[..., 3] <= outer[..., 3]))


def region_contains(region, bbox, h1, m, patch):
    """Whether each chosen window contains the object's whole box (a stricter hit)."""
    return _inside(region_boxes(np.asarray(region), h1, m, patch), np.asarray(bbox))


def any_window_contains(bbox, h1, m, patch):
    """Whether some m x m window contains the whole box: the best any region choice can do
    (an object wider than the window, or straddling the window grid, fits in none)."""
    windows = region_boxes(np.arange((h1 - m + 1) ** 2), h1, m, patch)
    return _inside(windows[None], np.asarray(bbox)[:, None]).any(axis=1)


def _masked_mean(x, mask):
    return float(np.sum(x * mask) / max(np.sum(mask), 1))


def summarize(model, arrays, thresholds):
    """Accuracy summary of `predict`'s arrays (fractions in [0, 1]); for LF-ViT with the
    threshold sweep of `lfvit_jax.sweep` under "exit"."""
    mask, labels = arrays["_mask"].astype(bool), arrays["label"]
    out = {"examples": int(mask.sum())}
    if not is_lfvit(model):
        out["top1"] = _masked_mean(arrays["probs"].argmax(-1) == labels, mask)
        out["gflops"] = flops.summary(model)["gflops"]
        return out
    g = flops.summary(model)
    out["loc_top1"] = _masked_mean(arrays["loc_probs"].argmax(-1) == labels, mask)
    out["focus_top1"] = _masked_mean(arrays["focus_probs"].argmax(-1) == labels, mask)
    out["top1"] = out["focus_top1"]
    out.update(stage1_gflops=g["stage1_gflops"], stage12_gflops=g["stage12_gflops"],
               deit_gflops=flops.deit_gflops(model))
    out["exit"] = sweep.threshold_sweep(arrays["loc_probs"], arrays["focus_probs"], labels, mask,
                                        g, out["deit_gflops"], thresholds)
    if "bbox" in arrays:
        hits = region_hits(arrays["region"], arrays["bbox"], model.h1, model.region_size,
                           model.patch)
        out["region_hit"] = _masked_mean(hits, mask)
        contains = region_contains(arrays["region"], arrays["bbox"], model.h1,
                                   model.region_size, model.patch)
        out["region_contains"] = _masked_mean(contains, mask)
    return out


def format_table(summary):
    """The human-readable threshold table (or the single accuracy of a baseline)."""
    if "exit" not in summary:
        return f"top-1 {100 * summary['top1']:.2f}%  GFLOPs/image {summary['gflops']:.4f}"
    head = (f"localization top-1 {100 * summary['loc_top1']:.2f}%   focus top-1 "
            f"{100 * summary['focus_top1']:.2f}%")
    if "region_hit" in summary:
        head += (f"   region hit {100 * summary['region_hit']:.2f}% (contains the box "
                 f"{100 * summary['region_contains']:.2f}%)")
    head += f"   (DeiT of this backbone: {summary['deit_gflops']:.4f} GFLOPs)"
    return head + "\n" + sweep.format_table(summary["exit"])


def save_result(workdir, arrays, summary):
    """The arrays, the summary (JSON) and, for LF-ViT, the budget curve and stage counts (PNG)."""
    np.savez_compressed(os.path.join(workdir, ARRAYS_FILE), **arrays)
    with open(os.path.join(workdir, RESULT_FILE), "w") as f:
        json.dump(summary, f, indent=1)
    if "exit" in summary:
        plotting.save_budget_curve(summary["exit"], os.path.join(workdir, CURVE_FILE))
        plotting.save_stage_counts(summary["exit"], os.path.join(workdir, STAGES_FILE))


def overlays_figure(model, arrays, images, data_cfg, threshold=0.76, ncols=4):
    """Region and refined tokens over the first len(images) evaluation images (their rows of
    `arrays`), titled with the label, both stages' predictions and the localization confidence;
    ground-truth boxes are drawn when the dataset has them."""
    n = len(images)
    loc, focus = arrays["loc_probs"][:n], arrays["focus_probs"][:n]
    titles = []
    for i in range(n):
        stage = "exit" if loc[i].max() >= threshold else "focus"
        titles.append(f"y={arrays['label'][i]} loc={loc[i].argmax()} ({loc[i].max():.2f}) "
                      f"foc={focus[i].argmax()}\n{stage} at eta={threshold:g}")
    return plotting.overlays_figure(
        [plotting.to_display(x, data_cfg.mean, data_cfg.std) for x in images],
        region_boxes(arrays["region"][:n], model.h1, model.region_size, model.patch),
        plotting.fine_patches(arrays["coarse_index"][:n], model.h1), model.patch, titles,
        arrays["bbox"][:n] if "bbox" in arrays else None, ncols)


def match_baseline(lfvit_workdir, baseline_workdir, num=1001):
    """The cheapest exit threshold at which LF-ViT is at least as accurate as the baseline."""
    with open(os.path.join(baseline_workdir, RESULT_FILE)) as f:
        base = json.load(f)
    with open(os.path.join(lfvit_workdir, RESULT_FILE)) as f:
        ours = json.load(f)
    if "exit" not in ours or "exit" in base:
        raise ValueError("Give an LF-ViT workdir first and a baseline (DeiT) workdir second.")
    with np.load(os.path.join(lfvit_workdir, ARRAYS_FILE)) as f:
        arrays = dict(f)
    gflops = {k: ours[k] for k in ("stage1_gflops", "stage12_gflops")}
    rows = sweep.threshold_sweep(arrays["loc_probs"], arrays["focus_probs"], arrays["label"],
                                 arrays["_mask"], gflops, thresholds=np.linspace(0, 1, num))
    best = sweep.match_baseline(rows, base["top1"])
    plotting.save_budget_curve(rows[::50] + rows[-1:], os.path.join(lfvit_workdir, CURVE_FILE),
                               baseline=(base["gflops"], base["top1"], "baseline"))
    out = {"baseline_top1": base["top1"], "baseline_gflops": base["gflops"],
           "matched": best is not None}
    if best is not None:
        out.update(best, flops_ratio=best["gflops"] / base["gflops"])
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m lfvit_jax.evaluate LFVIT_WORKDIR BASELINE_WORKDIR")
    print(json.dumps(match_baseline(sys.argv[1], sys.argv[2])))
