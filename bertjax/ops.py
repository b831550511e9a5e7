"""The model's functions with hand-written gradients or GPU-minded forms, apart from the modules
that hold parameters (bertjax.layers): f32-result einsums, dropout from raw random bits, LayerNorm
and bias + GELU with written-out backward passes, embedding gathers whose gradient
scatter-adds in f32, and bias adds whose gradient sums the rows in f32. Each says what XLA did
without its form (log.md, sessions 44-46 and 54).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray


def einsum_f32(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """einsum with f32 results (accumulated in f32 on accelerators), for logits that a softmax
    reads in f32. XLA:CPU has no f16 x f16 -> f32 dot, so f16 operands are upcast there (CPU
    runs of fp16 configs are for testing)."""
    if x.dtype == jnp.float16 and jax.default_backend() == "cpu":
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return _einsum_f32(spec, x, y)


# The gradient runs in the operands' dtype, as under PyTorch's autocast. Autodiff's would pair
# the f32 cotangent with a bf16 operand, and XLA makes such a mixed dot an f32 x f32 one: for
# the MLM decoder ([masked rows, 768] x [768, 30522]) its two gradient matmuls ran in f32 and
# read the cotangent in f32 (log.md, session 45).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def _einsum_f32_fwd(spec, x, y):
    return _einsum_f32(spec, x, y), (x, y)


def _einsum_f32_bwd(spec, operands, cotangent):
    _, vjp = jax.vjp(functools.partial(jnp.einsum, spec), *operands)
    return vjp(cotangent.astype(jnp.result_type(*operands)))


_einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)

def dropout(x: jax.Array, rate: float, key: PRNGKeyArray | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None (evaluation) or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = bernoulli_from_bits(jax.random.bits(key, x.shape, jnp.uint32), 1.0 - rate)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def bernoulli_from_bits(bits: jax.Array, p: float) -> jax.Array:
    """What jax.random.bernoulli(key, p) gives for the key whose random bits are `bits`
    (uint32), draw for draw, without its uniform floats: those are clipped at a zero tensor the
    size of the draws, which XLA:GPU wrote once and read in every dropout (1.2 GB per BERT-base
    step; log.md, session 45). A uniform float is a draw's top 23 bits over 2**23, so
    `float < p` is `top bits < ceil(p * 2**23)` (p as the f32 that jax compares with)."""
    return bits >> 9 < jnp.uint32(math.ceil(float(np.float32(p)) * 2**23))

def _layer_norm_fwd(x, weight, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + eps)
    y = ((x32 - mean) * rstd * weight + bias).astype(x.dtype)
    # The barrier makes the backward pass read these two numbers per row instead of fusing
    # their reductions into its own kernels: XLA:GPU did, and the scale's gradient (a sum over
    # rows of a product that then needed sums over features) became a kernel writing an f32
    # copy of x and a second one reading it back (log.md, session 46).
    return y, (x, *jax.lax.optimization_barrier((mean, rstd)), weight)


def _layer_norm_bwd(eps, saved, dy):
    x, mean, rstd, weight = saved
    x_hat = (x.astype(jnp.float32) - mean) * rstd
    dy32 = dy.astype(jnp.float32)
    g = dy32 * weight
    dx = rstd * (g - g.mean(-1, keepdims=True) - x_hat * (g * x_hat).mean(-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    return dx.astype(x.dtype), (dy32 * x_hat).sum(rows), dy32.sum(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis with f32 statistics (bf16 variance underflows), returned in
    x's dtype; weight and bias f32. The gradient is written out so that the backward pass keeps
    only x and two f32 numbers per row: differentiated automatically it kept f32 copies of the
    centred input and moved ~4x the bytes of x in a GPU step (log.md, session 44)."""
    return _layer_norm_fwd(x, weight, bias, eps)[0]


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)

def gather_f32(table: jax.Array, index) -> jax.Array:
    """`jnp.take(table, index, axis=0)` with the gradient's scatter-add done in f32. On GPU a
    bf16 or fp16 scatter-add is a compare-and-swap loop per element: the embedding and MLM
    gathers' gradients took 198 of the 223 ms of a bf16 train step on an H100 (mini, batch 256;
    the whole f32 step: 21 ms; log.md, 2026-11-25). The f32 copy of the table costs one
    elementwise pass."""
    return jnp.take(table.astype(jnp.float32), index, axis=0).astype(table.dtype)

def _bias_gelu_fwd(h, bias, approximate):
    return jax.nn.gelu(h + bias, approximate=approximate), (h, bias)


def _gelu_slope(x, approximate):
    """d GELU(x) / dx in f32, of the exact (erf) GELU or of its tanh approximation."""
    # The tanh approximation 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715
    # x^3), is differentiated through the sigmoid: with a tanh, XLA:GPU would not fuse this into
    # the bias gradient's reduction and sent an f32 [rows, 3072] through memory (log.md,
    # session 46).
    if approximate:
        c = 2 * math.sqrt(2.0 / math.pi)
        s = jax.nn.sigmoid(c * (x + 0.044715 * x * x * x))
        return s + x * s * (1.0 - s) * c * (1.0 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + x * pdf


def _bias_gelu_bwd(approximate, saved, dy):
    h, bias = saved
    x = (h + bias).astype(jnp.float32)
    dx = dy.astype(jnp.float32) * _gelu_slope(x, approximate)
    return dx.astype(h.dtype), dx.reshape(-1, dx.shape[-1]).sum(0).astype(bias.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def bias_gelu(h: jax.Array, bias: jax.Array, approximate: bool = False) -> jax.Array:
    """GELU of `h + bias`: exact (erf), as BERT and Hugging Face's "gelu" use, or with
    `approximate` its tanh approximation (Hugging Face's "gelu_pytorch_tanh"). The gradient is
    written out so that the backward pass keeps only `h` (the matmul's output, in memory
    anyway) and recomputes the rest: differentiated automatically, the forward pass wrote
    `h + bias` and two more tensors of the FFN's width for the backward's use (log.md,
    session 44)."""
    return _bias_gelu_fwd(h, bias, approximate)[0]


bias_gelu.defvjp(_bias_gelu_fwd, _bias_gelu_bwd)


def _add_bias_fwd(y, bias):
    return y + bias, bias


def _add_bias_bwd(bias, dy):
    return dy, dy.reshape(-1, *bias.shape).astype(jnp.float32).sum(0).astype(bias.dtype)


@jax.custom_vjp
def _add_bias_f32_grad(y: jax.Array, bias: jax.Array) -> jax.Array:
    return _add_bias_fwd(y, bias)[0]


_add_bias_f32_grad.defvjp(_add_bias_fwd, _add_bias_bwd)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` over the rows of `y` (its leading axes), whose gradient sums the rows in f32
    (rounded once to the bias's dtype), as bias_gelu's does and as torch's reductions of half
    types accumulate.
    Differentiated automatically, the sum ran in the compute dtype: against f32 compute, bf16
    bias gradients of a tiny model on 8,192 rows were 1.3-2.7 % off (fp16: up to 1.2 %), ten
    times the others (log.md, session 54). f32 keeps the plain add (the same program)."""
    return y + bias if y.dtype == jnp.float32 else _add_bias_f32_grad(y, bias)
