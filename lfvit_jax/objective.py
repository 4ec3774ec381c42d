"""The training objective (algorithm doc, section 10) and the per-model forward pass.

LF-ViT: soft-target cross-entropy on the focus output plus KL(stop-gradient p_focus || p_loc), the
focus stage acting as the localization stage's teacher; `loss='ce_ce'` is the paper's ablation
that replaces the KL term with a second cross-entropy on the localization output. DeiT: soft-target
cross-entropy on its logits.
"""
import jax
import jax.numpy as jnp

LOSSES = ("ce_kl", "ce_ce")


def soft_cross_entropy(logits, targets):
    """Mean over the batch of -sum(t * log_softmax(logits)); targets are (B, classes) soft labels."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(targets * logp, axis=-1))


def distill_kl(teacher_logits, student_logits):
    """KL(softmax(teacher) || softmax(student)), teacher under stop-gradient, mean over the batch."""
    teacher = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    logp_t = jax.nn.log_softmax(teacher, axis=-1)
    logp_s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1))


def is_lfvit(model):
    return hasattr(model, "region_size")


def forward(model, params, images, *, train, focus="region", rng=None):
    """Runs either model; returns its output dict (LF-ViT's, or DeiT's {'logits'})."""
    rngs = {"dropout": rng} if rng is not None else {}
    if is_lfvit(model):
        return model.apply({"params": params}, images, train=train, focus=focus, rngs=rngs)
    return model.apply({"params": params}, images, train=train, rngs=rngs)


def loss_terms(model, out, targets, loss="ce_kl"):
    """(total loss, dict of named terms) for one model output and soft targets."""
    if not is_lfvit(model):
        ce = soft_cross_entropy(out["logits"], targets)
        return ce, {"ce": ce}
    if loss not in LOSSES:
        raise ValueError(f"config.loss={loss!r} is not one of {LOSSES}.")
    ce = soft_cross_entropy(out["focus_logits"], targets)
    if loss == "ce_kl":
        second = {"kl": distill_kl(out["focus_logits"], out["loc_logits"])}
    else:
        second = {"loc_ce": soft_cross_entropy(out["loc_logits"], targets)}
    total = ce + sum(second.values())
    return total, {"ce": ce, **second}
