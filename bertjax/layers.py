"""BERT building blocks as Equinox modules: Dense, LayerNorm, Embeddings, attention, FFN, Block.

Every module works on batched arrays ([batch, seq, embed]) and is a pure function of its
parameters, inputs and an optional dropout key (`key=None` means deterministic). Weights are
stored [in, out]; initialisation is BERT's truncated normal with stddev 0.02 (Devlin et al. 2019,
`truncated_normal_initializer`, cut at two standard deviations). Sharding hints (`whole`,
`split_rows`) act only under a mesh set with `jax.set_mesh` (bertjax.sharding.with_mesh).
"""

import functools
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

INIT_STD = 0.02


def truncated_normal(key: PRNGKeyArray, shape: tuple[int, ...]) -> jax.Array:
    return INIT_STD * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


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


# Sharding hints. Without them XLA's partitioner carries the FSDP split of a weight (often a
# feature axis) into the activations it multiplies, which then need all-to-alls and
# collective-permutes inside the layer scan (log.md, 2026-12-01). With them an FSDP step holds
# only the all-gathers of parameters and the reductions of their gradients. Both are no-ops
# without a mesh in context, so the model stays a mesh-agnostic pure function.
def whole(w: jax.Array) -> jax.Array:
    """Parameter `w` gathered whole on every device before its use (FSDP's all-gather; nothing
    to do for a replicated one); unchanged without a mesh in context."""
    if jax.sharding.get_abstract_mesh().empty:
        return w
    return jax.lax.with_sharding_constraint(w, jax.sharding.PartitionSpec())


def split_rows(x: jax.Array) -> jax.Array:
    """`x` split by rows (its leading, batch axis) over every axis of the mesh in context;
    unchanged without one, or when the rows do not divide evenly (XLA then decides)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or x.shape[0] % mesh.size:
        return x
    spec = jax.sharding.PartitionSpec(mesh.axis_names, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


def split_key(key: PRNGKeyArray | None, n: int) -> list:
    """`n` independent keys, or `n` Nones in deterministic mode."""
    return [None] * n if key is None else list(jax.random.split(key, n))


class Dense(eqx.Module):
    weight: jax.Array  # [in, out]
    bias: jax.Array

    def __init__(self, d_in: int, d_out: int, *, key: PRNGKeyArray):
        self.weight = truncated_normal(key, (d_in, d_out))
        self.bias = jnp.zeros((d_out,), jnp.float32)

    def __call__(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        return self.matmul(x) + whole(self.bias).astype(x.dtype)

    def matmul(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        """x @ weight, without the bias."""
        # One 2-D matmul over all rows: with [batch, seq, in] operands XLA:CPU computed the
        # weight gradient (a contraction over batch and seq) ~3x slower (log.md, 2026-12-01).
        y = x.reshape(-1, x.shape[-1]) @ whole(self.weight).astype(x.dtype)
        return y.reshape(*x.shape[:-1], -1)


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


class LayerNorm(eqx.Module):
    """`layer_norm` with a learned scale and shift (f32)."""

    weight: jax.Array
    bias: jax.Array
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, eps: float):
        self.weight = jnp.ones((dim,), jnp.float32)
        self.bias = jnp.zeros((dim,), jnp.float32)
        self.eps = eps

    def __call__(self, x: Float[Array, "*batch embed"]) -> Float[Array, "*batch embed"]:
        return layer_norm(x, whole(self.weight).astype(jnp.float32),
                          whole(self.bias).astype(jnp.float32), self.eps)


def sinusoidal(positions: int, dim: int) -> jax.Array:
    """Vaswani et al. (2017) sin/cos table scaled to the normal init's size. Position i+1 is a
    fixed rotation of position i, so one query/key map can attend "to the next token" at every
    position at once; random rows must each learn that on their own (small-budget MLM runs
    stay order-blind, log.md). The rows stay learnable."""
    pos = jnp.arange(positions, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    table = jnp.zeros((positions, dim), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(pos * freq)).at[:, 1::2].set(jnp.cos(pos * freq))
    return INIT_STD * table


def gather_f32(table: jax.Array, index) -> jax.Array:
    """`jnp.take(table, index, axis=0)` with the gradient's scatter-add done in f32. On GPU a
    bf16 or fp16 scatter-add is a compare-and-swap loop per element: the embedding and MLM
    gathers' gradients took 198 of the 223 ms of a bf16 train step on an H100 (mini, batch 256;
    the whole f32 step: 21 ms; log.md, 2026-11-25). The f32 copy of the table costs one
    elementwise pass."""
    return jnp.take(table.astype(jnp.float32), index, axis=0).astype(table.dtype)


class Embeddings(eqx.Module):
    """Word + learned position + token-type embeddings, then LayerNorm and dropout (as in BERT)."""

    word: jax.Array  # [vocab, embed]; also the tied MLM decoder
    position: jax.Array  # [max_positions, embed]
    token_type: jax.Array  # [type_vocab, embed]
    norm: LayerNorm
    rate: float = eqx.field(static=True)

    def __init__(self, vocab: int, positions: int, types: int, dim: int, eps: float,
                 rate: float, *, key: PRNGKeyArray, position_init: str = "normal"):
        k_word, k_pos, k_type = jax.random.split(key, 3)
        self.word = truncated_normal(k_word, (vocab, dim))
        self.position = (sinusoidal(positions, dim) if position_init == "sinusoidal"
                         else truncated_normal(k_pos, (positions, dim)))
        self.token_type = truncated_normal(k_type, (types, dim))
        self.norm = LayerNorm(dim, eps)
        self.rate = rate

    def __call__(self, input_ids: Int[Array, "batch seq"], token_type_ids: Int[Array, "batch seq"],
                 *, key: PRNGKeyArray | None = None) -> Float[Array, "batch seq embed"]:
        seq = input_ids.shape[1]
        if self.token_type.shape[0] == 1:  # RoBERTa's convention: one segment for pairs too
            # (a second segment's id 1 would index past the table: jnp.take fills with NaN)
            token_type_ids = jnp.zeros_like(token_type_ids)
        # The whole position table, then its first rows: slicing a table split by rows would
        # move rows between devices (collective-permutes).
        x = (gather_f32(whole(self.word), input_ids) + whole(self.position)[:seq][None]
             + gather_f32(whole(self.token_type), token_type_ids))
        return split_rows(dropout(self.norm(x), self.rate, key))


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
    if device.platform != "gpu" or "nvidia" not in device.device_kind.lower():
        return f"the device is {device.device_kind}, not an NVIDIA GPU"
    capability = getattr(device, "compute_capability", None)
    if capability is not None and float(capability) < 8.0:
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


class SelfAttention(eqx.Module):
    qkv: Dense  # fused query/key/value projection [embed, 3 * embed]
    out: Dense
    num_heads: int = eqx.field(static=True)
    rate: float = eqx.field(static=True)
    implementation: str = eqx.field(static=True)  # model.attention: auto | xla | cudnn

    def __init__(self, dim: int, num_heads: int, rate: float, *, key: PRNGKeyArray,
                 implementation: str = "auto"):
        k_qkv, k_out = jax.random.split(key)
        self.qkv = Dense(dim, 3 * dim, key=k_qkv)
        self.out = Dense(dim, dim, key=k_out)
        self.num_heads = num_heads
        self.rate = rate
        self.implementation = implementation

    def __call__(self, x: Float[Array, "batch seq embed"], mask: Bool[Array, "batch seq"],
                 *, key: PRNGKeyArray | None = None) -> Float[Array, "batch seq embed"]:
        batch, seq, dim = x.shape
        # Three matmuls on the fused weight's column blocks, not one and a split: cuDNN takes
        # q, k and v as separate arrays, and the split copied [rows, 3 * embed] forward and
        # concatenated the gradients back (302 MB a BERT-base layer). XLA:GPU's dot merger
        # joins the forward ones again unless --xla_gpu_dot_merger_threshold_mb=0 (log.md,
        # session 46; bench/gpu_suite.py's xla-cublas-unmerged item).
        rows = x.reshape(-1, dim)
        weight, bias = whole(self.qkv.weight).astype(x.dtype), whole(self.qkv.bias).astype(x.dtype)
        q, k, v = ((rows @ weight[:, i * dim:(i + 1) * dim] + bias[i * dim:(i + 1) * dim])
                   .reshape(batch, seq, self.num_heads, -1) for i in range(3))
        # Split by rows like the layer input: cuDNN's partitioner refuses q/k/v split on any
        # other axis, and XLA would otherwise move heads between devices (all-to-alls).
        q, k, v = split_rows(q), split_rows(k), split_rows(v)
        y = attention(q, k, v, mask, self.rate, key, self.implementation)
        return self.out(y.reshape(batch, seq, dim))


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


class FeedForward(eqx.Module):
    up: Dense
    down: Dense
    approximate_gelu: bool = eqx.field(static=True)  # model.gelu=tanh

    def __init__(self, dim: int, hidden: int, *, key: PRNGKeyArray, approximate_gelu: bool = False):
        k_up, k_down = jax.random.split(key)
        self.up = Dense(dim, hidden, key=k_up)
        self.down = Dense(hidden, dim, key=k_down)
        self.approximate_gelu = approximate_gelu

    def __call__(self, x: Float[Array, "batch seq embed"]) -> Float[Array, "batch seq embed"]:
        # On rows ([batch * seq, embed]): XLA:GPU then computes h + bias and GELU in one
        # kernel; on [batch, seq, hidden] it wrote GELU's argument to memory first.
        rows = x.reshape(-1, x.shape[-1])
        h = bias_gelu(self.up.matmul(rows), whole(self.up.bias).astype(x.dtype),
                      self.approximate_gelu)
        return self.down(h).reshape(x.shape)


class Block(eqx.Module):
    """One encoder layer. `pre`: x + f(LN(x)) (stable at high learning rates, Xiong et al. 2020);
    `post`: LN(x + f(x)) (original BERT, so published weights load)."""

    attn: SelfAttention
    ffn: FeedForward
    norm1: LayerNorm
    norm2: LayerNorm
    pre_norm: bool = eqx.field(static=True)
    rate: float = eqx.field(static=True)

    def __init__(self, dim: int, heads: int, hidden: int, eps: float, pre_norm: bool,
                 rate: float, attention_rate: float, *, key: PRNGKeyArray,
                 attention: str = "auto", gelu: str = "exact"):
        k_attn, k_ffn = jax.random.split(key)
        self.attn = SelfAttention(dim, heads, attention_rate, key=k_attn, implementation=attention)
        self.ffn = FeedForward(dim, hidden, key=k_ffn, approximate_gelu=gelu == "tanh")
        self.norm1 = LayerNorm(dim, eps)
        self.norm2 = LayerNorm(dim, eps)
        self.pre_norm = pre_norm
        self.rate = rate

    def __call__(self, x: Float[Array, "batch seq embed"], mask: Bool[Array, "batch seq"],
                 *, key: PRNGKeyArray | None = None) -> Float[Array, "batch seq embed"]:
        k_probs, k_attn, k_ffn = split_key(key, 3)
        if self.pre_norm:
            x = x + dropout(self.attn(self.norm1(x), mask, key=k_probs), self.rate, k_attn)
            return x + dropout(self.ffn(self.norm2(x)), self.rate, k_ffn)
        x = self.norm1(x + dropout(self.attn(x, mask, key=k_probs), self.rate, k_attn))
        return self.norm2(x + dropout(self.ffn(x), self.rate, k_ffn))
