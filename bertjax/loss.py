"""Losses and metrics as global sums, in f32.

Every function returns sums (never means) so that a global batch split into micro-batches, or
across devices and hosts, is normalised exactly once by the global count. Weights are explicit
arrays (1 = a real prediction, 0 = a padding slot); there are no -100 sentinels.
"""

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int


def mlm_sums(logits: Float[Array, "batch preds vocab"], labels: Int[Array, "batch preds"],
             weights: Float[Array, "batch preds"]) -> dict[str, jax.Array]:
    """Summed cross-entropy, correct predictions (the label's logit is the largest; a tie
    counts as correct) and weight over the predicted positions."""
    logits = logits.astype(jnp.float32)
    ce, label_logit, top = vocab_cross_entropy(logits, labels)
    correct = (label_logit >= top).astype(jnp.float32)
    return {"mlm_loss": jnp.sum(ce * weights), "mlm_correct": jnp.sum(correct * weights),
            "mlm_weight": jnp.sum(weights)}


def pair_sums(logits: Float[Array, "batch 2"], labels: Int[Array, " batch"],
              weights: Float[Array, " batch"]) -> dict[str, jax.Array]:
    """NSP / SOP: summed cross-entropy and correct predictions over the weighted rows."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"pair_loss": jnp.sum(ce * weights), "pair_correct": jnp.sum(correct * weights),
            "pair_weight": jnp.sum(weights)}


def classification_sums(logits: Float[Array, "batch labels"], labels: Array,
                        weights: Float[Array, " batch"]) -> dict[str, jax.Array]:
    """GLUE: cross-entropy for classes, squared error for a single regression output."""
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        per_row = jnp.square(logits[:, 0] - labels.astype(jnp.float32))
    else:
        per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {"loss": jnp.sum(per_row * weights), "weight": jnp.sum(weights)}


def safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, 0 where den is 0 (e.g. a batch with no NSP rows)."""
    return jnp.where(den > 0, num / jnp.maximum(den, 1e-9), 0.0)


# The MLM loss reads [masked rows, vocab] logits, the largest tensor of a step's head. Autodiff's
# gradient of optax's cross-entropy wrote softmax * g, then scattered -g at the labels (two more
# passes over the logits) and an argmax read them once more (log.md, session 45). Here the
# forward reads them twice (max, then sum of exp with the label's logit) and the backward once,
# writing the gradient in the same pass.
@jax.custom_vjp
def vocab_cross_entropy(logits: Float[Array, "*rows vocab"], labels: Int[Array, "*rows"]
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per row (f32 logits): cross-entropy, the label's logit and the largest logit. Only the
    cross-entropy is differentiable."""
    ce, label_logit, top, _ = _cross_entropy_parts(logits, labels)
    return ce, label_logit, top


def _cross_entropy_parts(logits, labels):
    top = jnp.max(logits, axis=-1, keepdims=True)
    # log of the softmax's denominator, relative to the largest logit (precise where logits are
    # large): log_softmax = logits - top - log_sum.
    log_sum = jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True))
    label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)
    ce = top + log_sum - label_logit
    return ce[..., 0], label_logit[..., 0], top[..., 0], log_sum


def _cross_entropy_fwd(logits, labels):
    ce, label_logit, top, log_sum = _cross_entropy_parts(logits, labels)
    return (ce, label_logit, top), (logits, labels, top[..., None], log_sum)


def _cross_entropy_bwd(saved, cotangents):
    logits, labels, top, log_sum = saved
    vocab = jax.lax.broadcasted_iota(labels.dtype, logits.shape, logits.ndim - 1)
    one_hot = (vocab == labels[..., None]).astype(logits.dtype)
    softmax = jnp.exp(logits - top - log_sum)
    return (softmax - one_hot) * cotangents[0][..., None], None


vocab_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)
