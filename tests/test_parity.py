"""LF-ViT against vectors produced by the official PyTorch release (tests/testdata)."""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfvit_jax import load_pretrained
from lfvit_jax.models.resize import resize_align_corners

from conftest import first_fast

DATA = os.path.join(os.path.dirname(__file__), "testdata")
DUMPS = ("tiny_7x7_m5_stress", "tiny_7x7_m4", "tiny_9x9_m6")


def load_dump(name):
    with np.load(os.path.join(DATA, name, "reference.npz")) as f:
        ref = {k: f[k] for k in f.files}
    model, variables = load_pretrained(os.path.join(DATA, name, "weights.npz"), num_heads=3,
                                       region_size=int(ref["region_size"]))
    return model, variables, ref


@pytest.fixture(scope="module", params=first_fast(DUMPS))
def dump(request):
    model, variables, ref = load_dump(request.param)
    images = ref["input_full"].transpose(0, 2, 3, 1)
    out, state = jax.jit(lambda v, x, t: model.apply(v, x, threshold=t, mutable="intermediates"))(
        variables, images, ref["threshold"])
    return model, ref, jax.tree_util.tree_map(np.asarray, out), state


def test_resize_matches_reference():
    with np.load(os.path.join(DATA, "tiny_9x9_m6", "reference.npz")) as f:
        full, loc = f["input_full"], f["input_loc"]
    ours = resize_align_corners(jnp.asarray(full.transpose(0, 2, 3, 1)), loc.shape[-1])
    np.testing.assert_allclose(np.asarray(ours), loc.transpose(0, 2, 3, 1), atol=1e-6, rtol=0)


def test_logits(dump):
    _, ref, out, _ = dump
    # 1e-5 is tighter than the 1e-4 the issue asks: it separates tanh-GELU and LayerNorm mistakes.
    np.testing.assert_allclose(out["loc_logits"], ref["loc_logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["focus_logits"], ref["focus_logits"], atol=1e-5, rtol=0)


def test_gca_and_selection(dump):
    _, ref, out, _ = dump
    np.testing.assert_allclose(out["gca"], ref["gca_cls_attn"], rtol=1e-5, atol=0)
    np.testing.assert_array_equal(out["region"], ref["region_index"])
    # Same tokens in the same (descending gca) order, and the same fine children layout.
    np.testing.assert_array_equal(out["coarse_index"], ref["topk_coarse_idx"])
    np.testing.assert_array_equal(out["fine_index"], ref["focus_fine_idx"])


def test_focus_sequence_is_the_release_order(dump):
    _, ref, _, state = dump
    tokens = np.asarray(state["intermediates"]["focus_tokens"][0])
    np.testing.assert_allclose(tokens, ref["focus_tokens_in"], atol=2e-5, rtol=0)


def test_exit_decisions(dump):
    _, ref, out, _ = dump
    np.testing.assert_array_equal(out["exited"], ref["exit_at_loc"])
    np.testing.assert_allclose(out["logits"], ref["final_logits"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out["logits"].argmax(-1), ref["final_pred"])


@pytest.mark.slow
def test_jitted_forward_compiles_once_per_shape():
    model, variables, ref = load_dump("tiny_7x7_m4")
    images = ref["input_full"].transpose(0, 2, 3, 1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(v, x, t):
        return model.apply(v, x, threshold=t)["logits"]

    # New data and threshold, same shapes: no retrace. eta=0 exits everything, eta=1 nothing.
    all_exit = forward(variables, images, 0.0)
    none_exit = forward(variables, images[::-1], 1.0)[::-1]
    np.testing.assert_allclose(np.asarray(all_exit), ref["loc_logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(none_exit), ref["focus_logits"], atol=1e-5, rtol=0)
    chex.clear_trace_counter()
