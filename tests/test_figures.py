"""The README figures' numbers: thresholds spread over the exit fraction, localization rates."""
import json

import numpy as np
import pytest

from lfvit_jax import evaluate, figures
from lfvit_jax.data import cluttered_mnist_config
from lfvit_jax.models import LFViT

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


def test_rates_and_files(arrays, tmp_path):
    model = LFViT(**TINY)
    rates = figures.localization_rates(model, arrays)
    keep = arrays["_mask"]
    grid = (model.h1, model.region_size, model.patch)
    assert rates["examples"] == 36
    assert rates["region_contains"] == pytest.approx(np.mean(evaluate.region_contains(
        arrays["region"][keep], arrays["bbox"][keep], *grid)))
    assert rates["region_contains"] <= rates["any_window_contains"]
    images = np.random.default_rng(1).uniform(-1, 1, (40, 64, 64, 3)).astype(np.float32)
    numbers = figures.write_all(model, arrays, images, cluttered_mnist_config(), str(tmp_path),
                                threshold=0.4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["budget_curve.png", "easy_hard.png", "figures.json", "overlays.png",
                     "stage_counts.png"]
    assert json.loads((tmp_path / "figures.json").read_text())["region_hit"] == rates["region_hit"]
    assert numbers["threshold"] == 0.4
