"""Checkpoint checksums: the same numbers for any sharding, on the host and on the devices, and
different numbers for any changed value or one moved to another row."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lfvit_jax.io import integrity


def words(x):
    x = np.asarray(x)
    x = x.astype(np.uint8) if x.dtype == np.bool_ else x
    return x.view(f"u{x.dtype.itemsize}").astype(np.uint64)


def by_hand(x):
    """S0 and S1 from their definition, element by element."""
    w = words(x).reshape((np.shape(x)[0] if np.ndim(x) else 1, -1))
    r = np.arange(w.shape[0])[:, None]
    return [int(w.sum() % 2**32), int(((2 * r + 1) * w).sum() % 2**32)]


@pytest.fixture
def tree():
    rng = np.random.default_rng(0)
    return {"kernel": rng.standard_normal((8, 12, 6), dtype=np.float32),
            "bias": rng.standard_normal(16).astype(np.float32), "scalar": np.float32(3.0),
            "count": np.arange(24, dtype=np.int32).reshape(4, 6),
            "half": rng.standard_normal((4, 8)).astype(jnp.bfloat16),
            "mask": np.array([True, False, True, True])}


def test_sums_follow_their_definition(tree):
    sums = integrity.checksums(tree)
    assert sums == {k: by_hand(v) for k, v in tree.items()}


@pytest.mark.parametrize("spec", [P("a"), P(None, "a"), P("a", "b"), P("b", "a", None)])
def test_sums_do_not_depend_on_the_sharding(tree, spec):
    mesh = jax.make_mesh((4, 2), ("a", "b"))

    def put(x):
        fits = len(spec) <= np.ndim(x) and all(
            np.shape(x)[i] % mesh.shape[axis] == 0 for i, axis in enumerate(spec) if axis)
        return jax.device_put(x, NamedSharding(mesh, spec if fits else P()))
    sharded = jax.tree.map(put, tree)
    assert any(not x.is_fully_replicated for x in jax.tree.leaves(sharded))
    assert integrity.checksums(sharded) == integrity.checksums(tree)


def test_device_reduction_equals_the_host_one(tree):
    device = integrity._tree_device_sums(jax.tree.map(jnp.asarray, tree))
    assert jax.tree.map(lambda s: s.tolist(), device) == integrity.checksums(tree)


def test_changed_and_moved_values_are_caught():
    x = np.random.default_rng(1).standard_normal((6, 5), dtype=np.float32)
    base = integrity.checksums({"x": x})
    flipped = x.copy()
    flipped.view(np.uint32)[3, 2] ^= 1 << 7
    swapped = x.copy()
    swapped[[1, 4], 2] = swapped[[4, 1], 2]
    for changed in (flipped, swapped, np.roll(x, 1, axis=0), x[:, :4]):
        assert integrity.mismatches(integrity.checksums({"x": changed}), base) == ["x"]
    assert integrity.mismatches(integrity.checksums({"x": x}), base) == []
    assert integrity.mismatches(base, {}) == ["x"]


def test_entries_of_the_earlier_format_are_checked_on_their_first_two_sums():
    sums = integrity.checksums({"x": np.arange(12, dtype=np.float32).reshape(3, 4)})
    s0, s1 = sums["x"]
    assert integrity.mismatches(sums, {"x": [s0, s1, 7]}) == []
    assert integrity.mismatches(sums, {"x": [s0, s1 + 1, 7]}) == ["x"]
