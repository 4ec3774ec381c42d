"""Orbax checkpoints: the training state with its data iterator, and parameters alone.

Layout of a workdir: `checkpoints/<step>/{state,data,checksums}` (async, atomic, the last
`keep_checkpoints` kept) and `best/<step>/{state,checksums}` with state = {'params': the evaluated
parameters} of the best focus-stage top-1 so far (picked on the evaluation split). The data item
is grain's per-process iterator state, so a resumed run continues the exact example stream.

`checksums` holds two sums of every saved array's contents (`lfvit_jax.integrity`, one read of
the data), computed where the arrays live at save; every restore compares the arrays it read (all
of them to resume training, the parameters alone to evaluate or predict) with their sums: a step
that fails to restore or to match is corrupt. `newest_intact` then warns and goes back to the step
before; a step whose arrays have other shapes than the model's is an error of the config instead,
and never skipped. Paths go through `storage.path` (local made absolute, as orbax needs; gs://
kept).
"""
import logging
import os

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy

from lfvit_jax.io import integrity, storage

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
CHECKSUMS = "checksums"
log = logging.getLogger(__name__)


class CorruptCheckpointError(ValueError):
    """A saved step that cannot be read back intact (truncated, altered or incomplete)."""


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
    return ocp.CheckpointManager(storage.path(directory), options=options)


def reader(directory):
    """A read-only manager (nothing is created or cleaned up: a read-only folder works) whose
    'state' item can be restored in part and inspected without restoring."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    return ocp.CheckpointManager(storage.path(directory), options=options,
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                CHECKSUMS: ocp.JsonCheckpointHandler()})


def steps(directory):
    """The steps saved under `directory` (none when it does not exist)."""
    if not storage.path(directory).exists():
        return []
    with reader(directory) as mngr:
        return list(mngr.all_steps())


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, shardings)


def save(mngr, step, state, data_iter=None, metrics=None, force=False):
    items = {"state": ocp.args.StandardSave(state),
             CHECKSUMS: ocp.args.JsonSave(integrity.checksums(state))}
    if data_iter is not None:
        import grain  # only training saves its data iterator: eval and predict skip the import
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def _brief(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def saved_tree(directory, step):
    """The saved state's tree of array metadata (shapes, dtypes), without reading the arrays."""
    try:
        with reader(directory) as mngr:
            saved = mngr.item_metadata(step)["state"]
        saved = getattr(saved, "tree", saved)
        if saved is None:
            raise ValueError("no metadata for the state")
        return saved
    except Exception as e:  # noqa: BLE001  (any failure to read it means the step is damaged)
        raise CorruptCheckpointError(f"{directory}/{step} is incomplete: its metadata cannot "
                                     f"be read ({_brief(e)})") from e


def _has_checksums(directory, step):
    return (storage.path(directory) / str(step) / CHECKSUMS).exists()


def _restore_verified(mngr, step, items, directory):
    """Restores `items` of `step` and checks the restored 'state' against the saved checksums."""
    verify = _has_checksums(directory, step)
    if verify:
        items = {**items, CHECKSUMS: ocp.args.JsonRestore()}
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
        if verify and not isinstance(restored[CHECKSUMS], dict):
            raise ValueError("the checksums are not a JSON object")
    except Exception as e:  # noqa: BLE001  (the structure fits, so the files are damaged)
        raise CorruptCheckpointError(f"{directory}/{step} is corrupt: it cannot be read back "
                                     f"({_brief(e)})") from e
    if verify:
        bad = integrity.mismatches(integrity.checksums(restored["state"]), restored[CHECKSUMS])
        if bad:
            raise CorruptCheckpointError(
                f"{directory}/{step} is corrupt: {len(bad)} arrays differ from the checksums "
                f"saved with them ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    else:
        log.warning("%s/%d was saved without checksums; its contents are not verified.",
                    directory, step)
    return restored


def restore(mngr, step, abstract_state, data_iter=None):
    """Restores `state` (into the abstract target's shardings) and, if given, the data iterator,
    verified against its checksums. Raises CorruptCheckpointError for a damaged step."""
    directory = os.fspath(mngr.directory)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        import grain
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
        return _restore_verified(mngr, step, items, directory)["state"]
    except CorruptCheckpointError:
        # A state of other shapes fails too: then it is the config's error, not the files'.
        check_shapes(saved_tree(directory, step), abstract_state, f"{directory}/{step}",
                     what="saved training state", fix="Use a fresh --workdir, or the config "
                     "that wrote it.")
        raise


def restore_params(directory, step, target, keys=("ema", "params")):
    """Restores only the parameters of a saved state: the first of `keys` it holds (so the EMA
    parameters when the run kept them), into `target` (abstract arrays with shardings), verified
    against their own checksums. Nothing else of the step is read (the optimizer state holds about
    twice the parameters' bytes). Returns (params, key). Shapes are checked first: a mismatch
    names the differing paths."""
    saved = saved_tree(directory, step)
    key = next((k for k in keys if k in saved), None)
    if key is None:
        raise CorruptCheckpointError(f"{directory}/{step} holds no parameters (no "
                                     f"{' or '.join(keys)}).")
    check_shapes(saved[key], target, f"{directory}/{step}")
    restore_args = {key: jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding),
                                      target)}
    args = ocp.args.PyTreeRestore(item={key: target}, restore_args=restore_args,
                                  partial_restore=True)
    with reader(directory) as mngr:
        restored = _restore_verified(mngr, step, {"state": args}, os.fspath(directory))
    return restored["state"][key], key


def newest_intact(directory, steps, restore_step):
    """(step, restore_step(step), skipped) for the newest of `steps` that restores intact, with a
    warning for each newer one skipped; (None, None, []) without steps. CorruptCheckpointError
    when none is intact."""
    skipped, reasons = [], []
    for step in sorted(steps, reverse=True):
        try:
            return step, restore_step(step), skipped
        except CorruptCheckpointError as e:
            log.warning("%s; trying the step before it.", e)
            skipped.append(step)
            reasons.append(str(e))
    if skipped:
        raise CorruptCheckpointError(
            f"No intact checkpoint under {directory}: " + "; ".join(reasons) + ". Restore the "
            "folder from a copy, or start afresh with a new --workdir.")
    return None, None, []


def set_aside(directory, steps):
    """Renames damaged step folders to `<step>.corrupt` (kept for inspection, no longer a step),
    so the run can save those steps again. Process 0 renames; every process waits for it."""
    if jax.process_index() == 0:
        for step in steps:
            src = storage.path(directory) / str(step)
            dst, n = src.parent / f"{step}.corrupt", 1
            while dst.exists():
                dst, n = src.parent / f"{step}.corrupt{n}", n + 1
            src.rename(dst)
            log.warning("Moved the damaged step to %s.", dst)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("lfvit_jax: damaged checkpoints set aside")


def check_shapes(saved, target, where, show=5, what="parameters",
                 fix="Use the config that trained them (omit --config to use the run's "
                 "config.json) or matching weights."):
    """A clear error when a saved tree (parameters by default) differs from the model's (paths
    and shapes, the first few of each kind)."""
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
        raise ValueError(f"The {what} in {where} do not fit the model of this config ("
                         + "; ".join(problems) + f"). {fix}")
