"""The loss against numpy, gradient flow through the fusion path, and the DeiT recipe pieces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfvit_jax.tasks import objective
from lfvit_jax.training import optim
from lfvit_jax import tasks
from train_fakes import tiny_config


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_matches_numpy_ce_plus_kl():
    rng = np.random.default_rng(0)
    focus, loc = rng.normal(size=(2, 6, 5)) * 3
    targets = rng.dirichlet(np.ones(5), size=6)
    task = tasks.build(tiny_config().model)
    out = {"focus_logits": jnp.asarray(focus), "loc_logits": jnp.asarray(loc)}
    total, terms = task.loss(out, jnp.asarray(targets))
    ce = -np.mean(np.sum(targets * np_log_softmax(focus), -1))
    lp_f, lp_l = np_log_softmax(focus), np_log_softmax(loc)
    kl = np.mean(np.sum(np.exp(lp_f) * (lp_f - lp_l), -1))
    np.testing.assert_allclose(terms["ce"], ce, rtol=1e-6)
    np.testing.assert_allclose(terms["kl"], kl, rtol=1e-6)
    np.testing.assert_allclose(total, ce + kl, rtol=1e-6)
    total, terms = task.loss(out, jnp.asarray(targets), loss="ce_ce")
    loc_ce = -np.mean(np.sum(targets * lp_l, -1))
    np.testing.assert_allclose(total, ce + loc_ce, rtol=1e-6)
    with pytest.raises(ValueError, match="ce_kl"):
        task.loss(out, jnp.asarray(targets), loss="kl_only")


def test_kl_teacher_is_stop_gradient():
    focus, loc = jnp.array([[1.0, 2.0, 0.5]]), jnp.array([[0.3, -1.0, 2.0]])
    g_focus = jax.grad(lambda f: objective.distill_kl(f, loc))(focus)
    g_loc = jax.grad(lambda l: objective.distill_kl(focus, l))(loc)
    np.testing.assert_array_equal(g_focus, 0.0)
    # d KL / d student logits = softmax(student) - softmax(teacher)
    np.testing.assert_allclose(g_loc, jax.nn.softmax(loc) - jax.nn.softmax(focus), rtol=1e-6)


def test_focus_loss_reaches_localization_stage_through_fusion():
    """pos_embed_list_0 is used only by stage 1; in the whole-image phase the focus CE reaches
    it only through the reuse block (fusion)."""
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    targets = jax.nn.one_hot(jnp.array([0, 3]), 4)
    grads = {}
    for fusion in (True, False):
        cfg = tiny_config().model
        cfg.update(fusion=fusion, reuse_tokens=False, drop_path=0.0)
        task = tasks.build(cfg)
        params = jax.jit(task.init_params)(jax.random.key(0))

        def focus_ce(p):
            out = task.forward(p, images, train=True, phase="whole")
            return objective.soft_cross_entropy(out["focus_logits"], targets)
        grads[fusion] = jax.jit(jax.grad(focus_ce))(params)
    assert float(jnp.abs(grads[True]["pos_embed_list_0"]).max()) > 1e-6
    assert float(jnp.abs(grads[True]["reuse_block_1"]["fc1"]["kernel"]).max()) > 1e-6
    np.testing.assert_array_equal(grads[False]["pos_embed_list_0"], 0.0)


def test_weight_decay_mask_and_schedule():
    cfg = tiny_config(batch_size=1024, lr=5e-4)
    params = jax.eval_shape(tasks.build(cfg.model).init_params, jax.random.key(0))
    mask = optim.decay_mask(params)
    assert mask["blocks_0"]["attn"]["qkv"]["kernel"] and mask["pos_embed_list_0"]
    assert not mask["cls_token"] and not mask["blocks_0"]["attn"]["qkv"]["bias"]
    assert not mask["blocks_0"]["norm1"]["scale"]
    lr = optim.schedule(cfg, total_steps=100, warmup_steps=10)
    assert optim.peak_lr(cfg) == pytest.approx(1e-3)  # 5e-4 * 1024 / 512
    np.testing.assert_allclose([lr(0), lr(10), lr(100)], [1e-6, 1e-3, 1e-5], rtol=1e-5)
    np.testing.assert_allclose(lr(55), 1e-5 + (1e-3 - 1e-5) / 2, rtol=1e-4)  # cosine midpoint
