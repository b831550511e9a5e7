"""Model: shapes, padding invariance, scan == unrolled, heads, precision, init, training."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertjax import attention, config, layers, ops
from bertjax.model import Bert, flops_per_token, new_bert, param_count, select_positions
from bertjax.precision import Precision

VOCAB = 97


def tiny(**overrides) -> config.ModelConfig:
    cfg = config.load([], [f"model.vocab_size={VOCAB}", "model.max_position_embeddings=64"]).model
    return dataclasses.replace(cfg, **overrides)


@pytest.mark.parametrize("heads", [{}, {"nsp": True}, {"mlm": False, "num_labels": 3}])
def test_a_model_initialised_as_one_program_is_the_one_built_op_by_op(heads):
    cfg, key = tiny(num_layers=2), jax.random.key(7)
    eager, jitted = Bert(cfg, key=key, **heads), new_bert(cfg, key=key, **heads)
    assert jax.tree.structure(eager) == jax.tree.structure(jitted)
    # Bit for bit under XLA's default flags; at -O0 (the quick tier) fusing the initializers
    # moves the last bit or two of some weights.
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0)


def inputs(batch=3, seq=16, lengths=(16, 11, 5), seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (batch, seq)).astype(np.int32)
    mask = np.arange(seq)[None] < np.array(lengths)[:, None]
    ids[~mask] = 0
    types = np.zeros_like(ids)
    types[0, 8:] = 1
    return jnp.asarray(ids), jnp.asarray(types), jnp.asarray(mask)


@eqx.filter_jit
def forward(model, ids, types, mask, key=None):
    """model(...) compiled once, not op by op (eager runs cost these tests seconds each)."""
    return model(ids, types, mask, key=key)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_output_shapes_of_every_head(norm):
    model = Bert(tiny(norm=norm), key=jax.random.key(0), nsp=True, num_labels=3)
    ids, types, mask = inputs()
    hidden = model(ids, types, mask)
    assert hidden.shape == (3, 16, 128) and hidden.dtype == jnp.float32
    assert model.mlm_logits(hidden).shape == (3, 16, VOCAB)
    assert model.mlm_logits(hidden, jnp.zeros((3, 4), jnp.int32)).shape == (3, 4, VOCAB)
    assert model.pair_logits(hidden).shape == (3, 2)
    assert model.classify(hidden).shape == (3, 3)


def test_mean_pooling_averages_real_tokens_only():
    model = Bert(tiny(), key=jax.random.key(3), mlm=False, num_labels=2, pooling="mean")
    ids, types, mask = inputs(lengths=(16, 11, 5))
    hidden = model(ids, types, mask)
    expected = np.stack([np.asarray(hidden[i, :n]).mean(0) for i, n in enumerate((16, 11, 5))])
    w, b = np.asarray(model.pooler.weight), np.asarray(model.pooler.bias)
    np.testing.assert_allclose(model.pooled(hidden, mask), np.tanh(expected @ w + b),
                               rtol=1e-5, atol=1e-6)
    # Extra padding (any ids, any states) does not move the result.
    pad = ((0, 0), (0, 8))
    longer_mask = jnp.pad(mask, pad)
    padded = model(jnp.pad(ids, pad, constant_values=7), jnp.pad(types, pad), longer_mask)
    np.testing.assert_allclose(model.classify(padded, longer_mask), model.classify(hidden, mask),
                               rtol=1e-5, atol=1e-6)
    cls = Bert(tiny(), key=jax.random.key(3), mlm=False, num_labels=2)  # same weights
    assert not np.allclose(cls.classify(hidden, mask), model.classify(hidden, mask))


def test_one_token_type_reads_pairs_as_one_segment():
    """model.type_vocab_size=1 (RoBERTa's convention) with pairs: the second segment's id 1
    indexed past the one-row table, and jnp.take filled its embeddings with NaN."""
    model = Bert(tiny(type_vocab_size=1), key=jax.random.key(2), nsp=True)
    ids, types, mask = inputs()
    assert np.asarray(types).max() == 1
    hidden = forward(model, ids, types, mask)
    assert np.isfinite(np.asarray(hidden)).all()
    np.testing.assert_array_equal(hidden, forward(model, ids, jnp.zeros_like(types), mask))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padding_does_not_change_real_positions(norm):
    model = Bert(tiny(norm=norm), key=jax.random.key(1))
    ids, types, mask = inputs(lengths=(16, 11, 5))
    short = model(ids[:, :11], types[:, :11], mask[:, :11])
    padded = model(ids, types, mask)
    # Rows 1 and 2 have <= 11 real tokens: extra padding must not change their real outputs.
    for row, n in ((1, 11), (2, 5)):
        np.testing.assert_allclose(padded[row, :n], short[row, :n], atol=1e-5)
    # Changing what sits under the padding changes nothing either.
    noisy = model(jnp.where(mask, ids, 7), types, mask)
    np.testing.assert_allclose(noisy[2, :5], padded[2, :5], atol=1e-5)


def test_scan_equals_unrolled_with_and_without_dropout():
    key = jax.random.key(2)
    scanned = Bert(tiny(num_layers=3), key=key)
    unrolled = Bert(tiny(num_layers=3, scan_layers=False), key=key)
    ids, types, mask = inputs()
    for dropout_key in (None, jax.random.key(3)):
        a = forward(scanned, ids, types, mask, dropout_key)
        b = forward(unrolled, ids, types, mask, dropout_key)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_remat_gives_the_same_gradients():
    key = jax.random.key(4)
    ids, types, mask = inputs()

    def grads(model):
        loss = lambda m: m.mlm_logits(m(ids, types, mask)).mean()  # noqa: E731
        return eqx.filter_jit(eqx.filter_grad(loss))(model)

    plain, remat = grads(Bert(tiny(remat=False), key=key)), grads(Bert(tiny(remat=True), key=key))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_remat_and_scan_by_default_on_cpu_only():
    # null picks the faster path per backend (log.md, 2026-12-01: CPU measured; GPU: session
    # 45's static figures and session 5's trace).
    cpu = jax.default_backend() == "cpu"
    encoder = Bert(tiny(), key=jax.random.key(0)).encoder
    assert (encoder.remat, encoder.scan_layers) == (cpu, cpu)
    encoder = Bert(tiny(remat=False, scan_layers=True), key=jax.random.key(0)).encoder
    assert (encoder.remat, encoder.scan_layers) == (False, True)
    assert not Bert(tiny(scan_layers=False), key=jax.random.key(0)).encoder.scan_layers


def test_dropout_is_driven_by_the_key():
    model = Bert(tiny(), key=jax.random.key(5))
    ids, types, mask = inputs()
    np.testing.assert_array_equal(forward(model, ids, types, mask),
                                  forward(model, ids, types, mask))
    a = forward(model, ids, types, mask, jax.random.key(1))
    np.testing.assert_array_equal(a, forward(model, ids, types, mask, jax.random.key(1)))
    assert not np.allclose(a, forward(model, ids, types, mask, jax.random.key(2)))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_dropout_draws_from_its_own_key(monkeypatch, scan_layers):
    """No two dropouts of one forward pass share a key: a key reused across layers gives every
    layer the same mask, which no output-level test notices and which moves the reproduction
    figures less than a seed does (only the test seed's own band sees it: log.md, session 14);
    this says which key in seconds."""
    seen = []

    def recording(x, rate, key):
        if key is not None:
            jax.debug.callback(lambda k: seen.append(np.asarray(k).tobytes()),
                               jax.random.key_data(key))
        return original(x, rate, key)

    original = ops.dropout
    monkeypatch.setattr(layers, "dropout", recording)  # embeddings, blocks
    monkeypatch.setattr(attention, "dropout", recording)  # attention probabilities
    model = Bert(tiny(num_layers=3, scan_layers=scan_layers, remat=False), key=jax.random.key(5))
    jax.block_until_ready(model(*inputs(), key=jax.random.key(1)))
    # embeddings, then per layer: attention probabilities, attention output, feed-forward
    assert len(seen) == 1 + 3 * 3
    assert len(set(seen)) == len(seen)


def test_attention_dropout_path_matches_fused_path_at_rate_zero():
    # The explicit (dropout) path is only taken with a key and rate > 0; with the rate at 0 and
    # a key, both paths must agree, which checks the explicit masking and scaling.
    q, k, v = jax.random.normal(jax.random.key(6), (3, 2, 10, 4, 8))
    mask = jnp.arange(10)[None] < jnp.array([10, 6])[:, None]
    fused = attention.attention(q, k, v, mask, 0.0, None)
    explicit = attention.attention(q, k, v, mask, 1e-9, jax.random.key(0))
    np.testing.assert_allclose(fused, explicit, atol=1e-5)


def test_sparse_mlm_head_equals_dense_head_at_selected_positions():
    model = Bert(tiny(), key=jax.random.key(7))
    ids, types, mask = inputs()
    hidden = model(ids, types, mask)
    positions = jnp.array([[0, 3, 15], [1, 1, 10], [4, 2, 0]], jnp.int32)
    dense = model.mlm_logits(hidden)
    sparse = model.mlm_logits(hidden, positions)
    np.testing.assert_allclose(sparse, jnp.take_along_axis(dense, positions[..., None], 1),
                               atol=1e-5)


def test_selecting_positions_by_matmul_is_exact_and_its_gradient_is_the_gathers():
    """model.select_positions (a one-hot matmul) equals indexing, bit for bit in bf16, and its
    gradient equals the gather's (a scatter-add; repeated positions add up)."""
    hidden = jax.random.normal(jax.random.key(3), (3, 16, 8), jnp.bfloat16)
    positions = jnp.array([[0, 3, 15], [1, 1, 10], [4, 2, 0]], jnp.int32)
    indexed = jax.vmap(lambda h, p: h[p])
    np.testing.assert_array_equal(select_positions(hidden, positions), indexed(hidden, positions))
    cotangent = jax.random.normal(jax.random.key(4), (3, 3, 8))
    h32 = hidden.astype(jnp.float32)
    (got,) = jax.vjp(select_positions, h32, positions)[1](cotangent)[:1]
    (want,) = jax.vjp(indexed, h32, positions)[1](cotangent)[:1]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(jnp.abs(got[1, 1]).sum()) > 0  # the repeated position got both terms
    np.testing.assert_allclose(got[1, 1], cotangent[1, 0] + cotangent[1, 1], rtol=1e-6)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.7, 0.9])  # 0.7, 0.9: p * 2**23 not whole
def test_dropout_keeps_what_jax_random_bernoulli_keeps(rate):
    """ops.dropout draws its mask from raw bits (for the bytes a GPU step moves) and keeps
    exactly what jax.random.bernoulli(key, 1 - rate) keeps, so runs keep their numbers."""
    x = jnp.ones((100_000,))
    out = ops.dropout(x, rate, jax.random.key(0))
    kept = out != 0
    np.testing.assert_array_equal(kept, jax.random.bernoulli(jax.random.key(0), 1.0 - rate,
                                                             x.shape))
    assert abs(float(kept.mean()) - (1 - rate)) < 0.01
    np.testing.assert_allclose(out[kept], 1 / (1 - rate), rtol=1e-6)
    # Draws next to the threshold, which 100,000 random ones almost never hit: jax's uniform
    # float (top 23 bits as a mantissa in [1, 2), minus 1) against p.
    top = np.arange(2**23, dtype=np.uint32)
    p = np.float32(1.0 - rate)
    edge = top[np.abs(top.astype(np.float64) / 2**23 - p) < 4 / 2**23]
    bits = np.concatenate([edge << 9, edge << 9 | 0x1FF])
    uniform = ((bits >> 9) | np.float32(1).view(np.uint32)).view(np.float32) - np.float32(1)
    np.testing.assert_array_equal(ops.bernoulli_from_bits(jnp.asarray(bits), 1.0 - rate),
                                  uniform < p)


def test_bf16_compute_is_close_to_f32():
    model = Bert(tiny(), key=jax.random.key(8))
    ids, types, mask = inputs()
    f32 = model.mlm_logits(model(ids, types, mask))
    low = Precision.from_names(compute="bfloat16").cast_to_compute(model)
    hidden = low(ids, types, mask)
    assert hidden.dtype == jnp.bfloat16
    bf16 = low.mlm_logits(hidden)
    assert bf16.dtype == jnp.float32  # logits leave the head in f32 for the loss
    # bf16 has an 8-bit mantissa: relative error ~1e-2 on O(1) logits.
    assert float(jnp.abs(bf16 - f32).max()) < 0.05 * float(jnp.abs(f32).max()) + 0.02
    assert float(jnp.corrcoef(bf16.ravel(), f32.ravel())[0, 1]) > 0.999


def reference_layer_norm(x, weight, bias, eps):
    """LayerNorm as written before its gradient was (f32 statistics), for autodiff to check."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps) * weight + bias).astype(x.dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_written_out_gradients_equal_autodiffs_of_the_same_functions(dtype):
    """ops.layer_norm and ops.bias_gelu carry their own backward passes (custom_vjp, for
    the bytes a GPU step moves): values and gradients are those of the plain formulas, to f32
    rounding in f32; in bf16 the written-out GELU gradient is computed in f32, autodiff's in bf16,
    so they agree to bf16's precision."""
    k = iter(jax.random.split(jax.random.key(0), 6))
    x = (3 * jax.random.normal(next(k), (3, 5, 16)) + 1).astype(dtype)
    weight = 1 + 0.1 * jax.random.normal(next(k), (16,))
    bias = 0.1 * jax.random.normal(next(k), (16,))
    dy = jax.random.normal(next(k), (3, 5, 16)).astype(dtype)
    h = (2 * jax.random.normal(next(k), (15, 32))).astype(dtype)
    b = (0.5 * jax.random.normal(next(k), (32,))).astype(dtype)
    dg = jnp.ones((15, 32), dtype)
    pairs = [(lambda *a: ops.layer_norm(*a, 1e-12), lambda *a: reference_layer_norm(*a, 1e-12),
              (x, weight, bias), dy),
             (ops.bias_gelu, lambda h, b: jax.nn.gelu(h + b, approximate=False), (h, b), dg),
             (lambda h, b: ops.bias_gelu(h, b, True),
              lambda h, b: jax.nn.gelu(h + b, approximate=True), (h, b), dg)]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
    for written, reference, args, cotangent in pairs:
        (out, vjp), (ref_out, ref_vjp) = (jax.vjp(f, *args) for f in (written, reference))
        assert out.dtype == dtype
        np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref_out, np.float32))
        for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                       **tol)


def test_layer_norms_backward_reads_the_forwards_statistics_behind_a_barrier():
    """The mean and 1/std a LayerNorm keeps reach its backward pass through an optimization
    barrier, so XLA cannot recompute them there: XLA:GPU did, and the scale's gradient then
    wrote and re-read an f32 copy of the input (log.md, session 46)."""
    x = jnp.ones((2, 3, 8))
    jaxpr = jax.make_jaxpr(lambda x: jax.vjp(lambda x: ops.layer_norm(
        x, jnp.ones(8), jnp.zeros(8), 1e-12), x)[1](x))(x)
    barriers = equations(jaxpr.jaxpr, "optimization_barrier")
    assert [[v.aval.shape for v in eqn.outvars] for eqn in barriers] == [[(2, 3, 1), (2, 3, 1)]]


def test_a_bf16_block_keeps_no_f32_activations_and_two_of_the_ffn_width():
    """What a block keeps for its backward pass (the residuals of jax.vjp): LayerNorm keeps x
    and two f32 numbers per row, the FFN its matmul's output and the GELU's. Differentiated
    automatically they kept six f32 copies of the activations and four tensors of the FFN's
    width: memory traffic of a GPU step (log.md, session 44)."""
    rows, embed, hidden = 12, 64, 256  # sizes no weight shares
    block = layers.Block(embed, 4, hidden, 1e-12, True, 0.0, 0.0, key=jax.random.key(0),
                         attention="xla")
    block = Precision.from_names(compute="bfloat16").cast_to_compute(block)
    x = jax.random.normal(jax.random.key(1), (2, rows // 2, embed), jnp.bfloat16)
    _, vjp = jax.vjp(lambda b, x: b(x, jnp.ones((2, rows // 2), bool)), block, x)
    kept = jax.tree.leaves(vjp)
    assert [a.dtype for a in kept if a.size == rows * hidden] == [jnp.bfloat16] * 2
    assert not [a.shape for a in kept if a.dtype == jnp.float32 and a.size == rows * embed]


def equations(jaxpr, primitive: str) -> list:
    """Every equation of `primitive` in a jaxpr, nested ones (scan, pjit, custom_vjp, ...)
    included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            found.append(eqn)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    found += equations(inner, primitive)
    return found


def scatter_dtypes(jaxpr) -> list:
    """Result dtypes of every scatter-add in a jaxpr."""
    return [v.aval.dtype for eqn in equations(jaxpr, "scatter-add") for v in eqn.outvars]


def test_the_explicit_attentions_bf16_gradient_matmuls_take_bf16_operands():
    """The attention path with dropout (GLUE fine-tuning's default) computes its logits with
    ops.einsum_f32 too: its gradient matmuls (dq, dk) take bf16 operands, not f32 ones."""
    q, k, v = jax.random.normal(jax.random.key(2), (3, 2, 8, 2, 4), jnp.bfloat16)
    mask = jnp.ones((2, 8), bool)

    def loss(q, k, v):
        out = attention.attention(q, k, v, mask, 0.1, jax.random.key(0))
        return jnp.sum(out.astype(jnp.float32))

    assert attention.attention_path("auto", q.dtype, q.shape[-1], True) == "explicit"
    dots = equations(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(q, k, v).jaxpr, "dot_general")
    assert len(dots) >= 6  # two forward, four gradient
    assert {str(v.aval.dtype) for eqn in dots for v in eqn.invars} == {"bfloat16"}


def test_the_bf16_mlm_heads_gradient_matmuls_take_bf16_operands():
    """The decoder's logits leave in f32 (ops.einsum_f32); its gradient matmuls take the
    cotangent in bf16, as under PyTorch's autocast. Differentiated automatically, they paired
    the f32 cotangent with a bf16 operand, which XLA:GPU ran as f32 x f32 matmuls over the
    vocabulary (log.md, session 45). In f32 the written-out gradient is autodiff's."""
    model = Bert(tiny(), key=jax.random.key(9))
    hidden = jax.random.normal(jax.random.key(1), (3, 5, model.encoder.embeddings.word.shape[1]))
    positions = jnp.array([[0, 3], [1, 4], [2, 0]], jnp.int32)

    def loss(model, hidden, compute):
        low = Precision.from_names(compute=compute).cast_to_compute(model)
        logits = low.mlm_logits(hidden.astype(low.mlm.bias.dtype), positions)
        return jnp.sum(logits * jnp.arange(VOCAB, dtype=jnp.float32))

    grad_jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)), static_argnums=2)(
        model, hidden, "bfloat16").jaxpr
    dots = equations(grad_jaxpr, "dot_general")
    assert len(dots) >= 6  # transform and decoder, each forward and two gradients
    assert {str(v.aval.dtype) for eqn in dots for v in eqn.invars} == {"bfloat16"}
    written = jax.grad(loss, (0, 1))(model, hidden, "float32")

    def plain_loss(m, h):  # the head written with a plain einsum
        h = m.mlm.norm(jax.nn.gelu(m.mlm.transform(jax.vmap(lambda x, p: x[p])(h, positions)),
                                   approximate=False))
        logits = jnp.einsum("bpe,ve->bpv", h, m.encoder.embeddings.word) + m.mlm.bias
        return jnp.sum(logits * jnp.arange(VOCAB, dtype=jnp.float32))

    expected = jax.grad(plain_loss, (0, 1))(model, hidden)
    for got, want in zip(jax.tree.leaves(written), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # two low-precision backward compilations; a GPU-speed guard, not a reference
@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_low_precision_gradients_scatter_in_f32(compute):
    """The embedding gathers' gradients (word and token type) are scatter-adds; in bf16/fp16
    they took 200 of 223 ms of an H100 train step (log.md), so they must run in f32 whatever
    the compute dtype. (The sparse MLM positions are selected by a matmul: no scatter.)"""
    model = Bert(tiny(), key=jax.random.key(9))
    ids, types, mask = inputs()
    positions = jnp.array([[0, 3, 15], [1, 1, 10], [4, 2, 0]], jnp.int32)

    def loss(model):
        low = Precision.from_names(compute=compute).cast_to_compute(model)
        return low.mlm_logits(low(ids, types, mask), positions).sum()

    grad_jaxpr = jax.make_jaxpr(eqx.filter_grad(loss))(model).jaxpr
    dtypes = scatter_dtypes(grad_jaxpr)
    assert len(dtypes) == 2 and set(dtypes) == {jnp.dtype(jnp.float32)}, dtypes
    reference = eqx.filter_jit(eqx.filter_grad(
        lambda m: m.mlm_logits(m(ids, types, mask), positions).sum()))
    # jax's own XLA attention backward mixes bf16 with f32 (cf. attention.attention's forward).
    # (jitted: one compilation instead of one per eager op, most of this test's time)
    with jax.numpy_dtype_promotion("standard"):
        low_grad = eqx.filter_jit(eqx.filter_grad(loss))(model).encoder.embeddings.token_type
    expected = reference(model).encoder.embeddings.token_type
    # bf16 gradients of O(100) entries: compare against the largest, as for the logits above.
    assert float(jnp.abs(low_grad - expected).max()) < 0.05 * float(jnp.abs(expected).max())


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_low_precision_bias_gradients_sum_the_rows_in_f32(compute):
    """A bias's gradient is a sum over every row of the batch. Differentiated automatically it
    was summed in the compute dtype: here the output projection's bf16 bias gradient was 61 %
    off (a running bf16 sum of ~0.01s stops growing), fp16 1.8 %; in a tiny model's step the
    bias gradients were 1.3-2.7 % off the f32 step's, ten times the other gradients. Now the
    rows are summed in f32 and rounded once, as torch sums half types."""
    dtype = jnp.dtype(compute)
    rows, dim = 4096, 8
    attn = layers.SelfAttention(dim, 2, 0.0, key=jax.random.key(1), implementation="xla")
    x = jax.random.normal(jax.random.key(2), (rows // 64, 64, dim))
    cotangent = 0.01 + 0.002 * jax.random.normal(jax.random.key(3), (rows // 64, 64, dim))
    mask = jnp.ones((rows // 64, 64), bool)

    def grads(dtype):
        low = Precision(dtype).cast_to_compute(attn)
        # jax's own XLA attention backward mixes bf16 with f32 (see the test above)
        with jax.numpy_dtype_promotion("standard"):
            return jax.grad(lambda a: (a(x.astype(dtype), mask).astype(jnp.float32)
                                       * cotangent).sum())(low)

    got, f32 = grads(dtype), grads(jnp.dtype(jnp.float32))
    # The output projection's: the cotangent's f32 sum, rounded once to the compute dtype.
    want = cotangent.astype(dtype).astype(jnp.float32).reshape(rows, dim).sum(0)
    np.testing.assert_allclose(np.float32(got.out.bias), want, rtol=float(jnp.finfo(dtype).eps))

    # The fused q/k/v projection's three slices: as close to the f32 layer's as its weight
    # gradient (a matmul, accumulated in f32) is; summed in bf16 they were 2.7 times further.
    def error(name):
        a, b = (np.float32(getattr(g.qkv, name)) for g in (got, f32))
        return np.abs(a - b).max() / np.abs(b).max()

    assert error("bias") < 1.5 * error("weight"), (error("bias"), error("weight"))


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_low_precision_position_gradient_sums_the_batch_in_f32(compute):
    """The position table's gradient is a sum over the batch. Differentiated automatically it was
    summed in the compute dtype: with a gradient of one sign per feature across the batch (the
    sum grows, its increments fall below bf16's resolution) 1.2 % off in bf16, four times the
    word table's (a scatter-add in f32). Now, as the biases' (above), in f32 and rounded once:
    0.3 %, the word table's."""
    dtype = jnp.dtype(compute)
    emb = layers.Embeddings(50, 32, 2, 8, 1e-12, 0.0, key=jax.random.key(1))
    ids = jax.random.randint(jax.random.key(2), (1024, 32), 0, 50)
    types = jnp.zeros_like(ids)
    sign = jnp.where(jnp.arange(8) < 4, 1.0, -1.0)  # LayerNorm's backward keeps it
    cotangent = 0.01 * sign + 0.002 * jax.random.normal(jax.random.key(3), (1024, 32, 8))

    def grads(dtype):
        low = Precision(dtype).cast_to_compute(emb)
        return jax.grad(lambda e: (e(ids, types).astype(jnp.float32) * cotangent).sum())(low)

    got, f32 = grads(dtype), grads(jnp.dtype(jnp.float32))

    def error(name):
        a, b = (np.float32(getattr(g, name)) for g in (got, f32))
        return np.abs(a - b).max() / np.abs(b).max()

    assert error("position") < 1.5 * error("word"), (error("position"), error("word"))


def test_init_is_bert_truncated_normal():
    model = Bert(tiny(size="mini"), key=jax.random.key(9))
    w = np.asarray(model.encoder.blocks.ffn.up.weight).ravel()
    # truncated_normal(stddev=0.02) cut at 2 sigma has std 0.02 * 0.8796 (TF's initializer).
    assert abs(w.std() - 0.02 * 0.8796) < 0.0005
    assert np.abs(w).max() <= 0.04 + 1e-7
    assert abs(w.mean()) < 0.0005
    np.testing.assert_array_equal(model.encoder.blocks.norm1.weight, 1.0)
    np.testing.assert_array_equal(model.encoder.blocks.ffn.up.bias, 0.0)


def test_sinusoidal_positions_depend_only_on_the_offset():
    model = Bert(tiny(position_init="sinusoidal"), key=jax.random.key(0))
    table = np.asarray(model.encoder.embeddings.position, np.float64)
    assert table.shape == (64, model.encoder.embeddings.word.shape[1])
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 0.02 * np.sqrt(table.shape[1] / 2),
                               rtol=1e-5)  # every row as large as a normal-init row, on average
    gram = table @ table.T
    for offset in (1, 3, 10):  # <p_i, p_(i+k)> is the same for every i: a shift is a rotation
        np.testing.assert_allclose(np.diagonal(gram, offset), gram[0, offset], rtol=1e-4)
    assert gram[0, 1] > gram[0, 10]  # and near positions are more alike than far ones


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_both_norms_train_on_a_fixed_batch(norm):
    model = Bert(tiny(norm=norm), key=jax.random.key(10))
    ids, types, mask = inputs(lengths=(16, 16, 16))
    positions = jnp.tile(jnp.arange(0, 16, 4, dtype=jnp.int32), (3, 1))
    labels = jnp.take_along_axis(ids, positions, 1)
    masked = ids.at[jnp.arange(3)[:, None], positions].set(4)

    def loss_fn(m):
        logits = m.mlm_logits(m(masked, types, mask), positions)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    opt = optax.adam(3e-3)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(m, s):
        loss, g = eqx.filter_value_and_grad(loss_fn)(m)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int/float
            updates, s = opt.update(g, s)
        return eqx.apply_updates(m, updates), s, loss

    losses = []
    for _ in range(30):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0], losses


def test_param_count_and_flops():
    cfg = tiny()
    model = Bert(cfg, key=jax.random.key(0))
    h, i, v, layers = 128, 512, VOCAB, 2
    embeddings = (v + 64 + 2) * h + 2 * h
    block = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h
    head = h * h + h + 2 * h + v
    assert param_count(model) == embeddings + layers * block + 2 * h + head
    seq = 128
    dense, sparse = flops_per_token(cfg, seq), flops_per_token(cfg, seq, predictions=20)
    assert sparse < dense
    assert dense == 3 * (layers * (2 * (4 * h * h + 2 * h * i) + 4 * seq * h) + 2 * (h * h + h * v))


def test_bert_base_parameter_count_equals_hugging_face():
    # transformers' BertForMaskedLM(BertConfig()) -- BERT-base, vocab 30522, no pooler, tied
    # decoder -- has 109,514,298 parameters (sum(p.numel() for p in model.parameters()), measured
    # with tests/make_hf_fixture.py; see tests/fixtures/hf_tiny/README.md).
    cfg = config.load([], ["model.size=base", "model.vocab_size=30522", "model.norm=post"]).model
    shapes = eqx.filter_eval_shape(lambda: Bert(cfg, key=jax.random.key(0)))
    assert param_count(shapes) == 109_514_298
