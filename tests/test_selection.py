"""Region choice and top-K selection against a plain numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfvit_jax.models import selection
from lfvit_jax.models.geometry import Grid


def np_window_scores(grid, m):
    h1 = grid.shape[0]
    nw = h1 - m + 1
    return np.array([grid[i:i + m, j:j + m].sum() for i in range(nw) for j in range(nw)])


def np_select(gca, h1, m, k, method, rand_region=None):
    """One sample, written out the slow way."""
    grid = gca.reshape(h1, h1)
    nw = h1 - m + 1
    scores = np_window_scores(grid, m)

    def around(t):
        r, c = divmod(int(t), h1)
        return min(max(r - (m - 1) // 2, 0), nw - 1) * nw + min(max(c - (m - 1) // 2, 0), nw - 1)

    region = {"ngca": lambda: np.argmax(scores), "negative_ngca": lambda: np.argmin(scores),
              "max_gca": lambda: around(np.argmax(gca)), "min_gca": lambda: around(np.argmin(gca)),
              "random": lambda: rand_region}[method]()
    i, j = divmod(int(region), nw)
    window = [(i + a) * h1 + (j + c) for a in range(m) for c in range(m)]
    ranked = sorted(window, key=lambda t: (-gca[t], t))  # descending, ties to the lower index
    kept = ranked[:k]
    h2 = 2 * h1
    tl = [2 * (t // h1) * h2 + 2 * (t % h1) for t in kept]
    fine = tl + [x + 1 for x in tl] + [x + h2 for x in tl] + [x + h2 + 1 for x in tl]
    rest = []
    for r in range(i, i + m):
        rest += [r * h1 + c for c in range(h1) if c < j or c >= j + m]
    rest += [r * h1 + c for r in range(i) for c in range(h1)]
    rest += [r * h1 + c for r in range(i + m, h1) for c in range(h1)]
    rest += ranked[k:]
    return region, window, kept, fine, rest


def random_gca(rng, b, h1, ties):
    if ties:  # few distinct values, exact in float32 sums: many exact ties of windows and tokens
        return rng.integers(0, 3, size=(b, h1 * h1)).astype(np.float32) / 1024
    return rng.random((b, h1 * h1), dtype=np.float32) / 100


@pytest.mark.parametrize("h1,m", [(7, 5), (7, 4), (9, 6), (7, 1), (7, 7), (9, 8), (4, 2)])
@pytest.mark.parametrize("method", selection.REGION_METHODS)
@pytest.mark.parametrize("ties", [False, True])
def test_selection_matches_numpy(h1, m, method, ties):
    rng = np.random.default_rng(h1 * 100 + m + ties)
    gca = random_gca(rng, 6, h1, ties)
    k = selection.num_kept(m, 0.88)
    key = jax.random.key(3)
    region = np.asarray(selection.choose_region(jnp.asarray(gca), Grid(h1, m, 16), method, key))
    sel = jax.tree_util.tree_map(np.asarray, selection.select_tokens(
        jnp.asarray(gca), jnp.asarray(region), Grid(h1, m, 16), k))
    for b in range(gca.shape[0]):
        want = np_select(gca[b], h1, m, k, method, rand_region=region[b])
        assert region[b] == want[0]
        np.testing.assert_array_equal(sel["window"][b], want[1])
        np.testing.assert_array_equal(sel["kept"][b], want[2])
        np.testing.assert_array_equal(sel["fine"][b], want[3])
        np.testing.assert_array_equal(sel["rest"][b], want[4])


def test_window_scores_match_numpy():
    rng = np.random.default_rng(0)
    gca = random_gca(rng, 3, 9, False)
    ours = np.asarray(selection.window_scores(jnp.asarray(gca), Grid(9, 4, 16)))
    for b in range(3):
        np.testing.assert_allclose(ours[b], np_window_scores(gca[b].reshape(9, 9), 4), rtol=1e-6)


def test_random_region_is_uniform_and_keyed():
    gca = jnp.zeros((4000, 49))
    a = np.asarray(selection.choose_region(gca, Grid(7, 5, 16), "random", jax.random.key(1)))
    b = np.asarray(selection.choose_region(gca, Grid(7, 5, 16), "random", jax.random.key(2)))
    counts = np.bincount(a, minlength=9)
    assert counts.min() > 4000 / 9 * 0.8 and a.max() == 8
    assert (a != b).mean() > 0.8


@pytest.mark.parametrize("m,k", [(4, 15), (5, 22), (6, 32), (8, 57), (1, 1), (10, 88)])
def test_num_kept_is_the_release_ceiling(m, k):
    assert selection.num_kept(m, 0.88) == k


def test_gca_is_the_per_head_moving_average():
    rng = np.random.default_rng(1)
    rows = rng.random((9, 2, 3, 50), dtype=np.float32)
    g = np.zeros_like(rows[0], dtype=np.float64)
    for r in rows:
        g = 0.99 * g + 0.01 * r
    want = g.mean(axis=1)[:, 1:]
    np.testing.assert_allclose(np.asarray(selection.gca_from_attention(jnp.asarray(rows), 0.99)),
                               want, rtol=1e-5)
