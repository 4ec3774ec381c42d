"""The loss against numpy, gradient flow through the fusion path, and the DeiT recipe pieces."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


@pytest.mark.slow
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


def test_weight_decay_mask():
    cfg = tiny_config()
    params = jax.eval_shape(tasks.build(cfg.model).init_params, jax.random.key(0))
    mask = optim.decay_mask(params)
    assert mask["blocks_0"]["attn"]["qkv"]["kernel"] and mask["pos_embed_list_0"]
    assert not mask["cls_token"] and not mask["blocks_0"]["attn"]["qkv"]["bias"]
    assert not mask["blocks_0"]["norm1"]["scale"]


def timm_lr(t, peak=1e-3, warmup_lr=1e-6, min_lr=1e-5, warmup=5, total=300):
    """timm 0.4.5 CosineLRScheduler._get_lr(t) as the release builds it (t_initial = epochs,
    t_mul 1, decay_rate 0.1 unused in the first cycle, cycle_limit 1, warmup_prefix False)."""
    if t < warmup:
        return warmup_lr + t * (peak - warmup_lr) / warmup
    if t >= total:  # cycle 1 is past the cycle limit
        return min_lr
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t / total))


def test_lr_per_epoch_as_the_release():
    """main_deit.py: the scheduler's constructor sets warmup_lr; after epoch e it runs
    lr_scheduler.step(e). 3 updates an epoch here; every update of epochs 0-7 and 298-299."""
    cfg = tiny_config(batch_size=1024, lr=5e-4)  # peak 5e-4 * 1024 / 512
    cfg.update(total_epochs=300.0, warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5)
    assert cfg.lr_schedule == "epoch"
    lr = jax.jit(optim.schedule(cfg, steps_per_epoch=3))
    expected, current = [], 1e-6
    for epoch in range(300):
        expected += [current] * 3
        current = timm_lr(epoch)
    steps = list(range(24)) + list(range(3 * 298, 3 * 300))
    np.testing.assert_allclose([float(lr(s)) for s in steps], [expected[s] for s in steps],
                               rtol=1e-6)
    assert expected[3] == expected[5] == 1e-6 and expected[6] == timm_lr(1)


def test_lr_per_update_option():
    cfg = tiny_config(batch_size=1024, lr=5e-4, lr_schedule="step")
    cfg.update(total_epochs=300.0, warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5)
    lr = jax.jit(optim.schedule(cfg, steps_per_epoch=4))
    steps = [0, 1, 7, 19, 20, 21, 600, 1195, 1199]
    np.testing.assert_allclose([float(lr(s)) for s in steps], [timm_lr(s / 4) for s in steps],
                               rtol=1e-6)
    cfg.lr_schedule = "linear"
    with pytest.raises(ValueError, match="lr_schedule"):
        optim.schedule(cfg, 4)


def torch_adamw(params, grads_per_step, lrs, wd, decay, eps=1e-8, betas=(0.9, 0.999)):
    """torch.optim.AdamW's algorithm in numpy; a gradient of None skips the parameter."""
    b1, b2 = betas
    state = {k: dict(step=0, m=np.zeros_like(p), v=np.zeros_like(p)) for k, p in params.items()}
    params = {k: p.astype(np.float64) for k, p in params.items()}
    for grads, lr in zip(grads_per_step, lrs):
        for k, g in grads.items():
            if g is None:
                continue
            s = state[k]
            s["step"] += 1
            params[k] = params[k] * (1 - lr * (wd if decay[k] else 0.0))
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            denom = np.sqrt(s["v"]) / math.sqrt(1 - b2 ** s["step"]) + eps
            params[k] = params[k] - lr / (1 - b1 ** s["step"]) * s["m"] / denom
    return params


@pytest.mark.slow
def test_adamw_as_torch_with_idle_parameters():
    """Two updates with `b` idle (torch: grad None), then two with every parameter: `b` is not
    decayed meanwhile and its bias correction starts at its own first step."""
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(3, 4)).astype(np.float32),
              "b": rng.normal(size=(2, 5)).astype(np.float32),
              "cls_token": rng.normal(size=(1, 1, 4)).astype(np.float32),
              "bias": rng.normal(size=(4,)).astype(np.float32)}
    grads = [{k: rng.normal(size=p.shape).astype(np.float32) for k, p in params.items()}
             for _ in range(4)]
    cfg = tiny_config(wd=0.05, adam_eps=1e-8)
    lrs = [1e-2, 2e-2, 3e-2, 4e-2]
    tx = optim.optimizer(cfg, lambda step: jnp.asarray(lrs)[step])
    state, ours = tx.init(params), dict(params)
    for i, g in enumerate(grads):
        updates, state = tx.update(g, state, ours, idle=("b",) if i < 2 else ())
        ours = optax.apply_updates(ours, updates)
    if_idle = [dict(g, b=None) if i < 2 else g for i, g in enumerate(grads)]
    want = torch_adamw(params, if_idle, lrs, 0.05,
                       decay={"a": True, "b": True, "cls_token": False, "bias": False})
    for k in params:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert int(state.count["b"]) == 2 and int(state.count["a"]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("whole_pos_embed,fusion", [(False, True), (True, True), (False, False)])
def test_idle_parameters_are_those_without_gradient(whole_pos_embed, fusion):
    cfg = tiny_config().model
    cfg.update(whole_pos_embed=whole_pos_embed, fusion=fusion, drop_path=0.0)
    task = tasks.build(cfg)
    params = jax.jit(task.init_params)(jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    targets = jax.nn.one_hot(jnp.array([0, 3]), 4)
    for phase in ("whole", "region"):
        def loss(p):
            return task.loss(task.forward(p, images, train=True, phase=phase), targets)[0]
        grads = jax.jit(jax.grad(loss))(params)
        zero = {k for k, g in grads.items()
                if all(not np.any(np.asarray(x)) for x in jax.tree.leaves(g))}
        assert zero == set(task.idle_params(phase)), phase
