"""The jitted train step: micro-batch split invariance, bf16 steps (MLM and GLUE) against f32,
fp16 loss scaling, skipped steps, compilation counts (the batch ramp; one program for every
learning-rate schedule), and device-count invariance of the sharded step; the validation step's
count of a split smaller than its batch."""

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    PREDS,
    SCHEDULE,
    VOCAB,
    assert_trees_close,
    fake_gpu,
    held_back,
    key_mask,
    setup,
    step_inputs,
)

from bertjax import config, tokenizer
from bertjax.data import PretrainData
from bertjax.errors import UserError
from bertjax.masking import tokenizer_masker
from bertjax.model import Bert
from bertjax.optim import make_optimizer, schedule_args
from bertjax.precision import LossScale, Precision, slow_compute_dtype
from bertjax.pretrain_loop import validation_sums
from bertjax.sharding import global_batch, make_mesh, replicated, shard_params, with_mesh
from bertjax.step import (
    StepSpec,
    apply_update,
    forward_sums,
    init_state,
    make_eval_step,
    make_glue_steps,
    make_train_step,
    mask_rows,
)
from bertjax.xla_options import compiler_options


def run_step(state, batch, spec, optimizer, micro, mesh=None):
    step = make_train_step(spec, optimizer, micro)
    if mesh is not None:
        batch = global_batch(batch, mesh)
    else:
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
    state = jax.tree.map(jnp.copy, state)  # the step donates (consumes) the state it is given
    return step(state, batch, jnp.int32(0), jax.random.key(1), jax.random.key(2), SCHEDULE)


def glue_parts(cfg, spec, arrays):
    """A GLUE batch made from setup's arrays, and a classifier's state and (train, predict)
    steps, compiled with spec's XLA options."""
    glue_batch = {"input_ids": arrays["input_ids"], "token_type_ids": arrays["token_type_ids"],
                  "attention_mask": arrays["attention_mask"],
                  "labels": arrays["pair_labels"], "valid": jnp.ones(8, bool)}
    classifier = Bert(cfg.model, key=jax.random.key(0), mlm=False, num_labels=2)
    glue_optimizer = make_optimizer(cfg.optim, eqx.filter(classifier, eqx.is_array))
    glue_train, predict = make_glue_steps(glue_optimizer, spec.precision, False,
                                          spec.xla_options)
    return glue_batch, init_state(classifier, glue_optimizer, cfg.precision), glue_train, predict


def test_train_xla_flags_reach_the_compile_of_every_step():
    # An option XLA does not know fails the compile that receives it (compiler_options checks
    # train.xla_flags before a run builds its steps; here it is given unchecked): each of the
    # four steps a run compiles must fail, so each takes the run's options.
    cfg, optimizer, state, batch, spec = setup(rows=8)
    spec = dataclasses.replace(spec, xla_options=(("xla_no_such_option", "1"),))
    arrays = jax.tree.map(jnp.asarray, batch)
    glue_batch, glue_state, glue_train, predict = glue_parts(cfg, spec, arrays)
    calls = {
        "train": lambda: run_step(state, batch, spec, optimizer, 8),
        "train, lowered and compiled (as bench/suite_items times it)": lambda: make_train_step(
            spec, optimizer, 8).jitted.lower((arrays, *step_inputs(0)), state).compile(),
        "eval": lambda: make_eval_step(spec)(state.model, arrays, jnp.int32(0), jax.random.key(1),
                                             jnp.int32(8)),
        "glue train": lambda: glue_train((glue_batch, None, SCHEDULE), glue_state),
        "glue predict": lambda: predict(glue_state.model, glue_batch,
                                        jax.sharding.make_single_device_sharding(jax.devices()[0]))}
    for name, call in calls.items():
        try:
            call()
        except jax.errors.JaxRuntimeError as e:
            assert "No such compile option: 'xla_no_such_option'" in str(e), (name, e)
        else:
            pytest.fail(f"the {name} step compiled without the run's XLA options")


@pytest.mark.parametrize("name", ["train", "eval", "glue train", "glue predict"])
def test_each_step_returns_before_its_input_is_ready(name):
    # The loops read a step's results at log lines only, so that the host reads, copies and
    # dispatches the next batch while the device runs this one; a step that waits for its own
    # result (eqx.filter_jit does, to raise its runtime errors) serialises the two. Here an
    # input is held back by a seconds-long program: a call that waited would return after it.
    cfg, optimizer, state, batch, spec = setup(rows=8)
    arrays = jax.tree.map(jnp.asarray, batch)
    glue_batch, glue_state, glue_train, predict = glue_parts(cfg, spec, arrays)
    one_device = jax.sharding.make_single_device_sharding(jax.devices()[0])
    train, evaluate = make_train_step(spec, optimizer, 8), make_eval_step(spec)
    first_row, mask_key, dropout_key, schedule = step_inputs(0)
    rows = jnp.int32(8)
    # Every argument is made (and done) before the held-back program is dispatched: XLA:CPU
    # runs a small program like a copy on the calling thread, after the programs before it.
    def fresh():  # the train steps donate (consume) the state they are given
        return jax.block_until_ready(jax.tree.map(jnp.copy, (state, glue_state)))

    calls = {  # each given its held-back input and a state
        "train": lambda x, s: train(s[0], arrays, x, mask_key, dropout_key, schedule),
        "eval": lambda x, s: evaluate(s[0].model, arrays, x, mask_key, rows),
        "glue train": lambda x, s: glue_train((dict(glue_batch, labels=x), None, SCHEDULE), s[1]),
        "glue predict": lambda x, s: predict(s[1].model, dict(glue_batch, input_ids=x),
                                             one_device)}
    ready = {"train": first_row, "eval": first_row, "glue train": glue_batch["labels"],
             "glue predict": glue_batch["input_ids"]}[name]
    # Compiled before, for an input like the held-back one (a program's output).
    jax.block_until_ready(calls[name](held_back(ready, 1), fresh()))
    states = fresh()
    held = held_back(ready)
    out = calls[name](held, states)
    assert not held.is_ready(), f"the {name} step waited for its input before returning"
    jax.block_until_ready(out)


def test_on_cpus_a_step_called_on_the_mesh_returns_when_its_result_is_ready():
    # The loops call every step through with_mesh. On 8 CPU devices, programs with collectives
    # in flight at once abort XLA:CPU (a rendezvous short of threads, log.md 2026-12-08), and a
    # CPU gains nothing by running ahead; so there the call waits.
    mesh = make_mesh()
    out = with_mesh(held_back, mesh)(jax.device_put(jnp.int32(0), replicated(mesh)))
    assert out.is_ready()


def test_train_xla_flags_are_typed_and_checked_by_xla(tmp_path):
    assert compiler_options("") == ()
    assert compiler_options("--xla_gpu_enable_triton_gemm=false --xla_gpu_dot_merger_threshold_mb=0"
                            " --xla_gpu_enable_command_buffer=") == (
        ("xla_gpu_enable_triton_gemm", False), ("xla_gpu_dot_merger_threshold_mb", "0"),
        ("xla_gpu_enable_command_buffer", ""))  # XLA refuses "false" for a bool
    # XLA_FLAGS's other spellings of a bool; the last of a repeated option wins, as there.
    assert compiler_options("--xla_cpu_enable_fast_math=1 --xla_gpu_enable_triton_gemm=FALSE "
                            "--xla_cpu_enable_fast_math=0") == (
        ("xla_cpu_enable_fast_math", False), ("xla_gpu_enable_triton_gemm", False))
    # A number for a float or a text option is that option's value, as XLA_FLAGS reads it (it
    # was typed as an int, which XLA refused), and a value int() cannot read is XLA's to refuse
    # (it was a traceback).
    assert compiler_options("--xla_gpu_auto_spmd_partitioning_memory_budget_ratio=1 "
                            "--xla_dump_hlo_module_re=123") == (
        ("xla_gpu_auto_spmd_partitioning_memory_budget_ratio", "1"),
        ("xla_dump_hlo_module_re", "123"))
    for value in ("--5", "\u00b2"):
        with pytest.raises(UserError, match=f"'{value}' is not a valid int32 value"):
            compiler_options(f"--xla_gpu_dot_merger_threshold_mb={value}")
    # XLA reads the CPU device count when the backend starts: per compile it did nothing.
    with pytest.raises(UserError, match=r"^train.xla_flags=--xla_force_host_platform_device_count"
                                        r"=8: XLA reads the number of CPU devices once, when JAX "
                                        r"starts.*XLA_FLAGS=--xla_force_host_platform_device_"):
        compiler_options("--xla_force_host_platform_device_count=8")
    # A dump folder XLA cannot create was an error logged at every compile, and exit 0.
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"^train.xla_flags=--xla_dump_to=.*a_file/dumps: cannot "
                                        r"create that folder \(Not a directory\); give a folder"):
        compiler_options(f"--xla_dump_to={tmp_path / 'a_file' / 'dumps'}")
    compiler_options(f"--xla_dump_to={tmp_path / 'new' / 'dumps'}")
    assert (tmp_path / "new" / "dumps").is_dir()
    with pytest.raises(UserError, match=r"^train.xla_flags=--xla_gpu_dot_merger_threshold_mb=x: "
                                        r"While setting option xla_gpu_dot_merger_threshold_mb, "
                                        r"'x' is not a valid int32 value; give options"):
        compiler_options("--xla_gpu_dot_merger_threshold_mb=x")


def test_validation_counts_each_sequence_of_a_split_smaller_than_its_batch_once():
    # 3 validation sequences, micro_batch 8: the batch is filled by reading the split again
    # (positions 3..7 are sequences 0..4 in another order), and those copies counted as more
    # validation text: the loss of 8 rows, weighted toward the first 5.
    _, _, state, batch, spec = setup(rows=8)
    batch["input_ids"][3:] = batch["input_ids"][[2, 0, 1, 1, 2]]
    batch["pair_labels"][3:] = batch["pair_labels"][[2, 0, 1, 1, 2]]
    eval_step, key = make_eval_step(spec), jax.random.key(1)
    as_arrays = functools.partial(jax.tree.map, jnp.asarray)
    filled = eval_step(state.model, as_arrays(batch), jnp.int32(0), key, jnp.int32(3))
    alone = eval_step(state.model, as_arrays({k: v[:3] for k, v in batch.items()}), jnp.int32(0),
                      key, jnp.int32(3))
    assert float(filled["mlm_weight"]) == float(alone["mlm_weight"]) == 3 * (PREDS - 1)
    assert float(filled["pair_weight"]) == float(alone["pair_weight"]) == 3
    for name in ("mlm_loss", "mlm_correct", "pair_loss", "pair_correct"):
        np.testing.assert_allclose(filled[name], alone[name], rtol=1e-5, err_msg=name)


def test_validation_scores_the_same_sequences_whatever_the_micro_batch(prepared):
    # It scored whole batches only, up to train.eval_batches of them: a split's last partial
    # batch was skipped (the demo scored 96 of its 113 sequences), and the sample grew and
    # shrank with micro_batch. Now: the first eval_sequences sequences (the whole split when
    # smaller), each once, with the same masks, in batches of any size.
    cfg = config.load([], ["model.vocab_size=300", "data.seq_len=16"])
    tok = tokenizer.load(prepared / "tokenizer.json")
    data = PretrainData(prepared, "validation", cfg.data.seq_len)
    spec = StepSpec(Precision.from_names("float32"), tokenizer_masker(cfg.data, tok), False,
                    False)
    model, mesh, key = Bert(cfg.model, key=jax.random.key(0)), make_mesh(), jax.random.key(1)
    eval_step = with_mesh(make_eval_step(spec), mesh)

    def masked(n):  # the prediction slots of the first n sequences, masked all at once
        first = {k: jnp.asarray(v) for k, v in data.rows(0, n).items()}
        return float(mask_rows(spec, key, first, jnp.int32(0))["weights"].sum())

    for cap in (20, 1000):  # a sample; more than the split holds
        assert data.num_sequences % 8 and min(cap, data.num_sequences) % 24  # partial batches
        by_size = {size: validation_sums(eval_step, model, data, size, cap, mesh, key)
                   for size in (8, 24)}
        assert by_size[8]["mlm_weight"] == by_size[24]["mlm_weight"] == masked(
            min(cap, data.num_sequences))
        np.testing.assert_allclose(by_size[8]["mlm_loss"], by_size[24]["mlm_loss"], rtol=1e-5)
        assert by_size[8]["mlm_correct"] == by_size[24]["mlm_correct"]


def test_splitting_into_micro_batches_leaves_the_update_unchanged():
    _, optimizer, state, batch, spec = setup()
    whole, m_whole = run_step(state, batch, spec, optimizer, micro=8)
    split, m_split = run_step(state, batch, spec, optimizer, micro=2)
    assert float(m_whole["mlm_weight"]) == float(m_split["mlm_weight"]) == 8 * (PREDS - 1)
    np.testing.assert_allclose(m_whole["mlm_loss"], m_split["mlm_loss"], rtol=1e-5)
    assert_trees_close(whole.model, split.model, rtol=1e-5, atol=1e-5)
    assert not np.allclose(whole.model.encoder.embeddings.word, state.model.encoder.embeddings.word)


def pretraining_step(compute: str):
    """(the MLM step, its arguments, the state before) at `compute`: conftest.setup's."""
    _, optimizer, state, batch, spec = setup([f"precision.compute={compute}"], rows=16)
    args = (jax.tree.map(jnp.copy, state), {k: jnp.asarray(v) for k, v in batch.items()},
            jnp.int32(0), jax.random.key(1), jax.random.key(2), SCHEDULE)
    return make_train_step(spec, optimizer, 8), args, state


def glue_step(compute: str):
    """(the GLUE train step, its arguments, the state before) at `compute`: 3 classes, rows
    right-padded to 3-24 tokens, two of 16 not valid."""
    cfg = config.load([], [f"model.vocab_size={VOCAB}", "model.dropout=0.0",
                           "model.attention_dropout=0.0", "optim.warmup=0.0", "optim.lr=1e-3",
                           f"precision.compute={compute}"])
    model = Bert(cfg.model, key=jax.random.key(0), mlm=False, num_labels=3)
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    state = init_state(model, optimizer, cfg.precision)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 25, 16)
    batch = {"input_ids": rng.integers(5, VOCAB, (16, 24)).astype(np.int32),
             "token_type_ids": (np.arange(24)[None] >= lengths[:, None] // 2).astype(np.int32),
             "attention_mask": np.arange(24)[None] < lengths[:, None],
             "labels": rng.integers(0, 3, 16).astype(np.int32), "valid": np.arange(16) < 14}
    train, _ = make_glue_steps(optimizer, Precision.from_names(compute), False)
    args = ((jax.tree.map(jnp.asarray, batch), None, SCHEDULE), jax.tree.map(jnp.copy, state))
    return train, args, state


@pytest.mark.parametrize(("build", "losses"), [(pretraining_step, ("mlm_loss", "pair_loss")),
                                               (glue_step, ("loss",))], ids=["mlm", "glue"])
def test_a_bf16_step_is_the_f32_step_to_bf16_precision_and_keeps_f32_weights(build, losses):
    """bfloat16 is the GPU default, so its whole steps (forward and backward in bf16, losses and
    gradients summed in f32, AdamW on f32 master weights) are checked against the f32 steps, not
    only the model's forward. Measured (MLM / GLUE): losses 3.5e-5 / 4.4e-5 apart, grad norms
    8e-5 / 7e-4, updates 0.999 cosine; the bounds sit well clear of those."""
    steps = {}
    for compute in ("float32", "bfloat16"):
        step, args, before = build(compute)
        # Traced under the suite's strict promotion (our code mixes no dtypes implicitly), run
        # under the standard one: lowering jax's XLA attention backward asks for a bf16 x f32
        # promotion of its own (jax 0.10, lax.dot_general's precision check), which strict
        # rejects at lowering, after our code has been traced.
        eqx.filter_make_jaxpr(step)(*args)
        with jax.numpy_dtype_promotion("standard"):
            new, metrics = step(*args)
        weights = jax.tree.leaves(eqx.filter(new.model, eqx.is_inexact_array))
        assert {x.dtype for x in weights} == {jnp.dtype(jnp.float32)}, compute  # master weights
        old = jax.tree.leaves(eqx.filter(before.model, eqx.is_inexact_array))
        steps[compute] = metrics, np.concatenate(
            [np.ravel(np.asarray(a) - np.asarray(b)) for a, b in zip(weights, old, strict=True)])
    (m32, update32), (m16, update16) = steps["float32"], steps["bfloat16"]
    for name in (*losses, "grad_norm"):
        rtol = 1e-2 if name == "grad_norm" else 1e-3
        np.testing.assert_allclose(float(m16[name]), float(m32[name]), rtol=rtol, err_msg=name)
    cosine = update16 @ update32 / np.linalg.norm(update16) / np.linalg.norm(update32)
    assert cosine > 0.99, cosine


T4 = fake_gpu("Tesla T4", "7.5")


def test_bfloat16_is_said_to_be_slow_where_tensor_cores_take_only_float16():
    """V100 and T4 tensor cores take float16 only (bfloat16 from Ampere, compute capability 8.0),
    so bfloat16 there is slow, and precision.compute=float16 is the fix; elsewhere, nothing."""
    assert slow_compute_dtype("bfloat16", T4) == (
        "precision.compute=bfloat16 on Tesla T4 (compute capability 7.5): its tensor cores take "
        "float16, not bfloat16, which runs without them; precision.compute=float16 uses them "
        "(with dynamic loss scaling)")
    assert "Tesla V100-SXM2-16GB (compute capability 7.0)" in slow_compute_dtype(
        "bfloat16", fake_gpu("Tesla V100-SXM2-16GB", "7.0"))
    for compute, device in [("float16", T4), ("float32", T4),
                            ("bfloat16", fake_gpu("NVIDIA A100-SXM4-40GB", "8.0")),
                            ("bfloat16", fake_gpu("NVIDIA H100 80GB HBM3", "9.0")),
                            ("bfloat16", fake_gpu("NVIDIA H100 80GB HBM3", "9.0",  # deviceless
                                                  "PJRT C API\nNVIDIA H100 80GB HBM3")),
                            ("bfloat16", fake_gpu("Tesla T4", None)),  # jax does not say
                            ("bfloat16", fake_gpu("AMD Instinct MI250X", "gfx90a", "rocm 60300")),
                            ("bfloat16", jax.devices("cpu")[0])]:
        assert slow_compute_dtype(compute, device) is None, (compute, device)


@pytest.mark.slow  # fp16 on CPU: slow to compile and run; not a reference check
def test_injected_fp16_overflow_skips_the_step_and_halves_the_scale():
    _, optimizer, state, batch, spec = setup(["precision.compute=float16"])
    assert state.loss_scale is not None
    # period 2, one finite step made: a step taken as finite would keep 3e38 (not doubled to inf);
    # the same step program as the next test's (its period and micro-batches), compiled once
    huge = LossScale(jnp.asarray(3e38, jnp.float32), jnp.asarray(1, jnp.int32), 2)
    state = dataclasses.replace(state, loss_scale=huge)
    new, metrics = run_step(state, batch, spec, optimizer, micro=4)
    assert not bool(metrics["finite"])
    assert float(new.loss_scale.scale) == pytest.approx(1.5e38)
    assert int(new.loss_scale.finite_steps) == 0
    assert_trees_close(new.model, state.model, rtol=0, atol=0)
    assert_trees_close(new.opt_state, state.opt_state, rtol=0, atol=0)


@pytest.mark.slow  # fp16 on CPU: slow to compile and run; not a reference check
def test_fp16_finite_steps_train_and_grow_the_scale_after_the_period():
    _, optimizer, state, batch, spec = setup(["precision.compute=float16"])
    state = dataclasses.replace(state, loss_scale=LossScale.create(1024.0, 2))
    s1, m1 = run_step(state, batch, spec, optimizer, micro=4)
    assert bool(m1["finite"]) and float(s1.loss_scale.scale) == 1024.0
    s2, m2 = run_step(s1, batch, spec, optimizer, micro=4)
    assert bool(m2["finite"]) and float(s2.loss_scale.scale) == 2048.0
    assert float(m2["mlm_loss"]) < float(m1["mlm_loss"])


def gradscaler_update(scale, tracker, overflow, period):
    """torch.amp.GradScaler's update (_amp_update_scale_, growth 2, backoff 0.5) written out,
    with bertjax's floor at 1 for a scale that is above it."""
    if overflow:
        return (max(scale * 0.5, 1.0) if scale > 1 else scale), 0
    if tracker + 1 < period:
        return scale, tracker + 1
    grown = float(np.float32(scale) * np.float32(2.0))
    return (grown if np.isfinite(grown) else scale), 0


@pytest.mark.parametrize(("initial", "period"), [(2.0**15, 3), (2.0**15, 1), (4.0, 5),
                                                 (0.25, 1000), (3e38, 1)])
def test_the_loss_scale_follows_gradscalers_rule(initial, period):
    # It doubled to inf at the top of float32 (then every step overflowed and halved inf to inf:
    # no update ever again; GradScaler keeps the last finite scale), and a scale set below 1
    # rose to 1 on an overflow.
    overflows = np.random.default_rng(0).random(300) < 0.15
    ours, theirs = LossScale.create(initial, period), (float(np.float32(initial)), 0)
    for overflow in overflows:
        ours, theirs = ours.update(jnp.asarray(not overflow)), gradscaler_update(
            *theirs, overflow, period)
        assert (float(ours.scale), int(ours.finite_steps)) == theirs


@pytest.mark.parametrize(("scale", "grad", "loss", "overflow"), [
    (4.0, np.inf, 1.0, True),  # the scale's own: it halves, the divergence watch looks away
    (1.0, np.inf, 1.0, False),  # at the floor: no halving cures it
    (4.0, np.nan, np.nan, False),  # a non-finite loss is not the scale's
    (4.0, 8.0, 1.0, False)])  # applied
def test_apply_update_says_which_skipped_steps_are_the_loss_scales(scale, grad, loss, overflow):
    _, optimizer, state, _, _ = setup(["precision.compute=float16"])
    state = dataclasses.replace(state, loss_scale=LossScale.create(scale, 5))
    grads = jax.tree.map(lambda p: jnp.full_like(p, grad), eqx.filter(state.model, eqx.is_array))
    _, info = eqx.filter_jit(apply_update)(optimizer, state, grads, jnp.float32(loss), SCHEDULE)
    assert bool(info["overflow"]) is overflow
    assert bool(info["finite"]) is (grad == 8.0)


@pytest.mark.slow  # two compilations to count them; not a reference check
def test_one_program_serves_every_learning_rate_and_run_length():
    # The schedule's numbers were constants of the program: another optim.lr, warm-up or
    # train.steps compiled the step again (a tiny CLI run: 4.4 s warm, 9.5 s with another lr),
    # and a rollback's lower rate compiled a second program.
    cfg, optimizer, state, batch, spec = setup(rows=8)
    traces = []

    def counted_mask(*args):
        traces.append(1)
        return key_mask(*args)

    step = make_train_step(dataclasses.replace(spec, mask_fn=counted_mask), optimizer, micro=8)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    inputs = (jnp.int32(0), jax.random.key(1), jax.random.key(2))
    before = np.asarray(state.model.pooler.weight)
    moved = []
    for schedule in (SCHEDULE,  # lr 1e-3, no warm-up, 10 steps
                     schedule_args(dataclasses.replace(cfg.optim, lr=5e-4), 1000),
                     schedule_args(cfg.optim, 10, factor=0.5),  # a rollback's
                     schedule_args(dataclasses.replace(cfg.optim, warmup=0.5), 10)):  # lr 0
        new, _ = step(jax.tree.map(jnp.copy, state), batch, *inputs, schedule)  # (donated)
        moved.append(np.asarray(new.model.pooler.weight) - before)
    assert len(traces) == 1
    # Adam's first update is linear in the rate: each step moved the weights by its own (to the
    # rounding of f32 weights of ~0.02, ~2e-9).
    np.testing.assert_allclose(moved[1], moved[0] / 2, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(moved[2], moved[0] / 2, rtol=1e-5, atol=1e-8)
    assert np.abs(moved[0]).max() > 1e-4 and not moved[3].any()


def test_ramp_recompiles_once_per_accumulation_count():
    _, optimizer, state, batch, spec = setup(rows=8)
    traces = []  # the row masker runs once per trace of the step, i.e. once per compilation

    def counted_mask(*args):
        traces.append(args[1].shape)
        return key_mask(*args)

    step = make_train_step(dataclasses.replace(spec, mask_fn=counted_mask), optimizer, micro=2)
    args = (jnp.int32(0), jax.random.key(1), jax.random.key(2), SCHEDULE)
    for rows in (2, 4, 4, 8, 8, 2):  # 3 distinct global batches -> 3 compilations
        part = {k: jnp.asarray(v[:rows]) for k, v in batch.items()}
        state, _ = step(state, part, *args)
    assert len(traces) == 3


@functools.cache
def one_device_step():
    """The single-device step both strategies are compared with (the mesh settings do not
    enter it), computed once: a compilation is most of these tests' time."""
    _, optimizer, state, batch, spec = setup(rows=16)
    return run_step(state, batch, spec, optimizer, micro=8)


def test_the_gradient_is_that_of_the_mean_loss_over_the_real_predictions():
    """The step divides the summed MLM loss by the number of real predictions (weight 1; the
    padding slots weigh 0) in the whole batch, across its micro-batches, and the pair loss by
    the rows. A wrong count hardly changes what AdamW learns (it is invariant to a constant loss
    scale), so the seeds' reproduction band cannot see one (only the test seed's own band does:
    log.md, session 14); this says so in seconds."""
    _, _, state, batch, spec = setup(rows=16)
    masked = mask_rows(spec, jax.random.key(1), {k: jnp.asarray(v) for k, v in batch.items()},
                       jnp.int32(0))
    assert float(masked["weights"].sum()) == 16 * (PREDS - 1) < masked["weights"].size

    def mean_loss(model):
        sums = forward_sums(model, masked, spec, None)
        return sums["mlm_loss"] / sums["mlm_weight"] + sums["pair_loss"] / 16

    expected = optax.tree.norm(eqx.filter_jit(eqx.filter_grad(mean_loss))(state.model))
    _, metrics = one_device_step()  # micro-batches of 8: two accumulated
    np.testing.assert_allclose(metrics["grad_norm"], expected, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["dp", "fsdp"])
def test_eight_devices_match_one_device(strategy):
    assert jax.device_count() == 8
    cfg, optimizer, state, batch, spec = setup([f"mesh.strategy={strategy}",
                                                "mesh.fsdp_min_size=64"], rows=16)
    single, m1 = one_device_step()
    mesh = make_mesh()
    sharded_state = shard_params(state, mesh, cfg.mesh)
    if strategy == "fsdp":
        word = sharded_state.model.encoder.embeddings.word
        assert word.sharding.spec != jax.sharding.PartitionSpec()  # really split
        assert word.addressable_shards[0].data.size == word.size // 8
    multi, m8 = run_step(sharded_state, batch, spec, optimizer, micro=8, mesh=mesh)
    np.testing.assert_allclose(m1["mlm_loss"], m8["mlm_loss"], rtol=1e-5)
    assert_trees_close(single.model, multi.model, rtol=1e-5, atol=1e-5)
