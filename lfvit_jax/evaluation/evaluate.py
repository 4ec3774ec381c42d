"""Running a model over an evaluation split, and matching a baseline's accuracy (`lfvit match`).
The task's summaries are computed from the per-example arrays, so a threshold sweep never runs the
model again.
"""
import functools
import json

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from lfvit_jax import tasks
from lfvit_jax.core import parallel
from lfvit_jax.core.errors import UsageError
from lfvit_jax.data.pipeline import Dataset
from lfvit_jax.evaluation import reports
from lfvit_jax.io import rundir
from lfvit_jax.tasks import sweep
from lfvit_jax.weights import loading


def make_eval_step(task, param_shardings, mesh, phase=None):
    """The jitted `task.eval_outputs`; `phase` chooses a training phase's forward (default: the
    inference one)."""
    batch = parallel.batch_sharding(mesh)
    outputs = task.eval_outputs if phase is None else functools.partial(task.eval_outputs,
                                                                        phase=phase)
    return jax.jit(outputs, in_shardings=(param_shardings, batch), out_shardings=batch)


def run(eval_step, params, batches, mesh, preview=16):
    """(arrays, images): every example's host arrays (`eval_outputs`, labels, `_mask`, boxes) over
    per-process batches, and this process's first `preview` images (None: all, with padding)."""
    sharding = parallel.batch_sharding(mesh)
    parts, kept = [], []
    for batch in batches:
        if preview is None or sum(map(len, kept)) < preview:
            kept.append(batch["image"])
        gbatch = parallel.to_global(batch, sharding)
        out = eval_step(params, gbatch["image"])
        out.update({k: v for k, v in gbatch.items() if k != "image"})
        parts.append(jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), out))
    if not parts:
        raise ValueError("The evaluation split gave no batches; check config.data and "
                         "eval_batch_size.")
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return arrays, (np.concatenate(kept)[:preview] if kept else None)


def evaluate_weights(config, workdir, which="latest", dataset=None, preview=16):
    """(loaded, arrays, summary, images): `run` over the eval split with the weights found."""
    mesh, loaded = _load(config, workdir, which)
    return (loaded,) + _evaluate(config, loaded, mesh, dataset, preview)


def _load(config, workdir, which):
    if config.data.get("num_classes") and config.data.num_classes != config.model.num_classes:
        raise UsageError(f"config.model.num_classes={config.model.num_classes} but the data has "
                         f"{config.data.num_classes} classes; make them agree.")
    mesh = parallel.make_mesh()
    parallel.check_batch(config.eval_batch_size, mesh, name="config.eval_batch_size")
    return mesh, loading.load(config, workdir, which, mesh)


def _evaluate(config, loaded, mesh, dataset=None, preview=16):
    dataset = dataset or Dataset(config.data)
    shardings = jax.tree.map(lambda x: x.sharding, loaded.params)
    arrays, images = run(make_eval_step(loaded.task, shardings, mesh), loaded.params,
                         dataset.eval_iterator(config.eval_batch_size), mesh, preview)
    return arrays, loaded.task.summarize(arrays, config.eval_thresholds), images


def evaluate_checkpoint(config, workdir, which="latest", dataset=None, output=None):
    """`lfvit eval`: the evaluation into `output`, by default a folder of its own under the
    workdir (never over the training run's files), checked writable before any compute. Returns
    (summary, folder)."""
    mesh, loaded = _load(config, workdir, which)
    out_dir = epath.Path(output) if output else rundir.eval_dir(workdir, loaded.step, config)
    rundir.check_writable(out_dir, "give --output a folder you can write to")
    arrays, summary, images = _evaluate(config, loaded, mesh, dataset)
    reports.save_eval(loaded.task, out_dir, arrays, summary, images, config.data)
    if jax.process_index() == 0:
        print(f"Evaluated {loaded.origin}; results in {out_dir}")
        print(loaded.task.format_summary(summary))
        print(json.dumps({"step": loaded.step, **summary}), flush=True)
    return summary, out_dir


def match_baseline(lfvit_dir, baseline_dir, num=1001):
    """The cheapest exit threshold of an LF-ViT run at least as accurate as a baseline run."""
    base, ours = reports.read_result(baseline_dir), reports.read_result(lfvit_dir)
    if (ours.get("model"), base.get("model")) != (tasks.LFViTTask.name, tasks.DeiTTask.name):
        raise ValueError("Give an LF-ViT run as --workdir and a baseline (DeiT) run as "
                         "--baseline.")
    arrays = reports.read_arrays(lfvit_dir)
    gflops = {k: ours[k] for k in ("stage1_gflops", "stage12_gflops")}
    rows = sweep.threshold_sweep(arrays["loc_probs"], arrays["focus_probs"], arrays["label"],
                                 arrays["_mask"], gflops, thresholds=np.linspace(0, 1, num))
    best = sweep.match_baseline(rows, base["top1"])
    out = {"baseline_top1": base["top1"], "baseline_gflops": base["gflops"],
           "matched": best is not None}
    if best is not None:
        out.update(best, flops_ratio=best["gflops"] / base["gflops"])
    return out
