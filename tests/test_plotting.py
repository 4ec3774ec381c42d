"""The figures draw what they claim: boxes at the region's pixels, the refined patches, the counts."""
import jax.numpy as jnp
import numpy as np
import pytest

from lfvit_jax.evaluation import plotting
from lfvit_jax.models import selection
from lfvit_jax.tasks import sweep
from lfvit_jax.models.geometry import Grid


def test_region_and_tokens_match_the_selection():
    h1, m, patch = 4, 2, 8  # 64 px image: 4x4 coarse grid of 16 px, 8x8 fine grid of 8 px
    rng = np.random.default_rng(0)
    gca = jnp.asarray(rng.random((1, h1 * h1)), jnp.float32)
    grid = Grid(h1, m, patch)
    region = selection.choose_region(gca, grid)
    sel = selection.select_tokens(gca, region, grid, k=3)
    fine = np.asarray(sel["fine"][0])

    box = grid.region_boxes(np.asarray(region))[0]
    fig = plotting.new_figure(3, 3)
    ax = fig.add_subplot()
    image = rng.random((64, 64, 3))
    drawn = plotting.draw_region_and_tokens(ax, image, box, fine, patch)
    rect = drawn["region"]
    assert rect.get_xy() == (box[1], box[0])
    assert (rect.get_width(), rect.get_height()) == (box[3] - box[1], box[2] - box[0])
    # The kept-token mask is exactly the selected fine indices, and the wash is clear there.
    assert set(np.flatnonzero(drawn["mask"])) == set(fine.tolist())
    wash = ax.images[1].get_array()
    np.testing.assert_array_equal(wash[..., 3] == 0, drawn["mask"])
    assert ax.images[0].get_extent() == [0, 64, 64, 0]  # pixel coordinates, y down


def test_fine_children_by_hand():
    # Coarse token 5 on a 4x4 grid is (1, 1): its children on the 8x8 grid are (2..3, 2..3).
    grid = Grid(4, 2, 8)
    np.testing.assert_array_equal(grid.fine_children(np.array([5])), [18, 19, 26, 27])
    np.testing.assert_array_equal(grid.fine_children(np.array([[0], [15]])),
                                  [[0, 1, 8, 9], [54, 55, 62, 63]])


@pytest.fixture
def rows():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 60)
    loc = rng.dirichlet(np.ones(5), 60)
    focus = rng.dirichlet(np.ones(5) * 0.3, 60)
    return sweep.threshold_sweep(loc, focus, labels, np.ones(60, bool),
                                 {"stage1_gflops": 1.0, "stage12_gflops": 3.0}, 4.0,
                                 (0.0, 0.3, 0.5, 0.8, 1.0))


def test_stage_counts_bars_are_the_counts(rows):
    fig = plotting.new_figure(4, 3)
    bars = plotting.stage_counts(fig.add_subplot(), rows)
    bottom = np.zeros(len(rows))
    for key in plotting.STAGE_COLOURS:
        heights = [b.get_height() for b in bars[key]]
        np.testing.assert_array_equal(heights, [r[key] for r in rows])
        np.testing.assert_array_equal([b.get_y() for b in bars[key]], bottom)
        bottom += heights
    np.testing.assert_array_equal(bottom, 60)  # every image is decided by exactly one stage


def test_budget_curve_points(rows, tmp_path):
    fig = plotting.new_figure(4, 3)
    line = plotting.budget_curve(fig.add_subplot(), rows, baseline=(4.0, 0.5, "DeiT"))
    order = sorted(rows, key=lambda r: r["gflops"])
    np.testing.assert_allclose(line.get_xdata(), [r["gflops"] for r in order])
    np.testing.assert_allclose(line.get_ydata(), [100 * r["top1"] for r in order])
    for make in (plotting.budget_curve_figure, plotting.stage_counts_figure):
        path = tmp_path / f"{make.__name__}.png"
        make(rows).savefig(str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlays_figure_and_to_display():
    images = [plotting.to_display(np.full((64, 64, 3), v), (0.5,) * 3, (0.5,) * 3)
              for v in (-1.0, 0.0, 3.0)]
    assert images[0].max() == 0.0 and images[1].min() == 0.5 and images[2].min() == 1.0
    boxes = [(0, 0, 32, 32), (16, 16, 48, 48), (32, 0, 64, 32)]
    fig = plotting.overlays_figure(images, boxes, [np.arange(4)] * 3, 8, titles=["a", "b", "c"],
                                   truth_boxes=[(1, 2, 3, 4)] * 3, ncols=2)
    axes = fig.axes
    assert len(axes) == 4 and not axes[3].axison
    for ax, box in zip(axes, boxes):
        region, truth = ax.patches
        assert region.get_xy() == (box[1], box[0]) and truth.get_xy() == (2, 1)
