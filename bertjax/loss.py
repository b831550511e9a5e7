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
    """Summed cross-entropy, correct predictions and weight over the predicted positions."""
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
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
