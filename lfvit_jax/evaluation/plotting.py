"""Figures of what LF-ViT looks at (the paper's Figure 6) and what it costs (Figures 4 and 7), drawn
on a given Axes or a new `matplotlib.figure.Figure`: no pyplot state, no leaked open figures.
"""
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

STAGE_COLOURS = {"exited_correct": "#2a9d8f", "exited_wrong": "#a8dadc",
                 "focus_correct": "#e76f51", "focus_wrong": "#f4c7b8"}
STAGE_LABELS = {"exited_correct": "localization, right", "exited_wrong": "localization, wrong",
                "focus_correct": "focus, right", "focus_wrong": "focus, wrong"}


def new_figure(width, height, dpi=120):
    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def to_display(image, mean, std):
    """Normalized (S, S, 3) float -> RGB in [0, 1] for imshow."""
    x = np.asarray(image, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(x, 0.0, 1.0)


def draw_region_and_tokens(ax, image, region_box, kept_fine_patches, patch, title=None, veil=0.5):
    """Draws `image` (H, W, 3 in [0, 1]), washes out every fine patch that was not refined (white
    at opacity `veil`: visible on dark canvases and photos alike) and outlines the region box.
    Returns {'region': Rectangle, 'mask': (grid, grid) bool of refined patches}."""
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest")
    mask = np.zeros((h // patch) ** 2, bool)
    mask[np.asarray(kept_fine_patches)] = True
    mask = mask.reshape(h // patch, h // patch)
    wash = np.ones(mask.shape + (4,), np.float32)
    wash[..., 3] = np.where(mask, 0.0, veil)  # transparent over the refined patches
    ax.imshow(wash, extent=(0, w, h, 0), interpolation="nearest")
    rect = draw_box(ax, region_box, "#f4a261", "-", linewidth=2)
    ax.set(xlim=(0, w), ylim=(h, 0), xticks=[], yticks=[])
    if title:
        ax.set_title(title, fontsize=8)
    return {"region": rect, "mask": mask}


def draw_box(ax, box, colour="#06d6a0", linestyle="--", linewidth=1.2):
    """Outlines a (ymin, xmin, ymax, xmax) pixel box, e.g. the digit's ground truth."""
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    return ax.add_patch(Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False,
                                  edgecolor=colour, linestyle=linestyle, linewidth=linewidth))


def overlays_figure(images, region_boxes, kept_fine, patch, titles=None, truth_boxes=None,
                    ncols=4, size=2.0):
    """A grid of `draw_region_and_tokens` panels (one per image); optional ground-truth boxes."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = new_figure(size * ncols, size * nrows + 0.2)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        draw_region_and_tokens(ax, images[i], region_boxes[i], kept_fine[i], patch,
                               None if titles is None else titles[i])
        if truth_boxes is not None:
            draw_box(ax, truth_boxes[i])
    return fig


def budget_curve(ax, rows, baseline=None, label="LF-ViT", annotate=6):
    """Top-1 (%) against GFLOPs per image, one point per sweep row (some labelled with eta);
    `baseline` = (gflops, top1, label) adds a single point."""
    rows = sorted(rows, key=lambda r: r["gflops"])
    x = [r["gflops"] for r in rows]
    y = [100 * r["top1"] for r in rows]
    (line,) = ax.plot(x, y, "o-", markersize=3, label=label)
    # Thresholds with the same exit decisions share a point: label each point once.
    points = {}
    for r in rows:
        points.setdefault((r["gflops"], r["top1"]), r["eta"])
    for (gflops, top1), eta in list(points.items())[:: max(1, len(points) // annotate)]:
        ax.annotate(f"{eta:.3g}", (gflops, 100 * top1), fontsize=7, textcoords="offset points",
                    xytext=(3, -9))
    if baseline is not None:
        ax.plot([baseline[0]], [100 * baseline[1]], "s", color="C3", label=baseline[2])
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set(xlabel="GFLOPs per image", ylabel="top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return line


def _titled(size, title, draw, *args):
    fig = new_figure(*size)
    ax = fig.add_subplot()
    draw(ax, *args)
    ax.set_title(title)
    return fig


def budget_curve_figure(rows, baseline=None, title="LF-ViT accuracy vs. budget"):
    return _titled((5, 3.6), title, budget_curve, rows, baseline)


def stage_counts(ax, rows):
    """Stacked bars per eta: images each stage decides, right and wrong; {key: BarContainer}."""
    etas = [f"{r['eta']:.3g}" for r in rows]
    bottom = np.zeros(len(rows))
    bars = {}
    for key, colour in STAGE_COLOURS.items():
        counts = np.array([r[key] for r in rows], float)
        bars[key] = ax.bar(etas, counts, bottom=bottom, color=colour, label=STAGE_LABELS[key])
        bottom += counts
    ax.set(xlabel="exit threshold eta", ylabel="images")
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    return bars


def stage_counts_figure(rows, title="Which stage decides"):
    return _titled((5.5, 3.6), title, stage_counts, rows)


def training_curves(records, title="Training"):
    """Loss, learning rate and both stages' eval top-1 from a workdir's metrics.jsonl rows."""
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/loc_top1" in r]
    fig = new_figure(9, 3)
    loss_ax, lr_ax, acc_ax = fig.subplots(1, 3)
    loss_ax.plot([r["step"] for r in train], [r["train/loss"] for r in train])
    loss_ax.set(xlabel="step", ylabel="loss", title=title)
    lr_ax.plot([r["step"] for r in train], [r["train/lr"] for r in train])
    lr_ax.set(xlabel="step", ylabel="learning rate")
    for key, label in (("eval/loc_top1", "localization"), ("eval/focus_top1", "focus")):
        acc_ax.plot([r["step"] for r in evals], [100 * r[key] for r in evals], "o-", label=label)
    acc_ax.set(xlabel="step", ylabel="test top-1 (%)")
    acc_ax.legend(fontsize=8)
    for ax in (loss_ax, lr_ax, acc_ax):
        ax.grid(alpha=0.3)
    return fig
