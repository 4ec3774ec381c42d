"""LF-ViT's ablation switches, resolutions, the DeiT baseline, and errors on bad input."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfvit_jax.models import geometry
from lfvit_jax.models import selection
from lfvit_jax import build_model
from lfvit_jax.models.vit import DeiT
from lfvit_jax.models.lfvit import LFViT

from conftest import zero_variables

TINY = dict(num_classes=5, width=32, depth=4, num_heads=2, mlp_dim=64, patch=8, img_size=64,
            region_size=3)


def run(model, images, variables=None, **kwargs):
    # Jitted: run eagerly, init and apply compile one small program per operation (~15 s).
    variables = variables or jax.jit(model.init)(jax.random.key(0), images)
    out, state = jax.jit(partial(model.apply, mutable="intermediates", **kwargs))(variables,
                                                                                   images)
    return variables, out, state["intermediates"]["focus_tokens"][0]


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (3, 64, 64, 3))


@pytest.fixture(scope="module")
def base(images):
    return run(LFViT(**TINY), images)


@pytest.fixture(scope="module")
def zeros(images):
    """Parameters of the right shapes, for inputs refused before any computation."""
    return zero_variables(LFViT(**TINY), images)


@pytest.mark.slow
def test_fusion_adds_exactly_the_reuse_output(images, base):
    variables, out, _ = base
    # Zero the reuse MLP's output layer: fusion then adds nothing, as with fusion off.
    zeroed = jax.tree_util.tree_map(lambda x: x, variables)
    fc2 = zeroed["params"]["reuse_block_1"]["fc2"]
    fc2["kernel"], fc2["bias"] = jnp.zeros_like(fc2["kernel"]), jnp.zeros_like(fc2["bias"])
    _, zero_out, _ = run(LFViT(**TINY), images, zeroed)
    _, off_out, _ = run(LFViT(**TINY, fusion=False), images, variables)
    np.testing.assert_allclose(off_out["focus_logits"], zero_out["focus_logits"], atol=1e-6)
    assert np.abs(np.asarray(off_out["focus_logits"] - out["focus_logits"])).max() > 1e-5
    np.testing.assert_array_equal(off_out["loc_logits"], out["loc_logits"])


@pytest.mark.slow
def test_reuse_tokens_off_drops_only_the_coarse_tokens(images, base):
    variables, _, tokens = base
    model = LFViT(**TINY, reuse_tokens=False)
    _, _, short = run(model, images, variables)
    k = model.num_kept
    assert tokens.shape[1] == 1 + 4 * k + (16 - k) and short.shape[1] == 1 + 4 * k
    np.testing.assert_array_equal(short, tokens[:, :1 + 4 * k])


@pytest.mark.slow
@pytest.mark.parametrize("whole_pos_embed", [False, True])
def test_whole_mode_is_deit_on_the_fine_grid(images, base, whole_pos_embed):
    """Without fusion, the whole-image focus stage is a DeiT on the fine grid: without position
    embeddings as the release has it, with pos_embed_list_1 under `whole_pos_embed`."""
    variables, _, _ = base
    params = dict(variables["params"])
    model = LFViT(**TINY, fusion=False, whole_pos_embed=whole_pos_embed)
    _, out, tokens = run(model, images, variables, focus="whole")
    assert tokens.shape[1] == 1 + 64
    pos = params.pop("pos_embed_list_1")
    params["pos_embed"] = pos if whole_pos_embed else jnp.zeros_like(pos)
    del params["pos_embed_list_0"], params["reuse_block_0"], params["reuse_block_1"]
    deit = DeiT(**{k: v for k, v in TINY.items() if k != "region_size"})
    logits = deit.apply({"params": params}, images)["logits"]
    np.testing.assert_allclose(out["focus_logits"], logits, atol=1e-5)
    # The region phase adds the position embeddings either way.
    _, region, _ = run(LFViT(**TINY, whole_pos_embed=whole_pos_embed), images, variables)
    np.testing.assert_array_equal(region["focus_logits"], base[1]["focus_logits"])


@pytest.mark.slow
@pytest.mark.parametrize("method", selection.REGION_METHODS)
def test_region_methods_in_the_model(images, base, method):
    variables, _, _ = base
    _, out, tokens = run(LFViT(**TINY, region_method=method), images, variables,
                         rngs={"region": jax.random.key(5)})
    gca = np.asarray(out["gca"])
    scores = np.asarray(selection.window_scores(out["gca"], geometry.Grid(4, 3, 8)))
    region = np.asarray(out["region"])
    if method == "ngca":
        np.testing.assert_array_equal(region, scores.argmax(1))
    elif method == "negative_ngca":
        np.testing.assert_array_equal(region, scores.argmin(1))
    elif method in ("max_gca", "min_gca"):  # the extreme token lies inside the chosen window
        t = gca.argmax(1) if method == "max_gca" else gca.argmin(1)
        i, j = region // 2, region % 2
        r, c = t // 4, t % 4
        assert ((r >= i) & (r < i + 3) & (c >= j) & (c < j + 3)).all()
    else:
        assert ((region >= 0) & (region < 4)).all()
    assert tokens.shape[1] == 1 + 4 * 8 + 16 - 8


@pytest.mark.parametrize("size,m", [(64, 2), (96, 3), (160, 5), (224, 7)])
def test_any_multiple_of_twice_the_patch(size, m):
    cfg = dict(TINY, patch=16, img_size=size, region_size=m)
    model = LFViT(**cfg)
    images = jnp.ones((2, size, size, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    out = jax.eval_shape(model.apply, variables, images, threshold=0.5)
    h1 = size // 32
    assert out["gca"].shape == (2, h1 * h1)
    assert out["coarse_index"].shape == (2, model.num_kept)
    assert out["logits"].shape == (2, 5) and out["exited"].dtype == jnp.bool_


def test_build_model_from_variant():
    model = build_model({"name": "lfvit", "variant": "Ti", "num_classes": 10})
    assert (model.width, model.depth, model.num_heads, model.mlp_dim) == (192, 12, 3, 768)
    assert model.target_blocks == tuple(range(3, 12))


@pytest.mark.parametrize("change,match", [
    (dict(region_size=5), "region_size m=5 must be in"),
    (dict(alpha=0.0), "alpha=0.0 must be in"),
    (dict(alpha=1.5), "alpha=1.5 must be in"),
    (dict(img_size=72), "must be a positive multiple of 16"),
    (dict(region_method="best"), "region_method 'best'"),
    (dict(gca_blocks=(2, 9)), "gca_blocks"),
    (dict(dense_init="he"), "dense_init='he' is not one of"),
])
def test_bad_model_settings(images, change, match):
    with pytest.raises(ValueError, match=match):
        LFViT(**dict(TINY, **change)).init(jax.random.key(0), images)


@pytest.mark.parametrize("shape,match", [
    ((2, 32, 32, 3), "Expected 64x64 images, got 32x32"),
    ((2, 3, 64, 64), "3 colour channels last"),
    ((2, 64, 64, 1), "3 colour channels last"),
    ((64, 64, 3), "shape \\(B, H, W, 3\\)"),
])
def test_bad_images(zeros, shape, match):
    with pytest.raises(ValueError, match=match):
        LFViT(**TINY).apply(zeros, jnp.zeros(shape))


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_bad_threshold(images, zeros, eta):
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        LFViT(**TINY).apply(zeros, images, threshold=eta)


def test_unknown_config_key():
    with pytest.raises(ValueError, match="Unknown model config key 'regionsize'"):
        build_model({"name": "lfvit", "variant": "S", "regionsize": 4})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lfvit", "deit"])
def test_dense_init_sets_every_dense_kernel_scale(name):
    """'deit': trunc_normal(.02) (std 0.0176 after truncation at 2 sigma); 'lecun':
    std 1/sqrt(fan_in). Patch embedding, position embeddings and biases keep their own init."""
    from flax import traverse_util
    cfg = dict(TINY, name=name, width=64, mlp_dim=256)
    stds = {}
    for init in ("deit", "lecun"):
        model = build_model(dict(cfg, dense_init=init))
        params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
        stds[init] = {"/".join(k): (float(np.std(v)), v.shape[0])
                      for k, v in traverse_util.flatten_dict(params).items()
                      if k[-1] == "kernel" and "patch_embed" not in k}
    assert stds["deit"].keys() == stds["lecun"].keys()
    assert "blocks_0/attn/qkv/kernel" in stds["deit"] and "head/kernel" in stds["deit"]
    if name == "lfvit":
        assert "reuse_block_1/fc1/kernel" in stds["deit"]
    for key, (std, _) in stds["deit"].items():
        assert abs(std - 0.0176) < 0.002, key
    for key, (std, fan_in) in stds["lecun"].items():
        assert abs(std * np.sqrt(fan_in) - 1.0) < 0.12, key


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_cls_only_last_block_is_the_full_blocks_first_row(train):
    """The classifying passes run their last block for the class token only: its features,
    and their gradients, equal the full computation's first row (with drop path in training)."""
    model = DeiT(**{k: v for k, v in TINY.items() if k != "region_size"}, drop_path=0.3)
    x = jax.random.normal(jax.random.key(2), (3, 17, 32))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    rngs = {"dropout": jax.random.key(3)}

    def features(params, cls_only):
        out, _, _ = model.apply({"params": params}, x, train, cls_only=cls_only, rngs=rngs,
                                method=lambda m, *a, **k: m.encode(*a, **k))
        return out[:, 0]
    full, short = features(variables["params"], False), features(variables["params"], True)
    np.testing.assert_allclose(short, full, atol=1e-5)
    loss = lambda p, c: jnp.sum(jnp.sin(features(p, c)))
    g_full, g_short = jax.grad(loss)(variables["params"], False), jax.grad(loss)(
        variables["params"], True)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_short)):
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert short.shape == (3, 32)


@pytest.mark.slow
def test_deferred_localization_gives_the_same_outputs(images):
    """localize(defer=True) skips the last block for every token but the class token; focus
    then finishes it for the K fused tokens only. Same stage-1 outputs and focus logits as the
    full pass; 'whole' focus needs every feature and says so."""
    model = LFViT(**TINY, dense_init="lecun")
    variables = jax.jit(model.init)(jax.random.key(0), images)
    full = model.apply(variables, images, method=LFViT.localize)
    short = model.apply(variables, images, defer=True, method=LFViT.localize)
    assert short.features is None and full.features is not None
    for key, value in short.outputs().items():
        np.testing.assert_allclose(value, full.outputs()[key], atol=1e-5)
    focus = lambda loc: model.apply(variables, images, loc, method=LFViT.focus)
    np.testing.assert_allclose(focus(short), focus(full), atol=1e-5)
    kept = model.apply(variables, short.last_input, 1 + short.coarse_index,
                       method=lambda m, *a: m.finish_tokens(*a))
    np.testing.assert_allclose(kept, jnp.take_along_axis(
        full.features, 1 + short.coarse_index[:, :, None], axis=1), atol=1e-5)
    with pytest.raises(ValueError, match="without defer"):
        model.apply(variables, images, short, mode="whole", method=LFViT.focus)
