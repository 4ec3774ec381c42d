"""Checksums of array contents, computed where the arrays live, in one read of the data.

An array's bits, read as unsigned 32-bit words w (1- and 2-byte types widened), reduce to two
sums modulo 2^32: S0 = sum(w) and S1 = sum((2 r + 1) w), r the index along the first axis (an
array of rank 0 is one row). Both follow from the row sums, one streaming pass over the array: a
changed value changes S0, a value moved to another row changes S1. (Steps saved earlier also
hold a third, column-weighted sum; their first two are these.)

Sums modulo 2^32 do not depend on the order of addition, so each device (or host, for CPU
devices, where the arrays are host memory) reduces its own shards, and the parts add up to the
same numbers whatever the sharding and the number of processes. Accelerator arrays reduce in one
jitted computation; CPU arrays reduce with numpy, which is memory-bound here and several times
faster than XLA's CPU integer reductions.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
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


@functools.lru_cache(maxsize=64)
def _odd(start, n):
    """2 r + 1 for rows r = start .. start + n - 1 (uint32, wrapping): the row weights."""
    return np.arange(start, start + n, dtype=np.uint32) * np.uint32(2) + np.uint32(1)


def _sums(w, start, xp):
    """[S0, S1] of a block of words whose first row is row `start` of the array."""
    if w.ndim <= 1:  # the rows are the words themselves
        rows = w.reshape(-1)
    else:
        rows = w.reshape(w.shape[0], -1).sum(axis=1, dtype=np.uint32)
    odd = _odd(start, rows.shape[0])
    if xp is np:  # numpy's integer dot wraps modulo 2^32 like the sums; one call instead of two
        return np.array([rows.sum(dtype=np.uint32), np.dot(rows, odd)], np.uint32)
    return jnp.stack([rows.sum(dtype=np.uint32), (rows * odd).sum(dtype=np.uint32)])


_tree_device_sums = jax.jit(lambda tree: jax.tree.map(lambda x: _sums(_words(x, jnp), 0, jnp),
                                                      tree))


def _host_sums(x):
    """This process's part of an array's sums: its shards (one replica of each) in numpy."""
    if isinstance(x, jax.Array) and not x.is_fully_replicated:
        blocks = [(s.data, (s.index[0].start or 0) if s.index else 0)
                  for s in x.addressable_shards if s.replica_id == 0]
    elif jax.process_index() == 0:  # whole on every process: counted once
        blocks = [(x, 0)]
    else:
        return np.zeros(2, np.uint32)
    return sum((_sums(_words(np.asarray(data), np), start, np) for data, start in blocks),
               np.zeros(2, np.uint32))


def _part(key):
    for field in ("key", "name", "idx"):  # dict, namedtuple/attribute, sequence
        if hasattr(key, field):
            return str(getattr(key, field))
    return str(key)


def _name(path):
    """'opt_state/0/mu/blocks_0/...': the same for a dict, a namedtuple or their metadata."""
    return "/".join(map(_part, path))


def checksums(tree):
    """{path: [S0, S1]} of every array in `tree` (JAX arrays, sharded or not, or numpy)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    cpu = jax.default_backend() == "cpu"
    on_host = [cpu or not isinstance(x, jax.Array) for _, x in leaves]
    host = [i for i, h in enumerate(on_host) if h]
    device = [i for i, h in enumerate(on_host) if not h]
    parts = {i: _host_sums(leaves[i][1]) for i in host}  # memory-bound: threads do not help
    if jax.process_count() > 1 and host:  # add up the processes' parts
        stacked = multihost_utils.process_allgather(np.stack([parts[i] for i in host]))
        parts = dict(zip(host, stacked.sum(axis=0, dtype=np.uint32)))
    if device:
        sums = _tree_device_sums([leaves[i][1] for i in device])
        parts.update(zip(device, multihost_utils.process_allgather(sums, tiled=True)))
    return {_name(path): np.asarray(parts[i]).tolist() for i, (path, _) in enumerate(leaves)}


def mismatches(sums, expected):
    """The paths whose checksums differ from (or are absent in) `expected`. Entries of the
    earlier format carry a third sum, which is not compared."""
    return [path for path, value in sums.items() if (expected.get(path) or [None])[:2] != value]

