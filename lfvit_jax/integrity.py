"""Checksums of array contents, computed where the arrays live.

Each array's bits are read as unsigned words and reduced to two 32-bit sums: the plain sum, and
the sum weighted by (2 * flat index + 1), so a moved or swapped value changes it too. Sums modulo
2^32 do not depend on the order of addition, so a sharded array (any layout, any number of
processes) reduces shard by shard on its own devices and only two numbers per array leave them.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

_WORDS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _sums(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize not in _WORDS:
        raise TypeError(f"No checksum for dtype {x.dtype}.")
    words = jax.lax.bitcast_convert_type(x, _WORDS[x.dtype.itemsize]).astype(jnp.uint32)
    # The flat (row-major) index of every element, built per axis so no shard is moved.
    index = jnp.zeros((), jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride)
        stride = (stride * x.shape[axis]) % (1 << 32)
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                      jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)])


_tree_sums = jax.jit(lambda tree: jax.tree.map(_sums, tree))


def _name(path):
    """'opt_state/0/mu/blocks_0/...': the same for a dict, a namedtuple or their metadata."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def checksums(tree):
    """{path: [sum, weighted sum]} of every (JAX) array in `tree`, reduced on its devices."""
    sums = multihost_utils.process_allgather(_tree_sums(tree), tiled=True)
    return {_name(path): np.asarray(value).tolist()
            for path, value in jax.tree_util.tree_flatten_with_path(sums)[0]}


def host_checksums(tree):
    """`checksums` of numpy arrays, computed on the host (the same numbers)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        x = np.asarray(x)
        if x.dtype == np.bool_:
            x = x.astype(np.uint8)
        words = x.reshape(-1).view(np.dtype(f"u{x.dtype.itemsize}")).astype(np.uint32)
        index = np.arange(words.size, dtype=np.uint32)
        out[_name(path)] = [int(words.sum(dtype=np.uint32)),
                            int((words * (2 * index + 1)).sum(dtype=np.uint32))]
    return out


def mismatches(sums, expected):
    """The paths whose checksums differ from (or are absent in) `expected`."""
    return [path for path, value in sums.items() if expected.get(path) != value]
