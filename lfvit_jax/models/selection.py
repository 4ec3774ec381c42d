"""Global class attention, region choice (NGCA and the paper's ablations) and top-K token selection,
as static-shape jnp code (grid and K are Python constants: one compilation serves every batch).
Ties go to the lowest index, matching a stable descending sort.
"""
import jax
import jax.numpy as jnp
import numpy as np

REGION_METHODS = ("ngca", "negative_ngca", "max_gca", "min_gca", "random")


def num_kept(m, alpha):
    """K = ceil(alpha * m^2), in float64 as the release computes it (m=5, 0.88 -> 22)."""
    return int(np.ceil(float(m) * float(m) * float(alpha)))


def gca_from_attention(cls_rows, beta):
    """Moving average over blocks of the class-token attention rows cls_rows (L, B, heads, N),
    then the mean over heads: (B, N - 1) cls->patch entries (cls->cls dropped, not renormalised)."""
    b1, b2 = np.float32(beta), np.float32(1.0 - beta)
    g = jnp.zeros_like(cls_rows[0])
    for row in cls_rows:
        g = b1 * g + b2 * row
    return g.mean(axis=1)[:, 1:]


def window_scores(gca, grid):
    """Sum of gca over every m x m window, stride 1: (B, nw * nw), row-major over corners."""
    m = grid.m
    values = gca.reshape(-1, grid.h1, grid.h1)
    sums = jax.lax.reduce_window(values, 0.0, jax.lax.add, (1, m, m), (1, 1, 1), "VALID")
    return sums.reshape(values.shape[0], -1)


def _window_around(token, grid):
    """Index of the window that puts coarse token `token` nearest its centre, kept on the grid."""
    last = grid.windows_per_side - 1
    shift = (grid.m - 1) // 2
    i = jnp.clip(token // grid.h1 - shift, 0, last)
    j = jnp.clip(token % grid.h1 - shift, 0, last)
    return grid.window_of_corner(i, j)


def choose_region(gca, grid, method="ngca", rng=None):
    """Index (B,) int32 of one m x m window per sample. ngca: the window of largest summed gca
    (the release); negative_ngca: the smallest; max_gca / min_gca: the window centred on the
    largest / smallest gca token; random: uniform over windows (needs `rng`)."""
    if method == "ngca":
        return jnp.argmax(window_scores(gca, grid), axis=1).astype(jnp.int32)
    if method == "negative_ngca":
        return jnp.argmin(window_scores(gca, grid), axis=1).astype(jnp.int32)
    if method == "max_gca":
        return _window_around(jnp.argmax(gca, axis=1), grid).astype(jnp.int32)
    if method == "min_gca":
        return _window_around(jnp.argmin(gca, axis=1), grid).astype(jnp.int32)
    if method == "random":
        if rng is None:
            raise ValueError("region_method='random' needs a random key.")
        return jax.random.randint(rng, (gca.shape[0],), 0, grid.windows_per_side ** 2,
                                  dtype=jnp.int32)
    raise ValueError(f"Unknown region method {method!r}; choose one of {REGION_METHODS}.")


def select_tokens(gca, region, grid, k):
    """Token bookkeeping for the focus stage, all (B, ...) int32:

    window: the region's m*m coarse indices, row-major.
    kept:   the K window tokens of largest gca, in descending gca (the ones refined).
    fine:   their 4K fine children on the 2h1 x 2h1 grid, [top-left | top-right | bottom-left |
            bottom-right], each quarter in `kept` order.
    rest:   the h1^2 - K coarse tokens not kept, in the release's order: window rows (left, then
            right of the window), rows above, rows below, then the window's unkept tokens in
            descending gca. Order does not change the logits; it makes stage-2 inputs comparable.
    """
    h1, m = grid.h1, grid.m
    n = h1 * h1
    window = grid.window_tokens(region)
    values = jnp.take_along_axis(gca, window, axis=1)
    order = jnp.argsort(-values, axis=1, stable=True)
    kept = jnp.take_along_axis(window, order, axis=1)[:, :k]
    fine = grid.fine_children(kept, jnp)

    rank = jnp.argsort(order, axis=1)  # rank of each window position in the descending sort
    t = np.arange(n, dtype=np.int32)
    rr, cc = t // h1, t % h1
    i, j = (x[:, None] for x in grid.corner(region))
    in_rows = (rr >= i) & (rr < i + m)
    inside = in_rows & (cc >= j) & (cc < j + m)
    token_rank = jnp.take_along_axis(rank, jnp.clip((rr - i) * m + (cc - j), 0, m * m - 1), axis=1)
    key = jnp.where(inside, jnp.where(token_rank < k, 4 * n, 3 * n + token_rank),
                    jnp.where(in_rows, t, jnp.where(rr < i, n + t, 2 * n + t)))
    rest = jnp.argsort(key, axis=1)[:, : n - k]
    return {"window": window, "kept": kept, "fine": fine.astype(jnp.int32),
            "rest": rest.astype(jnp.int32)}
