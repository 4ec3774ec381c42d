"""The figures of the README and the notebooks, from a trained demo workdir.

  python main.py --config configs/demo.py --workdir workdirs/demo        # train (once)
  python -m lfvit_jax.figures --workdir workdirs/demo --out docs/figures # regenerate every PNG

Writes overlays.png (the paper's Figure 6 on cluttered MNIST test canvases), budget_curve.png
(Figure 4), stage_counts.png (Figure 7), easy_hard.png (images that exit early beside images that
go to focus) and figures.json (the numbers behind them, with the localization rates).
"""
import argparse
import json
import os

import numpy as np

from lfvit_jax import evaluate, plotting, sweep



def confidences(arrays):
    return arrays["loc_probs"][arrays["_mask"].astype(bool)].max(axis=1)


def sweep_thresholds(arrays, num):
    """`num` exit thresholds spread evenly over the exit fraction, from everything exits (eta 0)
    to nothing does (eta 1): quantiles of the localization confidence, so the figures show the
    model's whole range however confident it is."""
    quantiles = np.quantile(confidences(arrays).astype(np.float64), np.linspace(1, 0, num)[1:-1])
    return tuple(np.unique(np.concatenate([[0.0], np.round(quantiles, 3), [1.0]])).tolist())


def half_exit_threshold(arrays):
    """The median localization confidence (2 decimals, rounded down): about half the images
    exit there, whatever the model's calibration, so both stages show up in the figures."""
    return float(np.floor(100 * float(np.median(confidences(arrays))))) / 100


def take(arrays, index):
    return {k: v[index] for k, v in arrays.items()}


def localization_rates(model, arrays):
    """Fractions of evaluation images whose NGCA region contains the object's centre
    (`region_hit`), its whole box (`region_contains`), and whose box fits in any window at all
    (`any_window_contains`, the best a region choice could do)."""
    mask = arrays["_mask"].astype(bool)
    region, bbox = arrays["region"][mask], arrays["bbox"][mask]
    grid = (model.h1, model.region_size, model.patch)
    return {"region_hit": float(evaluate.region_hits(region, bbox, *grid).mean()),
            "region_contains": float(evaluate.region_contains(region, bbox, *grid).mean()),
            "any_window_contains": float(evaluate.any_window_contains(bbox, *grid).mean()),
            "examples": int(mask.sum())}


def split_overlays(model, arrays, images, data_cfg, index, threshold, ncols=4):
    """Region, refined tokens and the digit's box over the evaluation images `index`."""
    index = np.asarray(index)
    return evaluate.overlays_figure(model, take(arrays, index), images[index], data_cfg,
                                    threshold, ncols)


def easy_and_hard(model, arrays, images, data_cfg, threshold, n=4):
    """Top row: the n most confident localizations (they exit at `threshold` when their
    confidence reaches it); bottom row: the n least confident, which go to the focus stage."""
    valid = np.flatnonzero(arrays["_mask"])
    order = valid[np.argsort(-arrays["loc_probs"][valid].max(axis=1), kind="stable")]
    fig = split_overlays(model, arrays, images, data_cfg,
                         np.concatenate([order[:n], order[-n:]]), threshold, ncols=n)
    fig.suptitle("top: most confident localizations (exit early); bottom: least confident "
                 "(go to focus)", fontsize=9)
    return fig


def prediction_overlays(model, images, out, data_cfg, names):
    """Region and refined tokens over arbitrary images, from `model.apply(..., threshold)`'s
    outputs (loc_logits, focus_logits, confidence, exited, region, coarse_index)."""
    titles = []
    for i, name in enumerate(names):
        loc, focus = int(np.argmax(out["loc_logits"][i])), int(np.argmax(out["focus_logits"][i]))
        decision = "exits" if out["exited"][i] else f"focus -> {focus}"
        titles.append(f"{name}\nloc {loc} ({float(out['confidence'][i]):.2f}), {decision}")
    region = np.asarray(out["region"])
    return plotting.overlays_figure(
        [plotting.to_display(x, data_cfg.mean, data_cfg.std) for x in np.asarray(images)],
        evaluate.region_boxes(region, model.h1, model.region_size, model.patch),
        plotting.fine_patches(np.asarray(out["coarse_index"]), model.h1), model.patch, titles)


def write_all(model, arrays, images, data_cfg, out_dir, threshold, count=8):
    """Every figure of the README into `out_dir`; returns the numbers behind them."""
    os.makedirs(out_dir, exist_ok=True)
    mask = arrays["_mask"].astype(bool)
    gflops = {k: v for k, v in evaluate.summarize(model, arrays, (threshold,)).items()
              if k in ("stage1_gflops", "stage12_gflops", "deit_gflops")}
    sweep_args = (arrays["loc_probs"], arrays["focus_probs"], arrays["label"], mask, gflops,
                  gflops["deit_gflops"])
    curve = sweep.threshold_sweep(*sweep_args, thresholds=sweep_thresholds(arrays, 41))
    counts = sweep.threshold_sweep(*sweep_args, thresholds=sweep_thresholds(arrays, 11))
    plotting.save_budget_curve(curve, os.path.join(out_dir, "budget_curve.png"),
                               title="Demo LF-ViT: accuracy vs. budget")
    plotting.save_stage_counts(counts, os.path.join(out_dir, "stage_counts.png"),
                               title="Demo LF-ViT: which stage decides")
    split_overlays(model, arrays, images, data_cfg, np.arange(count), threshold).savefig(
        os.path.join(out_dir, "overlays.png"))
    easy_and_hard(model, arrays, images, data_cfg, threshold).savefig(
        os.path.join(out_dir, "easy_hard.png"))
    numbers = {"threshold": threshold, **gflops, **localization_rates(model, arrays),
               "loc_top1": float(np.mean(arrays["loc_probs"][mask].argmax(1)
                                         == arrays["label"][mask])),
               "focus_top1": float(np.mean(arrays["focus_probs"][mask].argmax(1)
                                           == arrays["label"][mask])),
               "sweep": counts}
    with open(os.path.join(out_dir, "figures.json"), "w") as f:
        json.dump(numbers, f, indent=1)
    return numbers


def main(argv=None):
    from lfvit_jax import demo
    from lfvit_jax.config_args import load_config

    p = argparse.ArgumentParser(prog="python -m lfvit_jax.figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a finished demo run (main.py --workdir)")
    p.add_argument("--out", default="docs/figures", help="folder for the PNGs and figures.json")
    p.add_argument("--config", default="demo.py", help="the run's config (configs/ name or path)")
    p.add_argument("--threshold", type=float, default=None,
                   help="exit threshold eta named in the panel titles (default: the median "
                        "localization confidence, where about half the images exit)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    model, arrays, _, images = demo.evaluate_split(cfg, args.workdir)
    threshold = half_exit_threshold(arrays) if args.threshold is None else args.threshold
    numbers = write_all(model, arrays, images, cfg.data, args.out, threshold)
    numbers.pop("sweep")
    print(json.dumps(numbers))


if __name__ == "__main__":
    main()
