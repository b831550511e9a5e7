"""Collectives of the compiled train steps on 8 CPU devices: under FSDP (with the model's sharding
hints on, as `bertjax.sharding.with_mesh` runs every step) only parameter all-gathers and gradient
reductions, no all-to-all or collective-permute (in float32 and bfloat16); data parallel only
all-reduces; and the hinted FSDP step still matches one device."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SCHEDULE, assert_trees_close, setup

from bertjax import config
from bertjax.model import Bert
from bertjax.optim import make_optimizer
from bertjax.precision import Precision
from bertjax.sharding import global_batch, make_mesh, replicated, shard_params, with_mesh
from bertjax.step import init_state, make_glue_steps, make_train_step

# Compiles whole FSDP steps for 8 devices (1 device = 8 devices stays in the quick tier).
pytestmark = pytest.mark.slow

COLLECTIVE = re.compile(r"\b(all-gather|reduce-scatter|all-reduce|all-to-all|collective-permute)"
                        r"(?:-start)?\(")
INPUTS = (jnp.int32(0), jax.random.key(1), jax.random.key(2), SCHEDULE)


def count(hlo: str) -> collections.Counter:
    return collections.Counter(m.group(1) for m in COLLECTIVE.finditer(hlo))


def compiled_pretraining_step(strategy: str, compute: str = "float32"):
    """(compiled step under the mesh, its HLO text, sharded state, global batch, 1-device run)."""
    cfg, optimizer, state, batch, spec = setup([f"mesh.strategy={strategy}",
                                                "mesh.fsdp_min_size=64",
                                                f"precision.compute={compute}"], rows=16)
    mesh = make_mesh()
    step = make_train_step(spec, optimizer, 8)
    sharded, rows = shard_params(jax.tree.map(jnp.copy, state), mesh, cfg.mesh), \
        global_batch(batch, mesh)
    # set_mesh: what with_mesh does around every call of the step. Standard promotion for bf16:
    # lowering jax's own bf16 attention backward needs it (tests/test_train_step.py's bf16 test).
    promotion = "strict" if compute == "float32" else "standard"
    with jax.set_mesh(mesh), jax.numpy_dtype_promotion(promotion):
        compiled = step.jitted.lower((rows, *INPUTS), sharded).compile()
    return compiled, compiled.as_text(), sharded, rows, (step, state, batch)


def test_fsdp_pretraining_step_holds_only_gathers_and_reductions_and_matches_one_device():
    assert jax.device_count() == 8
    compiled, hlo, sharded, rows, (step, state, batch) = compiled_pretraining_step("fsdp")
    n = count(hlo)
    assert n["all-to-all"] == 0 and n["collective-permute"] == 0, n
    assert n["all-gather"] > 0, n  # parameters really are split: FSDP gathers them
    assert n["all-reduce"] + n["reduce-scatter"] > 0, n  # and reduces their gradients
    with jax.set_mesh(make_mesh()):
        multi, m8 = compiled((rows, *INPUTS), sharded)
    single, m1 = step(state, {k: jnp.asarray(v) for k, v in batch.items()}, *INPUTS)
    np.testing.assert_allclose(m1["mlm_loss"], m8["mlm_loss"], rtol=1e-5)
    assert_trees_close(single.model, multi.model, rtol=1e-5, atol=1e-5)


def test_the_bf16_fsdp_step_holds_only_gathers_and_reductions_too():
    """bfloat16 is the GPU default: its casts and the f32 sums of the bias and position-table
    gradients (ops.add_bias) around the sharded weights bring no all-to-all or permute either
    (without the sharding hints: 4 all-to-alls, 52 collective-permutes)."""
    _, hlo, *_ = compiled_pretraining_step("fsdp", "bfloat16")
    n = count(hlo)
    assert n["all-to-all"] == 0 and n["collective-permute"] == 0, n
    assert n["all-gather"] > 0 and n["all-reduce"] + n["reduce-scatter"] > 0, n


def test_data_parallel_step_holds_only_all_reduces():
    _, hlo, *_ = compiled_pretraining_step("dp")
    n = count(hlo)
    assert set(n) == {"all-reduce"}, n


def test_fsdp_glue_steps_hold_no_all_to_all_or_collective_permute():
    cfg = config.load([], ["model.vocab_size=61", "mesh.strategy=fsdp", "mesh.fsdp_min_size=64"])
    model = Bert(cfg.model, key=jax.random.key(0), mlm=False, num_labels=3)
    optimizer = make_optimizer(cfg.optim, model)
    mesh = make_mesh()
    state = shard_params(init_state(model, optimizer, cfg.precision), mesh, cfg.mesh)
    train_step, predict = make_glue_steps(optimizer, Precision.from_names("float32"), True)
    rng = np.random.default_rng(0)
    batch = global_batch({
        "input_ids": rng.integers(5, 61, (16, 24)).astype(np.int32),
        "token_type_ids": np.zeros((16, 24), np.int32),
        "attention_mask": np.arange(24)[None] < rng.integers(3, 25, 16)[:, None],
        "labels": rng.integers(0, 3, 16).astype(np.int32), "valid": np.ones(16, bool)}, mesh)
    with jax.set_mesh(mesh):
        train = count(train_step.lower((batch, jax.random.key(0), SCHEDULE), state)
                      .compile().as_text())
        infer = count(predict.lower(state.model, batch, replicated(mesh))
                      .compile().as_text())
    for n in (train, infer):
        assert n["all-to-all"] == 0 and n["collective-permute"] == 0 and n["all-gather"] > 0, n
    # Through with_mesh, as fine-tuning calls it: it runs and its logits are finite.
    logits = with_mesh(predict, mesh)(state.model, batch, replicated(mesh))
    assert np.isfinite(np.asarray(logits)).all()
