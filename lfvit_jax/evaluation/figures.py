"""The figures of the README and the notebooks, from a trained demo workdir: overlays.png (the
paper's Figure 6), budget_curve.png (Figure 4), stage_counts.png (Figure 7), easy_hard.png and
figures.json (the numbers behind them). README.md, "Figures", gives the commands.
"""
import json

import numpy as np
from etils import epath

from lfvit_jax import tasks
from lfvit_jax.evaluation import plotting, reports
from lfvit_jax.tasks import sweep


def confidences(arrays):
    return arrays["loc_probs"][arrays["_mask"].astype(bool)].max(axis=1)


def sweep_thresholds(arrays, num):
    """`num` exit thresholds spread evenly over the exit fraction (quantiles of the localization
    confidence, plus 0 and 1): the figures show the whole range however confident the model is."""
    quantiles = np.quantile(confidences(arrays).astype(np.float64), np.linspace(1, 0, num)[1:-1])
    return tuple(np.unique(np.concatenate([[0.0], np.round(quantiles, 3), [1.0]])).tolist())


def half_exit_threshold(arrays):
    """The median localization confidence (2 decimals, rounded down): about half the images
    exit there, whatever the model's calibration, so both stages show up in the figures."""
    return float(np.floor(100 * float(np.median(confidences(arrays))))) / 100


def localization_rates(grid, arrays, summary):
    """How often the region holds the object's centre and whole box (from the summary), and
    how often any window could hold the box (`any_window_contains`, the best a choice could do)."""
    mask = arrays["_mask"].astype(bool)
    return {"region_hit": summary["region_hit"], "region_contains": summary["region_contains"],
            "any_window_contains": float(grid.any_window_contains(arrays["bbox"][mask]).mean()),
            "examples": summary["examples"]}


def split_overlays(grid, arrays, images, data_cfg, index, threshold, ncols=4):
    """Region, refined tokens and the digit's box over the evaluation images `index`."""
    index = np.asarray(index)
    return reports.overlays_figure(grid, {k: v[index] for k, v in arrays.items()}, images[index],
                                   data_cfg, threshold, ncols)


def easy_and_hard(grid, arrays, images, data_cfg, threshold, n=4):
    """Top row: the n most confident localizations (exit early); bottom: the n least confident."""
    valid = np.flatnonzero(arrays["_mask"])
    order = valid[np.argsort(-arrays["loc_probs"][valid].max(axis=1), kind="stable")]
    fig = split_overlays(grid, arrays, images, data_cfg,
                         np.concatenate([order[:n], order[-n:]]), threshold, ncols=n)
    fig.suptitle("top: most confident localizations (exit early); bottom: least confident "
                 "(go to focus)", fontsize=9)
    return fig


def prediction_overlays(grid, images, out, data_cfg, names):
    """Regions and refined tokens over any images, from `model.apply(..., threshold)` outputs."""
    titles = []
    for i, name in enumerate(names):
        loc, focus = int(np.argmax(out["loc_logits"][i])), int(np.argmax(out["focus_logits"][i]))
        decision = "exits" if out["exited"][i] else f"focus -> {focus}"
        titles.append(f"{name}\nloc {loc} ({float(out['confidence'][i]):.2f}), {decision}")
    return plotting.overlays_figure(
        [plotting.to_display(x, data_cfg.mean, data_cfg.std) for x in np.asarray(images)],
        grid.region_boxes(np.asarray(out["region"])),
        grid.fine_children(np.asarray(out["coarse_index"])), grid.patch, titles)


def write_all(grid, arrays, summary, images, data_cfg, out_dir, threshold, baseline=None, count=8):
    """Every figure of the README into `out_dir` from one evaluation; `baseline` = (GFLOPs, top-1,
    label) adds a baseline run's point to the budget curve. Returns the numbers behind them."""
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mask = arrays["_mask"].astype(bool)
    gflops = {k: summary[k] for k in ("stage1_gflops", "stage12_gflops", "deit_gflops")}
    sweep_args = (arrays["loc_probs"], arrays["focus_probs"], arrays["label"], mask, gflops,
                  gflops["deit_gflops"])
    curve = sweep.threshold_sweep(*sweep_args, thresholds=sweep_thresholds(arrays, 41))
    counts = sweep.threshold_sweep(*sweep_args, thresholds=sweep_thresholds(arrays, 11))
    figures = {
        "budget_curve.png": plotting.budget_curve_figure(
            curve, baseline, title="Demo LF-ViT: accuracy vs. budget"),
        "stage_counts.png": plotting.stage_counts_figure(
            counts, title="Demo LF-ViT: which stage decides"),
        "overlays.png": split_overlays(grid, arrays, images, data_cfg, np.arange(count),
                                       threshold),
        "easy_hard.png": easy_and_hard(grid, arrays, images, data_cfg, threshold)}
    for name, fig in figures.items():
        reports.save_figure(fig, out_dir / name)
    numbers = {"threshold": threshold, **gflops, **localization_rates(grid, arrays, summary),
               "loc_top1": summary["loc_top1"], "focus_top1": summary["focus_top1"],
               "sweep": counts}
    if baseline is not None:
        numbers["baseline_gflops"], numbers["baseline_top1"] = baseline[:2]
    (out_dir / "figures.json").write_text(json.dumps(numbers, indent=1))
    return numbers


def baseline_point(run_dir):
    """(GFLOPs, top-1, label) of a finished baseline (DeiT) run, for the budget curve."""
    result = reports.read_result(run_dir)
    if result.get("model") != tasks.DeiTTask.name:
        raise ValueError(f"--baseline {run_dir} is an LF-ViT run; give a baseline (DeiT) run.")
    return result["gflops"], result["top1"], "baseline ViT"
