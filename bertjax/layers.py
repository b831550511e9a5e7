"""BERT building blocks as Equinox modules: Dense, LayerNorm, Embeddings, attention, FFN, Block.

Every module works on batched arrays ([batch, seq, embed]) and is a pure function of its
parameters, inputs and an optional dropout key (`key=None` means deterministic). Weights are
stored [in, out]; initialisation is BERT's truncated normal with stddev 0.02 (Devlin et al. 2019,
`truncated_normal_initializer`, cut at two standard deviations).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

INIT_STD = 0.02


def truncated_normal(key: PRNGKeyArray, shape: tuple[int, ...]) -> jax.Array:
    return INIT_STD * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)


def einsum_f32(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """einsum with f32 results (accumulated in f32 on accelerators). XLA:CPU has no f16 x f16 ->
    f32 dot, so f16 operands are upcast there (CPU runs of fp16 configs are for testing)."""
    if x.dtype == jnp.float16 and jax.default_backend() == "cpu":
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def dropout(x: jax.Array, rate: float, key: PRNGKeyArray | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None (evaluation) or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def split_key(key: PRNGKeyArray | None, n: int) -> list:
    """`n` independent keys, or `n` Nones in deterministic mode."""
    return [None] * n if key is None else list(jax.random.split(key, n))


class Dense(eqx.Module):
    weight: jax.Array  # [in, out]
    bias: jax.Array | None

    def __init__(self, d_in: int, d_out: int, *, key: PRNGKeyArray, use_bias: bool = True):
        self.weight = truncated_normal(key, (d_in, d_out))
        self.bias = jnp.zeros((d_out,), jnp.float32) if use_bias else None

    def __call__(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        # One 2-D matmul over all rows: with [batch, seq, in] operands XLA:CPU computed the
        # weight gradient (a contraction over batch and seq) ~3x slower (log.md, 2026-12-01).
        y = x.reshape(-1, x.shape[-1]) @ self.weight.astype(x.dtype)
        y = y.reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias.astype(x.dtype)


class LayerNorm(eqx.Module):
    """LayerNorm with f32 statistics whatever the compute dtype (bf16 variance underflows)."""

    weight: jax.Array
    bias: jax.Array
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, eps: float):
        self.weight = jnp.ones((dim,), jnp.float32)
        self.bias = jnp.zeros((dim,), jnp.float32)
        self.eps = eps

    def __call__(self, x: Float[Array, "*batch embed"]) -> Float[Array, "*batch embed"]:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.weight.astype(jnp.float32) + self.bias.astype(jnp.float32)
        return y.astype(x.dtype)


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


def gather_f32(table: jax.Array, index, axis: int = 0) -> jax.Array:
    """`jnp.take(table, index, axis)` with the gradient's scatter-add done in f32. On GPU a bf16
    or fp16 scatter-add is a compare-and-swap loop per element: the embedding and MLM gathers'
    gradients took 198 of the 223 ms of a bf16 train step on an H100 (mini, batch 256; the whole
    f32 step: 21 ms; log.md, 2026-11-25). The f32 copy of the table costs one elementwise pass."""
    return jnp.take(table.astype(jnp.float32), index, axis=axis).astype(table.dtype)


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
        x = (gather_f32(self.word, input_ids) + self.position[:seq][None]
             + gather_f32(self.token_type, token_type_ids))
        return dropout(self.norm(x), self.rate, key)


Heads = Float[Array, "batch seq heads head_dim"]


def attention(q: Heads, k: Heads, v: Heads, mask: Bool[Array, "batch seq"], rate: float,
              key: PRNGKeyArray | None) -> Heads:
    """Scaled dot-product attention over non-pad keys.

    Without attention dropout this is `jax.nn.dot_product_attention` with its default
    implementation, which is XLA's on every backend (jax 0.10: `implementation=None` falls back
    to "xla"; cuDNN flash attention must be asked for and is not wired in yet). With dropout the
    probabilities must be materialised, so the explicit path computes logits and softmax in f32.
    """
    key_mask = mask[:, None, None, :]  # [batch, 1 (heads), 1 (queries), seq (keys)]
    if q.dtype == jnp.float16 and jax.default_backend() == "cpu":  # see einsum_f32
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]
        return attention(*f32, mask, rate, key).astype(jnp.float16)
    if key is None or rate == 0.0:
        # jax's XLA attention promotes bf16 with f32 internally, which strict promotion (our
        # tests) rejects; the promotion is JAX's own and intended, so allow it here only.
        with jax.numpy_dtype_promotion("standard"):
            return jax.nn.dot_product_attention(q, k, v, mask=key_mask)
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

    def __init__(self, dim: int, num_heads: int, rate: float, *, key: PRNGKeyArray):
        k_qkv, k_out = jax.random.split(key)
        self.qkv = Dense(dim, 3 * dim, key=k_qkv)
        self.out = Dense(dim, dim, key=k_out)
        self.num_heads = num_heads
        self.rate = rate

    def __call__(self, x: Float[Array, "batch seq embed"], mask: Bool[Array, "batch seq"],
                 *, key: PRNGKeyArray | None = None) -> Float[Array, "batch seq embed"]:
        batch, seq, dim = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(batch, seq, 3 * self.num_heads, -1), 3, axis=2)
        y = attention(q, k, v, mask, self.rate, key)
        return self.out(y.reshape(batch, seq, dim))


class FeedForward(eqx.Module):
    up: Dense
    down: Dense

    def __init__(self, dim: int, hidden: int, *, key: PRNGKeyArray):
        k_up, k_down = jax.random.split(key)
        self.up = Dense(dim, hidden, key=k_up)
        self.down = Dense(hidden, dim, key=k_down)

    def __call__(self, x: Float[Array, "batch seq embed"]) -> Float[Array, "batch seq embed"]:
        # Exact (erf) GELU, as BERT and Hugging Face's "gelu" use.
        return self.down(jax.nn.gelu(self.up(x), approximate=False))


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
                 rate: float, attention_rate: float, *, key: PRNGKeyArray):
        k_attn, k_ffn = jax.random.split(key)
        self.attn = SelfAttention(dim, heads, attention_rate, key=k_attn)
        self.ffn = FeedForward(dim, hidden, key=k_ffn)
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
