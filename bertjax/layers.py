"""BERT building blocks as Equinox modules: Dense, LayerNorm, Embeddings, SelfAttention, FFN,
Block. The functions they compute with live in bertjax.ops and bertjax.attention.

Every module works on batched arrays ([batch, seq, embed]) and is a pure function of its
parameters, inputs and an optional dropout key (`key=None` means deterministic). Weights are
stored [in, out]; initialisation is BERT's truncated normal with stddev 0.02 (Devlin et al. 2019,
`truncated_normal_initializer`, cut at two standard deviations). Sharding hints (`whole`,
`split_rows`) act only under a mesh set with `jax.set_mesh` (bertjax.sharding.with_mesh).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from bertjax.attention import attention
from bertjax.ops import add_bias, bias_gelu, dropout, gather_f32, layer_norm

INIT_STD = 0.02


def truncated_normal(key: PRNGKeyArray, shape: tuple[int, ...]) -> jax.Array:
    return INIT_STD * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


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
        return add_bias(self.matmul(x), whole(self.bias).astype(x.dtype))

    def matmul(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        """x @ weight, without the bias."""
        # One 2-D matmul over all rows: with [batch, seq, in] operands XLA:CPU computed the
        # weight gradient (a contraction over batch and seq) ~3x slower (log.md, 2026-12-01).
        y = x.reshape(-1, x.shape[-1]) @ whole(self.weight).astype(x.dtype)
        return y.reshape(*x.shape[:-1], -1)


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
        # move rows between devices (collective-permutes). Its gradient, a sum over the batch,
        # is summed in f32 (add_bias): where the batch's gradients share a sign, the bf16 sum
        # was 1.2 % off, four times the word table's (log.md, session 55).
        words = gather_f32(whole(self.word), input_ids)
        x = (add_bias(words, whole(self.position)[:seq].astype(words.dtype))
             + gather_f32(whole(self.token_type), token_type_ids))
        return split_rows(dropout(self.norm(x), self.rate, key))


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
        q, k, v = (add_bias(rows @ weight[:, i * dim:(i + 1) * dim], bias[i * dim:(i + 1) * dim])
                   .reshape(batch, seq, self.num_heads, -1) for i in range(3))
        # Split by rows like the layer input: cuDNN's partitioner refuses q/k/v split on any
        # other axis, and XLA would otherwise move heads between devices (all-to-alls).
        q, k, v = split_rows(q), split_rows(k), split_rows(v)
        y = attention(q, k, v, mask, self.rate, key, self.implementation)
        return self.out(y.reshape(batch, seq, dim))


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
