"""Orbax checkpoints: the training state with its data iterator, and parameters alone.

Layout of a workdir: `checkpoints/<step>/{state,data}` (async, atomic, the last
`keep_checkpoints` kept) and `best/<step>/state` = {'params': the evaluated parameters} of the
best focus-stage top-1 so far (picked on the evaluation split). The data item is grain's
per-process iterator state, so a resumed run continues the exact example stream.
"""
import signal

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from lfvit_jax import storage

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"


def as_path(directory):
    """An epath for orbax: local paths made absolute (orbax needs that), URLs (gs://) kept."""
    return storage.path(directory)


def manager(directory, keep=None, best=False, read_only=False):
    """A manager that keeps the last `keep` steps (all when None), or with `best` the one step of
    highest metrics['top1']; `read_only` for another run's folder."""
    if best:
        policy = preservation_policy.BestN(get_metric_fn=lambda m: m["top1"], n=1,
                                           keep_checkpoints_without_metrics=False)
    else:
        policy = preservation_policy.LatestN(n=keep)
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True, read_only=read_only,
                                           create=not read_only, preservation_policy=policy)
    return ocp.CheckpointManager(as_path(directory), options=options)


def reader(directory):
    """A read-only manager (nothing is created or cleaned up: a read-only folder works) whose
    'state' item can be restored in part and inspected without restoring."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    return ocp.CheckpointManager(as_path(directory), options=options,
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler()})


def steps(directory):
    """The steps saved under `directory` (none when it does not exist)."""
    if not as_path(directory).exists():
        return []
    with reader(directory) as mngr:
        return list(mngr.all_steps())


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, shardings)


def save(mngr, step, state, data_iter=None, metrics=None, force=False):
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def restore(mngr, step, abstract_state, data_iter=None):
    """Restores `state` (into the abstract target's shardings) and, if given, the data iterator."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise ValueError(
            f"The checkpoint at {mngr.directory}/{step} does not fit this config (different model "
            f"or optimizer settings?): {e}\nUse a fresh --workdir, or the config that wrote it."
        ) from e
    return restored["state"]


def restore_params(directory, step, target, keys=("ema", "params")):
    """Restores only the parameters of a saved state: the first of `keys` it holds (so the EMA
    parameters when the run kept them), into `target` (abstract arrays with shardings).
    Returns (params, key). Shapes are checked first: a mismatch names the differing paths."""
    with reader(directory) as mngr:
        saved = mngr.item_metadata(step)["state"]
        saved = getattr(saved, "tree", saved)
        key = next((k for k in keys if k in saved), None)
        if key is None:
            raise ValueError(f"{directory}/{step} holds no parameters (no {' or '.join(keys)}).")
        check_shapes(saved[key], target, f"{directory}/{step}")
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
        args = ocp.args.PyTreeRestore(item={key: target}, restore_args={key: restore_args},
                                      partial_restore=True)
        return mngr.restore(step, args=ocp.args.Composite(state=args))["state"][key], key


def check_shapes(saved, target, where, show=5):
    """A clear error when a saved parameter tree differs from the model's (paths and shapes,
    the first few of each kind)."""
    flat = lambda tree: {"/".join(map(str, k)): tuple(v.shape) for k, v in
                         ocp.tree.to_flat_dict(tree).items()}
    have, want = flat(saved), flat(target)
    problems = [f"{label}: {names[:show]}{' ...' if len(names) > show else ''}"
                for label, names in (
                    ("missing", sorted(set(want) - set(have))),
                    ("unexpected", sorted(set(have) - set(want))),
                    ("shape", [f"{k} {have[k]} vs model {want[k]}" for k in sorted(want)
                               if k in have and have[k] != want[k]])) if names]
    if problems:
        raise ValueError(f"The parameters in {where} do not fit the model of this config ("
                         + "; ".join(problems) + "). Use the config that trained them (omit "
                         "--config to use the run's config.json) or matching weights.")


class PreemptionFlag:
    """Set by SIGTERM, so the loop saves a checkpoint and exits at the next step boundary.

    With several processes, JAX's preemption service (started by jax.distributed.initialize)
    catches SIGTERM in any one of them and tells the others; its sync point is the same step in
    every process, so all save that step and stop together.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def should_stop(self, step):
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
