"""The losses of the training objective (algorithm doc, section 10). LF-ViT: soft-target
cross-entropy on the focus output plus KL(stop-gradient p_focus || p_loc), the focus stage teaching
the localization stage ('ce_ce', the paper's ablation, uses a second cross-entropy instead).
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
