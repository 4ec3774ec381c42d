"""DeiT's optimizer as the release runs it: torch.optim.AdamW over timm's two weight-decay groups,
its learning rate from timm 0.4.5's cosine scheduler stepped once per epoch (or, as an option,
the same curve per update)."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from lfvit_jax.core.errors import UsageError

# Parameters DeiT does not decay besides 1-D ones (biases, norm scales). The release decays both
# positional embeddings (they are not on timm's no_weight_decay list there), so they stay decayed.
NO_DECAY_NAMES = ("cls_token",)
LR_SCHEDULES = ("epoch", "step")
BETAS = (0.9, 0.999)


def peak_lr(config):
    """DeiT's linear scaling rule: lr * global batch / 512."""
    return config.lr * config.batch_size / 512


def timm_cosine(config, epoch):
    """timm's CosineLRScheduler value at `epoch` as the release sets it up (t_initial = the run's
    epochs, cycle_limit 1, warm-up not a prefix: the cosine runs from epoch 0, not from the end
    of the warm-up, and its first epochs are replaced by the linear warm-up)."""
    peak, total = peak_lr(config), config.total_epochs
    # timm's 0.5 (1 + cos(pi t / T)), written as sin^2(pi (T - t) / 2T): in float32, 1 + cos
    # loses the last epochs' small values to cancellation.
    half_cos = jnp.sin(jnp.pi * (total - epoch) / (2 * total)) ** 2
    value = config.min_lr + (peak - config.min_lr) * half_cos
    value = jnp.where(epoch < total, value, config.min_lr)
    if config.warmup_epochs > 0:
        warm = config.warmup_lr + epoch * (peak - config.warmup_lr) / config.warmup_epochs
        value = jnp.where(epoch < config.warmup_epochs, warm, value)
    return value


def schedule(config, steps_per_epoch):
    """The learning rate of update `step` (0-based), `steps_per_epoch` updates an epoch.

    'epoch' (the release): the scheduler is stepped after each epoch e with e, so epoch 0 runs at
    the value it starts with (warmup_lr; the peak without warm-up) and epoch e >= 1 at the value
    for e - 1: epochs 0 and 1 both at warmup_lr. 'step' (ours): the same curve at the update's
    fractional epoch, without the staircase and its one-epoch lag.
    """
    if config.lr_schedule not in LR_SCHEDULES:
        raise UsageError(f"config.lr_schedule={config.lr_schedule!r} is not one of "
                         f"{LR_SCHEDULES}.")
    if config.lr_schedule == "step":
        return lambda step: timm_cosine(config, jnp.asarray(step, jnp.float32) / steps_per_epoch)
    first = config.warmup_lr if config.warmup_epochs > 0 else peak_lr(config)

    def lr(step):
        epoch = jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch)
        return jnp.where(epoch < 1, first, timm_cosine(config, epoch - 1))
    return lr


def decay_mask(params):
    """True where weight decay applies: matrices and embeddings, not biases, norms or cls token."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {path: p.ndim > 1 and path[-1] not in NO_DECAY_NAMES for path, p in flat.items()})


class AdamWState(NamedTuple):
    step: jax.Array  # updates so far: the learning rate's clock
    count: Any  # per parameter, as torch keeps it: the updates that parameter took part in
    mu: Any
    nu: Any


def optimizer(config, lr_fn):
    """torch.optim.AdamW (betas 0.9/0.999, decoupled decay lr * wd) with a step count per parameter.

    `update(grads, state, params, idle=())` leaves the top-level parameters named in `idle` alone,
    as torch does with a parameter whose .grad is None (one the phase's loss does not reach): no
    decay, no moment update, and its bias correction starts at its own first gradient.
    """
    b1, b2 = BETAS

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)
        return AdamWState(step=jnp.zeros((), jnp.int32),
                          count=jax.tree.map(lambda _: jnp.zeros((), jnp.int32), params),
                          mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

    def update(grads, state, params, idle=()):
        lr = lr_fn(state.step)
        flat = [traverse_util.flatten_dict(t) for t in (grads, state.count, state.mu, state.nu,
                                                         params, decay_mask(params))]
        out = ({}, {}, {}, {})  # updates, count, mu, nu
        for path in flat[0]:
            g, n, m, v, p, decay = (t[path] for t in flat)
            if path[0] in idle:
                new = (jnp.zeros_like(p), n, m, v)
            else:
                n = n + 1
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                m_hat = m / (1 - b1 ** n.astype(jnp.float32))
                v_hat = v / (1 - b2 ** n.astype(jnp.float32))
                u = m_hat / (jnp.sqrt(v_hat) + config.adam_eps)
                new = (-lr * (u + config.wd * p if decay else u), n, m, v)
            for tree, value in zip(out, new):
                tree[path] = value
        updates, count, mu, nu = map(traverse_util.unflatten_dict, out)
        return updates, AdamWState(step=state.step + 1, count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init, update)
