"""The threshold sweep equals a direct computation on stored softmaxes."""
import numpy as np
import pytest

from lfvit_jax.tasks import sweep

GFLOPS = {"stage1_gflops": 1.1, "stage12_gflops": 3.8}


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def stored():
    rng = np.random.default_rng(0)
    n, c = 103, 10
    labels = rng.integers(0, c, n)
    loc = softmax(rng.normal(size=(n, c)) * 3 + 2 * np.eye(c)[labels])
    focus = softmax(rng.normal(size=(n, c)) * 3 + 4 * np.eye(c)[labels])
    mask = np.ones(n, bool)
    mask[-7:] = False  # padding of the last batch
    return loc, focus, labels, mask


def test_rows_equal_direct_computation(stored):
    loc, focus, labels, mask = stored
    rows = sweep.threshold_sweep(loc, focus, labels, mask, GFLOPS, deit_gflops=4.6)
    lv, fv, yv = loc[:96], focus[:96], labels[:96]
    for r in rows:
        exit_ = [lv[i].max() >= r["eta"] for i in range(96)]
        pred = [lv[i].argmax() if exit_[i] else fv[i].argmax() for i in range(96)]
        frac = sum(exit_) / 96
        assert r["top1"] == pytest.approx(np.mean(np.array(pred) == yv))
        assert r["exit_fraction"] == pytest.approx(frac)
        assert r["gflops"] == pytest.approx(frac * 1.1 + (1 - frac) * 3.8)
        assert r["reduction"] == pytest.approx(1 - r["gflops"] / 4.6)
        assert r["exited_correct"] + r["exited_wrong"] == sum(exit_)
        assert r["exited_correct"] + r["focus_correct"] == sum(np.array(pred) == yv)
        assert sum(r[k] for k in ("exited_correct", "exited_wrong", "focus_correct",
                                  "focus_wrong")) == 96
    by_eta = {r["eta"]: r for r in rows}
    assert by_eta[0.0]["exit_fraction"] == 1.0 and by_eta[0.0]["gflops"] == pytest.approx(1.1)
    assert by_eta[1.0]["top1"] == pytest.approx(np.mean(fv.argmax(1) == yv))


def test_match_baseline_picks_the_cheapest_row(stored):
    loc, focus, labels, mask = stored
    rows = sweep.threshold_sweep(loc, focus, labels, mask, GFLOPS)
    target = float(np.median([r["top1"] for r in rows]))
    best = sweep.match_baseline(rows, target)
    assert best["top1"] >= target
    assert all(r["gflops"] >= best["gflops"] for r in rows if r["top1"] >= target)
    assert sweep.match_baseline(rows, 1.01) is None


def test_table(stored):
    loc, focus, labels, mask = stored
    rows = sweep.threshold_sweep(loc, focus, labels, mask, GFLOPS, deit_gflops=4.6)
    table = sweep.format_table(rows)
    assert len(table.splitlines()) == len(rows) + 1 and "0.76" in table


def test_all_padding_is_an_error(stored):
    loc, focus, labels, mask = stored
    with pytest.raises(ValueError, match="No evaluation examples"):
        sweep.threshold_sweep(loc, focus, labels, np.zeros_like(mask), GFLOPS)
