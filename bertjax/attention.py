"""Scaled dot-product attention, and which implementation runs it: cuDNN's flash attention
(NVIDIA GPUs, bf16/fp16, padding as per-row key lengths), XLA's (`jax.nn.dot_product_attention`
with a boolean mask), or an explicit f32 softmax when attention dropout needs the probabilities.
The choice (`model.attention`: auto | xla | cudnn) is made at trace time from static facts.
"""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from bertjax.ops import dropout, einsum_f32
from bertjax.precision import nvidia_compute_capability

Heads = Float[Array, "batch seq heads head_dim"]
ATTENTION = ("auto", "xla", "cudnn")  # model.attention


@functools.cache
def warn_once(message: str) -> None:
    """A warning once per process: attention is traced again for every step and shape."""
    warnings.warn(message, stacklevel=3)


def cudnn_unsupported(dtype, head_dim: int, device=None) -> str | None:
    """Why cuDNN flash attention cannot run on `device` (default: the default device) for this
    dtype and head size, or None when it can (jax's cuDNN path raises on these; head sizes up to
    256 work on Hopper, 128 everywhere from Ampere on, and BERT's is 64)."""
    device = jax.devices()[0] if device is None else device
    capability = nvidia_compute_capability(device)
    if capability is None:
        return f"the device is {device.device_kind}, not an NVIDIA GPU"
    if capability < 8.0:
        return f"compute capability {capability} < 8.0"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"{jnp.dtype(dtype).name} compute (cuDNN flash attention takes bfloat16 or float16)"
    if head_dim % 8 or head_dim > 128:
        return f"head size {head_dim} (cuDNN flash attention here: a multiple of 8, at most 128)"
    return None


def attention_path(implementation: str, dtype, head_dim: int, dropout: bool) -> str:
    """The attention that runs, "cudnn", "xla" or "explicit", chosen at trace time from static
    facts only (model.attention, device, dtype, head size, whether dropout is on).

    "xla" always takes XLA's path; "auto" takes cuDNN's where it can run, else XLA's; "cudnn"
    the same, warning once where it cannot (a model's config travels with its checkpoints to
    machines without a GPU, e.g. for predict, so an error there would strand it). Attention
    dropout needs the probabilities, so it takes the explicit path, warning once if cuDNN's
    would have run.
    """
    if implementation not in ATTENTION:
        raise ValueError(f"attention implementation {implementation!r} is not one of {ATTENTION}")
    why_not = None if implementation == "xla" else cudnn_unsupported(dtype, head_dim)
    if implementation == "cudnn" and why_not:
        warn_once(f"model.attention=cudnn: cuDNN flash attention cannot run here ({why_not}); "
                  "XLA's attention runs instead")
    if dropout:
        if implementation != "xla" and not why_not:
            warn_once("attention dropout > 0: training steps compute attention explicitly (dropout "
                      "needs the probabilities), not with cuDNN flash attention, which runs only "
                      "without dropout (evaluation); model.attention_dropout=0 trains with it")
        return "explicit"
    return "xla" if implementation == "xla" or why_not else "cudnn"


def describe_attention(implementation: str, dtype, head_dim: int, dropout_rate: float) -> str:
    """The attention of training and evaluation steps, in words (for the run log)."""
    names = {"cudnn": "cuDNN flash attention (per-row key lengths)",
             "xla": "XLA's (jax.nn.dot_product_attention, boolean mask)",
             "explicit": f"explicit (attention dropout {dropout_rate})"}
    train = attention_path(implementation, dtype, head_dim, dropout_rate > 0)
    evaluation = attention_path(implementation, dtype, head_dim, False)
    if train == evaluation:
        return names[train]
    return f"{names[train]} in training, {names[evaluation]} in evaluation"


def key_lengths(mask: Bool[Array, "batch seq"]) -> Int[Array, " batch"]:
    """Real tokens per row of a right-padded mask, at least 1: a row of padding alone (the filler
    rows of validation and predict batches, which carry no weight) then attends to its first
    position and stays finite (no keys at all would divide by zero in the softmax)."""
    return jnp.maximum(mask.sum(axis=-1, dtype=jnp.int32), 1)


def length_attention(q: Heads, k: Heads, v: Heads, mask: Bool[Array, "batch seq"],
                     implementation: str) -> Heads:
    """`jax.nn.dot_product_attention` with the padding given as per-row key lengths, the form
    cuDNN's flash kernel takes (a boolean mask would reach cuDNN as a dense additive bias). Valid
    for right-padded masks only; every batch this project builds is one (tests/test_attention.py).
    Query lengths are not passed: padding queries then attend to the real keys, as on the mask
    path, instead of being zeroed, so both paths agree at every position."""
    with jax.numpy_dtype_promotion("standard"):  # jax promotes bf16 with f32 inside
        return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=key_lengths(mask),
                                            implementation=implementation)


def attention(q: Heads, k: Heads, v: Heads, mask: Bool[Array, "batch seq"], rate: float,
              key: PRNGKeyArray | None, implementation: str = "auto") -> Heads:
    """Scaled dot-product attention over non-pad keys, by the path `attention_path` picks:

    - "cudnn": `length_attention` through cuDNN's flash attention (no [seq, seq] logits in
      memory); needs right-padded masks.
    - "xla": `jax.nn.dot_product_attention` with the boolean mask and implementation "xla"
      (jax's default, `implementation=None`, is also XLA's on every backend: jax 0.10's source).
    - "explicit" (attention dropout: `rate` > 0 and a key): logits and softmax in f32, dropout
      on the probabilities.
    """
    path = attention_path(implementation, q.dtype, q.shape[-1], key is not None and rate > 0.0)
    if path != "cudnn" and q.dtype == jnp.float16 and jax.default_backend() == "cpu":
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]  # see einsum_f32
        return attention(*f32, mask, rate, key, "xla").astype(jnp.float16)
    with jax.named_scope("attention"):  # names its ops in profiles (bench/profile_summary.py)
        if path == "cudnn":
            return length_attention(q, k, v, mask, "cudnn")
        key_mask = mask[:, None, None, :]  # [batch, 1 (heads), 1 (queries), seq (keys)]
        if path == "xla":
            # jax's XLA attention promotes bf16 with f32 internally, which strict promotion (our
            # tests) rejects; the promotion is JAX's own and intended, so allow it here only.
            with jax.numpy_dtype_promotion("standard"):
                return jax.nn.dot_product_attention(q, k, v, mask=key_mask, implementation="xla")
        scale = 1.0 / math.sqrt(q.shape[-1])
        logits = einsum_f32("btnd,bsnd->bnts", q, k) * scale
        logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
        probs = dropout(jax.nn.softmax(logits, axis=-1), rate, key).astype(v.dtype)
        return jnp.einsum("bnts,bsnd->btnd", probs, v)
