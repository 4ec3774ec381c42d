"""The README figures' numbers: thresholds spread over the exit fraction, localization rates."""
import json

import numpy as np
import pytest

from lfvit_jax.evaluation import figures
from lfvit_jax import tasks
from lfvit_jax.data.defaults import cluttered_mnist_config
from lfvit_jax.models.lfvit import LFViT

TINY = dict(num_classes=4, width=32, depth=2, num_heads=2, mlp_dim=64, patch=8, img_size=64,
            region_size=2)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    n = 40
    corners = rng.integers(0, 40, (n, 2))
    return {"loc_probs": rng.dirichlet(np.ones(4), n).astype(np.float32),
            "focus_probs": rng.dirichlet(np.ones(4), n).astype(np.float32),
            "label": rng.integers(0, 4, n), "_mask": np.arange(n) < n - 4,
            "region": rng.integers(0, 9, n), "coarse_index": rng.integers(0, 16, (n, 4)),
            "bbox": np.concatenate([corners, corners + 20], axis=1).astype(np.float32)}


def test_thresholds_spread_over_the_exit_fraction(arrays):
    etas = figures.sweep_thresholds(arrays, 11)
    assert etas[0] == 0.0 and etas[-1] == 1.0 and list(etas) == sorted(set(etas))
    conf = arrays["loc_probs"][arrays["_mask"]].max(1)
    exit_fractions = [np.mean(conf >= np.float32(eta)) for eta in etas]
    assert exit_fractions[0] == 1.0 and exit_fractions[-1] == 0.0
    assert np.all(np.diff(exit_fractions) < 0.2)  # steps of about 1/10, none skipped
    assert np.mean(conf >= figures.half_exit_threshold(arrays)) >= 0.5


def by_hand(arrays):
    """Region rates with plain loops: windows are 32 px squares at 0, 16 or 32 px (h1 4, m 2)."""
    rows = [(r, b) for r, b, keep in zip(arrays["region"], arrays["bbox"], arrays["_mask"]) if keep]
    corner = lambda r: (16 * (r // 3), 16 * (r % 3))
    fits = lambda y, x, b: y <= b[0] and x <= b[1] and b[2] <= y + 32 and b[3] <= x + 32
    contains = np.mean([fits(*corner(r), b) for r, b in rows])
    anywhere = np.mean([any(fits(*corner(w), b) for w in range(9)) for _, b in rows])
    return contains, anywhere


def test_rates_and_files(arrays, tmp_path):
    task = tasks.for_model(LFViT(**TINY))
    summary = task.summarize(arrays, (0.4,))
    rates = figures.localization_rates(task.grid, arrays, summary)
    contains, anywhere = by_hand(arrays)
    assert rates["examples"] == 36
    assert rates["region_contains"] == pytest.approx(contains)
    assert rates["any_window_contains"] == pytest.approx(anywhere)
    assert 0 < contains < anywhere < 1
    images = np.random.default_rng(1).uniform(-1, 1, (40, 64, 64, 3)).astype(np.float32)
    numbers = figures.write_all(task.grid, arrays, summary, images, cluttered_mnist_config(),
                                str(tmp_path), threshold=0.4, baseline=(0.02, 0.5, "baseline"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["budget_curve.png", "easy_hard.png", "figures.json", "overlays.png",
                     "stage_counts.png"]
    saved = json.loads((tmp_path / "figures.json").read_text())
    assert saved["region_hit"] == rates["region_hit"] and saved["baseline_top1"] == 0.5
    assert numbers["threshold"] == 0.4 and numbers["focus_top1"] == summary["focus_top1"]
