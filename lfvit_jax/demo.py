"""The demo model behind the notebooks and figures: `configs/demo.py` trained once per workdir.

The notebooks share one workdir ($LFVIT_DEMO_WORKDIR, default ~/lfvit_demo): the first to run
trains (or finishes an interrupted run), the others reuse its checkpoint. With
$LFVIT_NOTEBOOK_FAST=1 they use the `runlocal` variant (8 steps of a tiny model, in a workdir of
its own) so a test can execute every notebook in seconds. $LFVIT_PRECISION=bfloat16 evaluates
and predicts with bfloat16 matmuls (config.model.matmul_dtype; training keeps its own
compute_dtype).
"""
import json
import os

from lfvit_jax import evaluate, loading, reports, train
from lfvit_jax.config_args import load_config

WORKDIR_ENV = "LFVIT_DEMO_WORKDIR"
FAST_ENV = "LFVIT_NOTEBOOK_FAST"
PRECISION_ENV = "LFVIT_PRECISION"


def is_fast():
    return os.environ.get(FAST_ENV, "") not in ("", "0")


def precision():
    """The matmul dtype of $LFVIT_PRECISION, default float32."""
    return os.environ.get(PRECISION_ENV, "") or "float32"


def config(fast=None):
    """configs/demo.py, or its `runlocal` variant in the fast setting, at `precision()`."""
    fast = is_fast() if fast is None else fast
    cfg = load_config("demo.py:runlocal" if fast else "demo.py")
    cfg.model.matmul_dtype = precision()
    return cfg


def workdir(fast=None):
    fast = is_fast() if fast is None else fast
    base = os.environ.get(WORKDIR_ENV) or os.path.join(os.path.expanduser("~"), "lfvit_demo")
    return base + "_fast" if fast else base


def is_finished(path):
    """True when `path` holds a completed run (train_and_evaluate wrote its final evaluation)."""
    return os.path.exists(os.path.join(path, reports.RESULT_FILE))


def ensure_trained(cfg, path):
    """Trains into `path` unless it already holds a finished run (an interrupted run resumes).
    Returns the final evaluation summary."""
    if not is_finished(path):
        return train.train_and_evaluate(cfg, path)
    with open(os.path.join(path, reports.RESULT_FILE)) as f:
        return json.load(f)


def load(cfg, path):
    """(model, variables) of the workdir's latest checkpoint."""
    loaded = loading.load(cfg, path)
    return loaded.task.model, {"params": loaded.params}


def evaluate_split(cfg, path):
    """Runs the workdir's checkpoint over the whole evaluation split.

    Returns (task, arrays, summary, images): `evaluate.run`'s arrays, the task's summary of
    them, and every evaluation image in the same order (padding included, as in the arrays).
    """
    loaded, arrays, summary, images = evaluate.evaluate_weights(cfg, path, preview=None)
    return loaded.task, arrays, summary, images


def read_metrics(path):
    """The rows of a workdir's metrics.jsonl."""
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
