"""Writing an evaluation's results: `eval_arrays.npz` (per-example arrays), `eval_result.json`
(the task's summary) and the figures of its kind; reading them back."""
import io
import json

import jax
import numpy as np
from etils import epath

from lfvit_jax import tasks
from lfvit_jax.evaluation import plotting

ARRAYS_FILE = "eval_arrays.npz"
RESULT_FILE = "eval_result.json"


def write_eval(out_dir, arrays, summary, figures):
    """Writes the arrays, the summary and each {file name: Figure} into `out_dir` (or gs://)."""
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    (out_dir / ARRAYS_FILE).write_bytes(buffer.getvalue())
    (out_dir / RESULT_FILE).write_text(json.dumps(summary, indent=1))
    for name, fig in figures.items():
        save_figure(fig, out_dir / name)


def save_eval(task, out_dir, arrays, summary, images, data_cfg):
    """Process 0 writes an evaluation with its task's figures. The region overlays need the
    first images to be the arrays' first rows: true for a single process."""
    if jax.process_index() == 0:
        images = images if jax.process_count() == 1 else None
        figures = FIGURES.get(type(task), lambda *_: {})(task, arrays, summary, images, data_cfg)
        write_eval(out_dir, arrays, summary, figures)


def save_figure(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    epath.Path(path).write_bytes(buffer.getvalue())


def read_result(run_dir):
    """The summary a finished run (or an evaluation folder) wrote."""
    path = epath.Path(run_dir) / RESULT_FILE
    if not path.exists():
        raise ValueError(f"No {RESULT_FILE} in {run_dir}: give a finished training run or an "
                         "evaluation folder (main.py --mode eval writes one).")
    return json.loads(path.read_text())


def read_arrays(run_dir):
    with np.load(io.BytesIO((epath.Path(run_dir) / ARRAYS_FILE).read_bytes())) as f:
        return dict(f)


def overlays_figure(grid, arrays, images, data_cfg, threshold=0.76, ncols=4):
    """Regions and refined tokens over `images` (the first rows of `arrays`), titled with label,
    both stages' predictions and confidence, with ground-truth boxes when the data has them."""
    n = len(images)
    loc, focus = arrays["loc_probs"][:n], arrays["focus_probs"][:n]
    titles = []
    for i in range(n):
        stage = "exit" if loc[i].max() >= threshold else "focus"
        titles.append(f"y={arrays['label'][i]} loc={loc[i].argmax()} ({loc[i].max():.2f}) "
                      f"foc={focus[i].argmax()}\n{stage} at eta={threshold:g}")
    return plotting.overlays_figure(
        [plotting.to_display(x, data_cfg.mean, data_cfg.std) for x in images],
        grid.region_boxes(arrays["region"][:n]), grid.fine_children(arrays["coarse_index"][:n]),
        grid.patch, titles, arrays["bbox"][:n] if "bbox" in arrays else None, ncols)


def lfvit_figures(task, arrays, summary, images, data_cfg):
    """The budget curve, the stage counts and, given images, the regions over them."""
    out = {"budget_curve.png": plotting.budget_curve_figure(summary["exit"]),
           "stage_counts.png": plotting.stage_counts_figure(summary["exit"])}
    if images is not None and len(images):
        out["overlays.png"] = overlays_figure(task.grid, arrays, images, data_cfg)
    return out


FIGURES = {tasks.LFViTTask: lfvit_figures}  # a DeiT evaluation draws none
