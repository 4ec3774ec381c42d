"""DeiT's optimizer: AdamW with a weight-decay mask, linear warm-up then cosine, stepped per update."""
import optax
from flax import traverse_util

# Parameters DeiT does not decay besides 1-D ones (biases, norm scales). The release decays both
# positional embeddings (they are not on timm's no_weight_decay list there), so they stay decayed.
NO_DECAY_NAMES = ("cls_token",)


def peak_lr(config):
    """DeiT's linear scaling rule: lr * global batch / 512."""
    return config.lr * config.batch_size / 512


def schedule(config, total_steps, warmup_steps):
    """warmup_lr -> peak over `warmup_steps`, then cosine to min_lr at `total_steps`."""
    peak = peak_lr(config)
    return optax.warmup_cosine_decay_schedule(
        init_value=config.warmup_lr, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=config.min_lr)


def decay_mask(params):
    """True where weight decay applies: matrices and embeddings, not biases, norms or cls token."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {path: p.ndim > 1 and path[-1] not in NO_DECAY_NAMES for path, p in flat.items()})


def optimizer(config, total_steps, warmup_steps):
    return optax.adamw(schedule(config, total_steps, warmup_steps), b1=0.9, b2=0.999,
                       eps=config.adam_eps, weight_decay=config.wd, mask=decay_mask)
