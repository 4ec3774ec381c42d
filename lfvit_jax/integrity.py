"""Checksums of array contents, computed where the arrays live, in one read of the data.

An array's bits, read as unsigned 32-bit words w (1- and 2-byte types widened), are seen as a
matrix: rows along the first axis, columns = the flat index c over the other axes (an array of
rank 0 or 1 is one row). Two sums modulo 2^32 are kept: S0 = sum(w) and S1 = sum((2 c + 1) w).
Both follow from the column sums, one streaming pass over the array; S1 also catches values
moved between columns.

Sums modulo 2^32 do not depend on the order of addition, so each device (or host, for CPU
devices, where the arrays are host memory) reduces its own shards, and the parts add up to the
same numbers whatever the sharding and the number of processes. Accelerator arrays reduce in one
jitted computation; CPU arrays reduce with numpy in a thread per core (numpy releases the GIL,
and XLA's CPU integer reductions are several times slower).
"""
import asyncio
import concurrent.futures
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


def _words(x, xp):
    """uint32 words of an array's bits (numpy or jax.numpy as xp); a view when 4 bytes wide."""
    if xp is jnp and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    size = np.dtype(x.dtype).itemsize
    if size not in (1, 2, 4):
        raise TypeError(f"No checksum for dtype {x.dtype}.")
    unsigned = np.dtype(f"u{size}")
    if xp is jnp:
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    w = x.view(unsigned)
    return w if size == 4 else w.astype(np.uint32)


def _columns(full_shape, shape, starts, xp):
    """Global column indices (flat over the trailing axes of `full_shape`, or the one axis of a
    rank-1 array) of a block of `shape` at `starts`, as a flat uint32 array."""
    if len(full_shape) <= 1:
        return np.uint32(starts[0] if starts else 0) + xp.arange(max(shape, default=1),
                                                                 dtype=np.uint32)
    index, stride = xp.zeros((), np.uint32), 1
    for axis in reversed(range(1, len(full_shape))):
        ids = (starts[axis] + xp.arange(shape[axis], dtype=np.uint32)) * np.uint32(stride)
        index = index + ids.reshape((-1,) + (1,) * (len(full_shape) - 1 - axis))
        stride = (stride * full_shape[axis]) % (1 << 32)
    return index.reshape(-1)


def _sums(w, columns, xp):
    """[S0, S1] of a block of words whose global column indices are `columns`."""
    cols = w.reshape((w.shape[0] if w.ndim > 1 else 1, -1)).sum(axis=0, dtype=np.uint32)
    odd = columns * np.uint32(2) + np.uint32(1)
    return xp.stack([cols.sum(dtype=np.uint32), (cols * odd).sum(dtype=np.uint32)])


def _device_sums(x):
    w = _words(x, jnp)
    return _sums(w, _columns(w.shape, w.shape, [0] * w.ndim, jnp), jnp)


_tree_device_sums = jax.jit(lambda tree: jax.tree.map(_device_sums, tree))


def _host_sums(x):
    """This process's part of an array's sums: its shards (one replica of each) in numpy."""
    if isinstance(x, jax.Array) and not x.is_fully_replicated:
        shards = [(np.asarray(s.data), s.index) for s in x.addressable_shards
                  if s.replica_id == 0]
    elif jax.process_index() == 0:  # whole on every process: counted once
        shards = [(np.asarray(x), ())]
    else:
        shards = []
    total = np.zeros(2, np.uint32)
    for data, index in shards:
        starts = [(sl.start or 0) if isinstance(sl, slice) else 0 for sl in index]
        starts += [0] * (data.ndim - len(starts))
        total += _sums(_words(data, np), _columns(np.shape(x), data.shape, starts, np), np)
    return total


def _on_cpu(x):
    return not isinstance(x, jax.Array) or all(d.platform == "cpu" for d in x.devices())


def _name(path):
    """'opt_state/0/mu/blocks_0/...': the same for a dict, a namedtuple or their metadata."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def checksums(tree):
    """{path: [S0, S1]} of every array in `tree` (JAX arrays, sharded or not, or numpy)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    host = [i for i, (_, x) in enumerate(leaves) if _on_cpu(x)]
    device = [i for i in range(len(leaves)) if i not in set(host)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        parts = dict(zip(host, pool.map(lambda i: _host_sums(leaves[i][1]), host)))
    if jax.process_count() > 1 and host:  # add up the processes' parts
        stacked = multihost_utils.process_allgather(np.stack([parts[i] for i in host]))
        parts = dict(zip(host, stacked.sum(axis=0, dtype=np.uint32)))
    if device:
        sums = _tree_device_sums([leaves[i][1] for i in device])
        parts.update(zip(device, multihost_utils.process_allgather(sums, tiled=True)))
    return {_name(path): np.asarray(parts[i]).tolist() for i, (path, _) in enumerate(leaves)}


def mismatches(sums, expected):
    """The paths whose checksums differ from (or are absent in) `expected`. Three sums per path
    is the earlier format (S0, then row- and column-weighted sums): only its S0 is compared."""
    def differs(value, saved):
        return saved is None or (saved[:1] != value[:1] if len(saved) == 3 else saved != value)
    return [path for path, value in sums.items() if differs(value, expected.get(path))]


class ChecksumsHandler(ocp.JsonCheckpointHandler):
    """Saves the checksums given as a concurrent Future: orbax starts writing the arrays, the
    sums are computed meanwhile, and the step is committed once they are written. Restores the
    JSON object (also from steps saved as a plain JSON item: same file)."""

    async def async_save(self, directory, item=None, args=None):
        async def write():
            sums = await asyncio.wrap_future(args.sums)
            if jax.process_index() == 0:
                await asyncio.to_thread((directory / "metadata").write_text, json.dumps(sums))
        return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="checksums")]


@ocp.args.register_with_handler(ChecksumsHandler, for_save=True)
@dataclasses.dataclass
class ChecksumsSave(ocp.args.CheckpointArgs):
    sums: concurrent.futures.Future


@ocp.args.register_with_handler(ChecksumsHandler, for_restore=True)
@dataclasses.dataclass
class ChecksumsRestore(ocp.args.CheckpointArgs):
    pass
