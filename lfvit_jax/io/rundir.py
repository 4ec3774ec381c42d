"""A run's folder and the rules for writing there: config.json (written once the start is
validated), checkpoints/ and best/ (orbax), metrics.jsonl and tensorboard events, the final
evaluation (eval_result.json, eval_arrays.npz, *.png), an eval_step<S>_<config hash>/ per
`main.py --mode eval` and a predictions_<n>/ per `--mode predict` without --output.
"""
import contextlib
import hashlib
import json

import jax
import ml_collections
from etils import epath
from jax.experimental import multihost_utils

from lfvit_jax.core.errors import UsageError

CONFIG_FILE = "config.json"
# Config sections that must agree between a workdir's checkpoint and the run continuing it.
RESUME_MUST_MATCH = ("model", "param_sharding", "ema_decay", "grad_accum")


def _plain(config):
    """Nested dicts of JSON values (tuples as lists), as config.json holds them."""
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config,
                                 default=lambda x: x.to_dict()))


def read_config(workdir):
    """The run's own config (a ConfigDict), or None when the folder holds no run."""
    path = epath.Path(workdir) / CONFIG_FILE
    return ml_collections.ConfigDict(json.loads(path.read_text())) if path.exists() else None


def differences(a, b, prefix=""):
    """Dotted keys whose values differ between two (nested) configs."""
    a, b = _plain(a), _plain(b)
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def check_resumable(config, workdir):
    """Refuses a config that cannot continue the run already in `workdir`."""
    old = read_config(workdir)
    if old is None:
        return
    new = _plain(config)
    diffs = differences({k: old.get(k) for k in RESUME_MUST_MATCH},
                        {k: new.get(k) for k in RESUME_MUST_MATCH})
    if diffs:
        raise UsageError(
            f"{workdir} holds a run with a different {diffs} (see {workdir}/{CONFIG_FILE}); its "
            "checkpoint cannot continue with this config. Use a fresh --workdir or the original "
            "config.")


def check_same_model(config, workdir):
    """For evaluating or predicting with a run: a given config must build the run's model."""
    old = read_config(workdir)
    diffs = [] if old is None else differences({"model": old.model}, {"model": config.model})
    if diffs:
        raise UsageError(
            f"The given config's model differs from the run in {workdir} at {diffs}, so the "
            "numbers would not be the run's. Omit --config to use the run's own config.json; to "
            f"try other settings on its weights, use --config.resume={workdir} with a new "
            "--workdir.")


def write_config(config, workdir):
    """Process 0 writes config.json; every process waits for it, so none reads a half file."""
    if jax.process_index() == 0:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(config.to_json(indent=1))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("lfvit_jax: config.json written")


def eval_dir(workdir, step, config):
    tag = hashlib.sha1(config.to_json(sort_keys=True).encode()).hexdigest()[:8]
    return epath.Path(workdir) / f"eval_step{step}_{tag}"


def fresh_dir(workdir, prefix="predictions"):
    """The first `<prefix>_<n>` under workdir that does not exist yet."""
    n = 1
    while (epath.Path(workdir) / f"{prefix}_{n}").exists():
        n += 1
    return epath.Path(workdir) / f"{prefix}_{n}"


@contextlib.contextmanager
def output_folder(path, overwrite=False):
    """Makes the folder `path` for a job's files before the job computes anything, and yields it:
    refused if it holds files (unless `overwrite`) or cannot be written (`check_writable`). If
    the block fails, the folders made here go again, with what was written into them."""
    path = epath.Path(path)
    made = None if path.exists() else path
    if made is None and any(path.iterdir()) and not overwrite:
        raise UsageError(f"{path} exists and is not empty; choose a new --output, or pass "
                         "--overwrite to replace its files.")
    while made is not None and not made.parent.exists():  # up to the highest folder to make
        made = made.parent
    check_writable(path, "give --output a folder you can write to")
    try:
        if jax.process_index() == 0:
            path.mkdir(parents=True, exist_ok=True)
        yield path
    except BaseException:
        if made is not None and made.exists() and jax.process_index() == 0:
            made.rmtree()
        raise


def check_writable(path, fix):
    """Writes and removes a probe file in `path` or its nearest existing parent, so that a
    read-only destination fails before any compute and nothing is left behind; `fix` says how to
    get round it. Every process checks (its own probe), so all of them stop together."""
    folder = epath.Path(path)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    probe = folder / f".lfvit_write_probe_{jax.process_index()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"Cannot write to {path} ({e.strerror or type(e).__name__}); {fix}.") from e
