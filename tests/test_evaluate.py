"""Evaluation summaries: per-stage top-1, the threshold sweep, region hits, baseline matching."""
import json

import numpy as np
import pytest

from lfvit_jax.evaluation import evaluate
from lfvit_jax.evaluation import reports
from lfvit_jax import tasks
from lfvit_jax.models.geometry import Grid
from lfvit_jax.models.lfvit import LFViT

TINY = dict(num_classes=4, width=32, depth=2, num_heads=2, mlp_dim=64, patch=8, img_size=64)


def fake_arrays(rng, n=50):
    labels = rng.integers(0, 4, n)
    loc = rng.dirichlet(np.ones(4), n).astype(np.float32)
    focus = rng.dirichlet(np.ones(4), n).astype(np.float32)
    mask = np.arange(n) < n - 3
    return {"loc_probs": loc, "focus_probs": focus, "label": labels, "_mask": mask,
            "region": rng.integers(0, 9, n), "bbox": np.tile([[10, 10, 20, 20]], (n, 1))}


def test_summary_and_region_hits():
    rng = np.random.default_rng(0)
    arrays = fake_arrays(rng)
    task = tasks.for_model(LFViT(**TINY, region_size=2))  # h1 = 4: 3 x 3 windows of 16 px tokens
    summary = task.summarize(arrays, (0.0, 0.5, 1.0))
    keep = arrays["_mask"]
    loc, focus, labels = arrays["loc_probs"][keep], arrays["focus_probs"][keep], arrays["label"][keep]
    assert summary["examples"] == 47
    assert summary["loc_top1"] == pytest.approx(np.mean(loc.argmax(1) == labels))
    assert summary["focus_top1"] == pytest.approx(np.mean(focus.argmax(1) == labels))
    # Each row of the sweep, by hand: exit when the top localization probability reaches eta.
    s1, s12 = summary["stage1_gflops"], summary["stage12_gflops"]
    for row, eta in zip(summary["exit"], (0.0, 0.5, 1.0)):
        exited = [max(p) >= eta for p in loc]
        right = [(l if e else f).argmax() == y for e, l, f, y in zip(exited, loc, focus, labels)]
        frac = sum(exited) / 47
        assert row["eta"] == eta and row["exit_fraction"] == pytest.approx(frac)
        assert row["top1"] == pytest.approx(sum(right) / 47)
        assert row["gflops"] == pytest.approx(frac * s1 + (1 - frac) * s12)
        assert row["reduction"] == pytest.approx(1 - row["gflops"] / summary["deit_gflops"])
        assert row["exited_correct"] + row["exited_wrong"] == sum(exited)
    assert summary["exit"][0]["exit_fraction"] == 1.0 and summary["exit"][2]["exit_fraction"] == 0
    # The digit centre (15, 15) lies in windows whose 32 px box starts at 0: indices 0 only.
    hits = [r == 0 for r in arrays["region"][keep]]
    assert summary["region_hit"] == pytest.approx(np.mean(hits))
    assert summary["region_contains"] == pytest.approx(np.mean(hits))  # the box fits window 0 only
    assert "region hit" in task.format_summary(summary)


def test_match_baseline(tmp_path):
    rng = np.random.default_rng(1)
    arrays = fake_arrays(rng)
    task = tasks.for_model(LFViT(**TINY, region_size=2))
    ours, base = tmp_path / "ours", tmp_path / "base"
    summary = task.summarize(arrays, (0.5,))
    reports.write_eval(ours, arrays, summary, reports.lfvit_figures(task, arrays, summary, None, None))
    assert (ours / "budget_curve.png").exists() and (ours / "stage_counts.png").exists()
    assert not (ours / "overlays.png").exists()  # no images given
    base.mkdir()
    target = 0.9 * summary["focus_top1"]
    (base / reports.RESULT_FILE).write_text(json.dumps({"model": "deit", "top1": target,
                                                          "gflops": 1.0}))
    out = evaluate.match_baseline(str(ours), str(base))
    assert out["matched"] and out["top1"] >= target
    assert out["flops_ratio"] == pytest.approx(out["gflops"] / 1.0)
    with pytest.raises(ValueError, match="LF-ViT run as --workdir"):
        evaluate.match_baseline(str(base), str(ours))


def test_region_contains_by_hand():
    # h1 = 4, m = 2, patch 8: windows are 32 px squares starting at 0, 16 or 32 px.
    grid = Grid(4, 2, 8)
    region = np.array([0, 4, 8, 0])
    bbox = np.array([[2, 3, 30, 32],      # inside window 0 (max edges exclusive: 32 fits)
                     [16, 16, 48, 48],    # exactly window 4
                     [30, 30, 60, 64],    # window 8 is [32, 64): starts 2 px too late
                     [20, 10, 44, 20]])   # y up to 44 is outside window 0
    np.testing.assert_array_equal(grid.contains(region, bbox), [True, True, False, False])
    # Box 2 spans y 30..60: a window starting at 16 ends at 48, one at 32 starts too late.
    # Box 3 fits window 3 (y 16..48, x 0..32).
    np.testing.assert_array_equal(grid.any_window_contains(bbox), [True, True, False, True])
    # The centre rule is looser: box 2's centre (45, 47) lies in window 8.
    assert grid.centre_hits(region, bbox).tolist() == [True, True, True, False]
    np.testing.assert_array_equal(grid.region_boxes(np.array([0, 5, 8])),
                                  [[0, 0, 32, 32], [16, 32, 48, 64], [32, 32, 64, 64]])
