"""Attention paths: the selection rule of model.attention (auto / xla / cudnn), key-length masking
(the form cuDNN takes) against the boolean mask, the whole model on the cuDNN route (run by XLA on
CPU), and the right-padded, never-empty masks that key lengths need from every batch builder."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fake_gpu, rte_pairs

from bertjax import config, glue_batches
from bertjax.attention import (
    attention,
    attention_path,
    cudnn_unsupported,
    describe_attention,
    key_lengths,
    length_attention,
    warn_once,
)
from bertjax.data import PretrainData
from bertjax.errors import UserError
from bertjax.model import Bert, attention_summary

H200 = fake_gpu("NVIDIA H200", "9.0")


@pytest.fixture
def fresh_warnings():
    warn_once.cache_clear()  # "once per process": start each test with none given
    yield
    warn_once.cache_clear()


@pytest.fixture
def on_gpu(monkeypatch, fresh_warnings):
    """Selection as on an H200 (only `cudnn_unsupported` reads the device)."""
    monkeypatch.setattr(jax, "devices", lambda *a: [H200])


def qkv(dtype=jnp.float32, batch=3, seq=10, heads=2, dim=8):
    q, k, v = jax.random.normal(jax.random.key(0), (3, batch, seq, heads, dim))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def right_padded(lengths, seq=10):
    return jnp.arange(seq)[None] < jnp.asarray(lengths)[:, None]


def test_config_takes_auto_xla_cudnn_and_rejects_anything_else():
    assert config.load([], []).model.attention == "auto"
    assert config.load([], ["model.attention=cudnn"]).model.attention == "cudnn"
    with pytest.raises(UserError, match=r"model.attention=flash is invalid: .* auto, xla, cudnn"):
        config.load([], ["model.attention=flash"])


def test_on_cpu_auto_takes_xla_and_dropout_the_explicit_path(fresh_warnings):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for auto or xla on CPU
        for implementation in ("auto", "xla"):
            assert attention_path(implementation, jnp.bfloat16, 64, False) == "xla"
            assert attention_path(implementation, jnp.bfloat16, 64, True) == "explicit"
    assert describe_attention("auto", "float32", 64, 0.0).startswith("XLA's")
    assert describe_attention("auto", "float32", 64, 0.1) == (
        "explicit (attention dropout 0.1) in training, XLA's (jax.nn.dot_product_attention, "
        "boolean mask) in evaluation")


def test_cudnn_on_cpu_falls_back_to_xla_and_says_why_once(fresh_warnings):
    with pytest.warns(UserWarning, match=r"model.attention=cudnn: .*not an NVIDIA GPU.*XLA"):
        assert attention_path("cudnn", jnp.bfloat16, 64, False) == "xla"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same message again: not repeated
        assert attention_path("cudnn", jnp.bfloat16, 64, False) == "xla"
    q, k, v = qkv()  # and the model's attention runs (XLA's) with it
    mask = right_padded([10, 4, 1])
    np.testing.assert_array_equal(attention(q, k, v, mask, 0.0, None, "cudnn"),
                                  attention(q, k, v, mask, 0.0, None, "xla"))


def test_on_an_nvidia_gpu_auto_takes_cudnn_where_it_can_run(on_gpu):
    assert attention_path("auto", jnp.bfloat16, 64, False) == "cudnn"
    assert attention_path("auto", jnp.float16, 128, False) == "cudnn"
    assert attention_path("xla", jnp.bfloat16, 64, False) == "xla"
    assert attention_path("auto", jnp.float32, 64, False) == "xla"  # cuDNN: bf16/fp16 only
    assert attention_path("auto", jnp.bfloat16, 60, False) == "xla"  # not a multiple of 8
    assert attention_path("auto", jnp.bfloat16, 256, False) == "xla"
    with pytest.warns(UserWarning, match="float32 compute"):
        assert attention_path("cudnn", jnp.float32, 64, False) == "xla"
    assert describe_attention("auto", "bfloat16", 64, 0.0) == (
        "cuDNN flash attention (per-row key lengths)")


def test_an_old_gpu_gets_xla_for_its_age(monkeypatch, fresh_warnings):
    """A V100's kind does not say NVIDIA ("Tesla ..."): it was called "not an NVIDIA GPU"."""
    monkeypatch.setattr(jax, "devices", lambda *a: [fake_gpu("Tesla V100-SXM2-16GB", "7.0")])
    assert attention_path("auto", jnp.bfloat16, 64, False) == "xla"
    with pytest.warns(UserWarning, match=r"cannot run here \(compute capability 7.0 < 8.0\)"):
        assert attention_path("cudnn", jnp.bfloat16, 64, False) == "xla"
    rocm = fake_gpu("AMD Instinct MI250X", "gfx90a", platform="rocm 60300")
    assert cudnn_unsupported(jnp.bfloat16, 64, rocm) == (
        "the device is AMD Instinct MI250X, not an NVIDIA GPU")
    # bench/gpu_aot.py's H100, compiled for without one: its version does not say CUDA
    assert cudnn_unsupported(jnp.bfloat16, 64, fake_gpu(
        "NVIDIA H100 80GB HBM3", "9.0", platform="PJRT C API\nNVIDIA H100 80GB HBM3")) is None


def test_attention_dropout_takes_the_explicit_path_and_says_so_once(on_gpu):
    with pytest.warns(UserWarning, match="attention dropout > 0.*explicitly"):
        assert attention_path("auto", jnp.bfloat16, 64, True) == "explicit"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert attention_path("cudnn", jnp.bfloat16, 64, True) == "explicit"
        assert attention_path("xla", jnp.bfloat16, 64, True) == "explicit"  # no cuDNN to miss
    cfg = config.load([], ["model.size=base", "model.attention_dropout=0.1"]).model
    assert attention_summary(cfg, "bfloat16") == (
        "explicit (attention dropout 0.1) in training, cuDNN flash attention (per-row key "
        "lengths) in evaluation")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_key_lengths_mask_equals_the_boolean_mask_for_right_padded_rows(dtype):
    q, k, v = qkv(dtype, batch=4)
    mask = right_padded([10, 7, 3, 1])
    by_lengths = length_attention(q, k, v, mask, "xla")
    by_mask = attention(q, k, v, mask, 0.0, None, "xla")
    assert by_lengths.dtype == by_mask.dtype == dtype
    np.testing.assert_allclose(np.asarray(by_lengths, np.float32),
                               np.asarray(by_mask, np.float32), rtol=1e-6, atol=1e-6)
    # The test can fail: a mask that is not right-padded gives other results.
    holes = mask.at[1, 2].set(False)
    assert not np.allclose(length_attention(q, k, v, holes, "xla")[1],
                           attention(q, k, v, holes, 0.0, None, "xla")[1], atol=1e-3)


def test_a_row_of_padding_alone_stays_finite_on_the_lengths_path():
    q, k, v = qkv(batch=2)
    mask = right_padded([5, 0])
    np.testing.assert_array_equal(key_lengths(mask), [5, 1])
    out = length_attention(q, k, v, mask, "xla")
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(out[1], jnp.broadcast_to(v[1, :1], out[1].shape), rtol=1e-6)


# slow: a whole model forward and backward twice (the route rule and the kernel-level
# equivalence stay in the quick tier)
@pytest.mark.slow
def test_the_model_on_the_cudnn_route_matches_the_mask_route(monkeypatch, fresh_warnings):
    # The model as it would run on a GPU with model.attention=auto (every static choice, the
    # key lengths, the call with implementation="cudnn"), with XLA's kernel in cuDNN's place.
    calls, real = [], jax.nn.dot_product_attention

    def xla_in_place_of_cudnn(*args, implementation=None, **kwargs):
        calls.append((implementation, kwargs.get("key_value_seq_lengths") is not None))
        return real(*args, implementation="xla", **kwargs)

    cfg = config.load([], ["model.vocab_size=50", "model.dropout=0.0",
                           "model.attention_dropout=0.0"]).model
    ids = jax.random.randint(jax.random.key(1), (3, 12), 5, 50)
    mask = right_padded([12, 9, 2], seq=12)
    types = jnp.zeros_like(ids)
    model = Bert(cfg, key=jax.random.key(0))

    def loss(m):
        return jnp.sum(jnp.where(mask[..., None], m(ids, types, mask), 0.0) ** 2)

    reference, ref_grads = eqx.filter_jit(jax.value_and_grad(loss))(model)
    monkeypatch.setattr("bertjax.attention.cudnn_unsupported", lambda dtype, head_dim: None)
    monkeypatch.setattr(jax.nn, "dot_product_attention", xla_in_place_of_cudnn)
    routed, grads = eqx.filter_jit(jax.value_and_grad(loss))(model)  # traced anew: patched
    assert set(calls) == {("cudnn", True)}
    np.testing.assert_allclose(routed, reference, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(eqx.filter(grads, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(ref_grads, eqx.is_array)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def assert_right_padded_and_never_empty(mask: np.ndarray) -> None:
    lengths = mask.sum(1)
    assert (lengths >= 1).all(), "a row of padding alone"
    np.testing.assert_array_equal(mask, np.arange(mask.shape[1])[None] < lengths[:, None])


@pytest.mark.parametrize("objective", ["mlm", "mlm+nsp", "mlm+sop"])
def test_pretraining_rows_are_right_padded_and_never_empty(prepared, objective):
    for split in ("train", "validation"):
        data = PretrainData(prepared, split, 16, objective, seed=3)
        batch = data.rows(0, data.num_sequences)  # every sequence of the split
        assert_right_padded_and_never_empty(batch["attention_mask"])


def test_glue_batches_are_right_padded_and_never_empty(glue_tokenizer):
    ex = rte_pairs(13)
    ex.text_a[3], ex.text_b[3] = "", ""  # an empty example still has [CLS] [SEP] [SEP]
    enc = glue_batches.encode(glue_tokenizer, ex, [8, 16, 32])
    for rows in glue_batches.batch_order(enc, 4, seed=0):  # filler rows (-1) included
        assert_right_padded_and_never_empty(glue_batches.make_batch(enc, rows)["attention_mask"])
