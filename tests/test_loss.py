"""Losses: the MLM cross-entropy's written-out gradient and the sums the steps normalise."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax.loss import mlm_sums, vocab_cross_entropy
from tests.test_model import equations


def test_vocab_cross_entropy_and_its_gradient_equal_optaxs():
    """Values, the label's logit, the largest logit, and the gradient (for any cotangent of
    the cross-entropy) are those of optax's cross-entropy differentiated automatically, also
    where logits are large (the max is subtracted before exp)."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    logits = 4 * jax.random.normal(k1, (3, 4, 53)) + jnp.array([0.0, 0.0, 300.0])[:, None, None]
    labels = jax.random.randint(k2, (3, 4), 0, 53)
    cotangent = jax.random.normal(k3, (3, 4))

    (ce, label_logit, top), vjp = jax.vjp(lambda x: vocab_cross_entropy(x, labels), logits)
    ref_ce, ref_vjp = jax.vjp(
        lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels), logits)
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(label_logit, jnp.take_along_axis(logits, labels[..., None],
                                                                   -1)[..., 0])
    np.testing.assert_array_equal(top, logits.max(-1))
    zeros = jnp.zeros_like(cotangent)
    (got,) = vjp((cotangent, zeros, zeros))
    (want,) = ref_vjp(cotangent)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_mlm_losss_gradient_holds_no_scatter():
    """The backward pass compares each vocabulary index with the label instead of
    scatter-adding at it: one pass over the [rows, vocab] logits, not three (log.md, session
    45)."""
    logits = jnp.zeros((2, 3, 11))
    labels = jnp.array([[1, 2, 3], [4, 5, 6]])

    def loss(x):
        return mlm_sums(x, labels, jnp.ones((2, 3)))["mlm_loss"]

    jaxpr = jax.make_jaxpr(jax.grad(loss))(logits).jaxpr
    assert equations(jaxpr, "scatter-add") == []
    assert equations(jax.make_jaxpr(jax.grad(
        lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels).sum()))(
            logits).jaxpr, "scatter-add")  # what it replaced had one


def test_mlm_sums_count_a_prediction_correct_when_its_label_has_the_largest_logit():
    logits = jnp.array([[[0.0, 2.0, 1.0], [3.0, 3.0, 0.0], [1.0, 0.0, 5.0]]])
    labels = jnp.array([[1, 1, 0]])  # largest; tied for largest; not largest
    sums = mlm_sums(logits, labels, jnp.array([[1.0, 1.0, 1.0]]))
    assert float(sums["mlm_correct"]) == 2.0
    assert float(sums["mlm_weight"]) == 3.0
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    np.testing.assert_allclose(sums["mlm_loss"], expected, rtol=1e-6)
    weighted = mlm_sums(logits, labels, jnp.array([[1.0, 0.0, 0.0]]))
    assert float(weighted["mlm_correct"]) == 1.0
