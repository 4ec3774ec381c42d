"""Checksums of array contents, computed where the arrays live.

An array's bits, read as unsigned 32-bit words w (1- and 2-byte types widened), reduce to three
sums modulo 2^32: S0 = sum(w); S1 = sum((2 r + 1) w) with r the index along the first axis; and
S2 = sum((2 c + 1) w) with c the flat index over the other axes. A changed value changes S0, a
value moved to another row changes S1, one moved within its row changes S2. Each sum needs only
the row sums or the column sums, so the whole check reads the data twice and multiplies only the
(much smaller) sums.

Sums modulo 2^32 do not depend on the order of addition, so each device (or host, for CPU
devices, where the arrays are host memory) reduces its own shards, and the parts add up to the
same numbers whatever the sharding and the number of processes. Accelerator arrays reduce in one
jitted computation; CPU arrays reduce with numpy in a thread per core (XLA's CPU integer
reductions are about 10x slower).
"""
import concurrent.futures
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


def _words(x, xp):
    """uint32 words of an array's bits (numpy or jax.numpy as xp)."""
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
    return x.view(unsigned).astype(np.uint32)


def _odd(index, xp):
    return xp.asarray(index, dtype=np.uint32) * np.uint32(2) + np.uint32(1)


def _sums(w, row_start, col_index, xp):
    """[S0, S1, S2] of a block of words `w` (at least 1-D) whose first row is `row_start` and
    whose column indices (flat over the other axes) are `col_index` (shape w.shape[1:])."""
    rows = w.sum(axis=tuple(range(1, w.ndim)), dtype=np.uint32)
    cols = w.sum(axis=0, dtype=np.uint32)
    row_index = _odd(row_start + xp.arange(w.shape[0], dtype=np.uint32), xp)
    return xp.stack([rows.sum(dtype=np.uint32),
                     (rows * row_index).sum(dtype=np.uint32),
                     (cols * _odd(col_index, xp)).sum(dtype=np.uint32)])


def _col_index(shape, starts, xp):
    """Flat indices over the trailing axes of `shape` (full sizes), for a block at `starts`."""
    index = xp.zeros((), np.uint32)
    stride = 1
    for axis in reversed(range(1, len(shape))):
        ids = (starts[axis] + xp.arange(shape[axis][1], dtype=np.uint32)) * np.uint32(stride)
        index = index + ids.reshape((-1,) + (1,) * (len(shape) - 1 - axis))
        stride = (stride * shape[axis][0]) % (1 << 32)
    return index


def _device_sums(x):
    w = _words(x, jnp)
    w = w.reshape((1,)) if w.ndim == 0 else w
    shape = [(n, n) for n in w.shape]
    return _sums(w, 0, _col_index(shape, [0] * w.ndim, jnp), jnp)


_tree_device_sums = jax.jit(lambda tree: jax.tree.map(_device_sums, tree))


def _host_sums(x):
    """This process's part of an array's sums: its shards (one replica of each) in numpy."""
    total = np.zeros(3, np.uint32)
    if isinstance(x, jax.Array):
        shards = [(np.asarray(s.data), s.index) for s in x.addressable_shards
                  if s.replica_id == 0]
        full = x.shape
    elif jax.process_index() == 0:  # a host array: every process holds all of it
        shards, full = [(np.asarray(x), ())], np.shape(x)
    else:
        shards = []
    for data, index in shards:
        w = _words(data, np)
        w, full_shape = (w.reshape(1), (1,)) if w.ndim == 0 else (w, full)
        starts = [(sl.start or 0) if isinstance(sl, slice) else 0 for sl in index]
        starts += [0] * (w.ndim - len(starts))
        shape = list(zip(full_shape, w.shape))
        total += _sums(w, np.uint32(starts[0]), _col_index(shape, starts, np), np)
    return total


def _on_cpu(x):
    return not isinstance(x, jax.Array) or all(d.platform == "cpu" for d in x.devices())


def _name(path):
    """'opt_state/0/mu/blocks_0/...': the same for a dict, a namedtuple or their metadata."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def checksums(tree):
    """{path: [S0, S1, S2]} of every array in `tree` (JAX arrays, sharded or not, or numpy)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    host = [i for i, (_, x) in enumerate(leaves) if _on_cpu(x)]
    device = [i for i in range(len(leaves)) if i not in set(host)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # numpy frees the GIL
        parts = dict(zip(host, pool.map(lambda i: _host_sums(leaves[i][1]), host)))
    if jax.process_count() > 1 and host:  # add up the processes' parts
        stacked = multihost_utils.process_allgather(np.stack([parts[i] for i in host]))
        parts = dict(zip(host, stacked.sum(axis=0, dtype=np.uint32)))
    if device:
        sums = _tree_device_sums([leaves[i][1] for i in device])
        parts.update(zip(device, multihost_utils.process_allgather(sums, tiled=True)))
    return {_name(path): np.asarray(parts[i]).tolist() for i, (path, _) in enumerate(leaves)}


def mismatches(sums, expected):
    """The paths whose checksums differ from (or are absent in) `expected`."""
    return [path for path, value in sums.items() if expected.get(path) != value]
