"""Orbax checkpoints of the train state and the data iterator; the resume order.

Layout of a workdir: `checkpoints/<step>/{state,data}` (async, atomic, keep-last-N) and
`best/<step>/state` (the checkpoint with the best focus-stage top-1). The data item is grain's
per-process iterator state, so a resumed run continues the exact example stream.
"""
import os
import signal

import grain
import jax
import orbax.checkpoint as ocp


def manager(directory, keep, best=False, read_only=False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=True,
        best_fn=(lambda metrics: metrics["top1"]) if best else None, best_mode="max",
        keep_checkpoints_without_metrics=not best)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


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


class PreemptionFlag:
    """Set by SIGTERM, so the loop saves a checkpoint and exits at the next step boundary.

    With several processes, JAX's own preemption notifier (started by jax.distributed) catches the
    signal and its sync point makes every process stop at the same step.
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
