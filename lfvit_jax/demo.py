"""The demo model behind the notebooks and figures: `configs/demo.py` trained once per workdir
($LFVIT_DEMO_WORKDIR): the first notebook to run trains it, the others reuse it.
$LFVIT_NOTEBOOK_FAST=1 uses the 8-step `runlocal` variant (so a test runs every notebook in
seconds); $LFVIT_PRECISION=bfloat16 evaluates and predicts with bfloat16 matmuls.
"""
import json
import os

from lfvit_jax.core.config_args import load_config
from lfvit_jax.evaluation import evaluate, reports
from lfvit_jax.training import trainer
from lfvit_jax.weights import loading


def is_fast():
    return os.environ.get("LFVIT_NOTEBOOK_FAST", "") not in ("", "0")


def precision():
    """The matmul dtype of $LFVIT_PRECISION, default float32."""
    return os.environ.get("LFVIT_PRECISION", "") or "float32"


def config(fast=None):
    """configs/demo.py, or its `runlocal` variant in the fast setting, at `precision()`."""
    fast = is_fast() if fast is None else fast
    cfg = load_config("demo.py:runlocal" if fast else "demo.py")
    cfg.precision = precision()
    return cfg


def workdir(fast=None):
    fast = is_fast() if fast is None else fast
    base = os.environ.get("LFVIT_DEMO_WORKDIR") or os.path.expanduser("~/lfvit_demo")
    return base + "_fast" if fast else base


def ensure_trained(cfg, path):
    """The final evaluation summary of `path`, trained first (or resumed) unless finished."""
    result = os.path.join(path, reports.RESULT_FILE)  # written at the end of training
    if not os.path.exists(result):
        return trainer.train_and_evaluate(cfg, path)
    with open(result) as f:
        return json.load(f)


def load(cfg, path):
    """(model, variables) of the workdir's latest checkpoint."""
    loaded = loading.load(cfg, path)
    return loaded.task.model, {"params": loaded.params}


def evaluate_split(cfg, path):
    """(task, arrays, summary, images) over the whole eval split, images in the arrays' order."""
    loaded, arrays, summary, images = evaluate.evaluate_weights(cfg, path, preview=None)
    return loaded.task, arrays, summary, images


def read_metrics(path):
    """The rows of a workdir's metrics.jsonl."""
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
