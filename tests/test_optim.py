"""Optimizer pieces: decay mask, schedules (optax's, with their numbers as arguments), batch ramp
arithmetic."""

from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax
import pytest

from bertjax import config
from bertjax.model import Bert
from bertjax.optim import BatchRamp, decay_mask, make_optimizer, schedule, schedule_args
from bertjax.pretrain import size_run

ROOT = Path(__file__).resolve().parent.parent


def test_decay_mask_decays_matrices_and_embeddings_only():
    cfg = config.load([], ["model.vocab_size=50"])
    model = Bert(cfg.model, key=jax.random.key(0), nsp=True)
    mask = decay_mask(model)
    blocks = mask.encoder.blocks
    assert blocks.attn.qkv.weight and blocks.ffn.up.weight and blocks.ffn.down.weight
    assert mask.encoder.embeddings.word and mask.encoder.embeddings.position
    assert mask.pooler.weight and mask.nsp.weight
    # Stacked biases and LayerNorm parameters are 2-D ([layers, dim]) yet must not decay.
    assert model.encoder.blocks.ffn.up.bias.ndim == 2
    assert not blocks.ffn.up.bias and not blocks.norm1.weight and not blocks.norm2.bias
    assert not mask.encoder.embeddings.norm.weight and not mask.encoder.final_norm.bias
    assert not mask.mlm.bias and not mask.mlm.norm.weight and mask.mlm.transform.weight


@pytest.mark.parametrize("name", ["one_cycle", "linear", "constant"])
def test_schedules_warm_up_to_the_peak(name):
    cfg = config.load([], [f"optim.schedule={name}", "optim.lr=1.0", "optim.warmup=0.1",
                           "optim.final_lr_fraction=0.01"]).optim
    lr = schedule(cfg, 1000)
    assert float(lr(0)) == 0.0
    assert float(lr(50)) == pytest.approx(0.5)
    assert float(lr(100)) == pytest.approx(1.0)
    end = float(lr(1000))
    assert end == pytest.approx(1.0 if name == "constant" else 0.01, abs=1e-6)
    if name == "one_cycle":  # cosine: halfway through the anneal sits halfway between
        assert float(lr(550)) == pytest.approx(0.505, abs=1e-3)


def optax_adamw(cfg, total_steps: int, params) -> optax.GradientTransformation:
    """The optimizer as bertjax built it until 2026-12-05: optax's schedules, their numbers
    constants of the program."""
    warmup = int(cfg.warmup * total_steps)
    rest = max(total_steps - warmup, 1)
    after = {"one_cycle": optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.final_lr_fraction),
             "linear": optax.linear_schedule(cfg.lr, cfg.lr * cfg.final_lr_fraction, rest),
             "constant": optax.constant_schedule(cfg.lr)}[cfg.schedule]
    lr = after if warmup == 0 else optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])
    return optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adamw(
        lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
        mask=decay_mask(params)))


@pytest.mark.parametrize("name", ["one_cycle", "linear", "constant"])
@pytest.mark.parametrize("warmup", [0.0, 0.3])
def test_schedules_are_optaxs_with_their_numbers_as_arguments(name, warmup):
    cfg = config.load([], [f"optim.schedule={name}", f"optim.warmup={warmup}"]).optim
    model = Bert(config.load([], ["model.vocab_size=50", "model.size=tiny", "model.num_layers=1",
                                  "model.hidden_size=32", "model.num_heads=2"]).model,
                 key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    ours, theirs = make_optimizer(cfg, params), optax_adamw(cfg, 10, params)
    # The same state (a checkpoint of either restores into the other) ...
    state = ours.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(theirs.init(params))
    # ... and the same updates, step after step (the rates agree to ~1e-5: the warm-up's
    # arithmetic cancels, and XLA folds optax's constants its own way).
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
    mine = eqx.filter_jit(lambda s, g, p, args: ours.update(g, s, p, schedule=args))
    its = eqx.filter_jit(lambda s, g, p: theirs.update(g, s, p))
    a, b = state, state
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(13):  # past the end of the 10-step schedule
            mine_u, a = mine(a, grads, params, schedule_args(cfg, 10))
            its_u, b = its(b, grads, params)
            for x, y in zip(jax.tree.leaves(mine_u), jax.tree.leaves(its_u), strict=True):
                np.testing.assert_allclose(x, y, rtol=3e-5, atol=1e-12)


def test_batch_ramp_grows_in_bounded_stages_and_counts_sequences():
    ramp = BatchRamp(micro=4, start=8, end=64, ramp_steps=100, stages=8)
    batches = [ramp.batch(s) for s in range(150)]
    assert batches[0] == 8 and batches[99] < 64 and batches[100:] == [64] * 50
    assert all(b % 4 == 0 for b in batches)
    assert batches == sorted(batches)
    assert len(set(batches)) <= 8 + 1
    for step in (0, 1, 13, 50, 99, 100, 149):
        assert ramp.sequences_before(step) == sum(batches[:step])


def test_constant_batch_without_ramp():
    ramp = BatchRamp.from_config(config.load([], ["train.micro_batch=8"]).train, 100)
    assert {ramp.batch(s) for s in range(100)} == {8}
    np.testing.assert_equal(ramp.sequences_before(37), 37 * 8)


@pytest.mark.parametrize("ramp", [0.0, 0.1, 0.5, 1.0])
def test_a_token_budget_is_read_in_full_whatever_the_ramp(ramp):
    # The step count was sized on a ramp spanning another step count: train.tokens=30,000,000
    # with batch_ramp=1.0 trained 1,413 steps that read 21,147,648 tokens (70 %), exit 0.
    cfg = config.load([], ["train.steps=null", "train.tokens=30000000", "data.seq_len=128",
                           "train.micro_batch=8", "train.batch_start=8", "train.batch_end=256",
                           f"train.batch_ramp={ramp}"])
    steps, ramp_used = size_run(cfg)
    assert ramp_used == BatchRamp.from_config(cfg.train, steps)
    reads = lambda s: BatchRamp.from_config(cfg.train, s).sequences_before(s) * 128  # noqa: E731
    assert reads(steps) >= 30_000_000 > reads(steps - 1)


def test_a_step_count_a_token_budget_overrides_is_said():
    """`train configs/pretrain_base.yaml train.steps=100` trained the 30 B tokens' 59,644 steps
    without a word: train.tokens wins (its doc), and now says so."""
    import warnings

    cfg = config.load([str(ROOT / "configs/pretrain_base.yaml")], ["train.steps=100"])
    with pytest.warns(UserWarning, match=r"^train.steps=100 is not used: train.tokens="
                                         r"30,000,000,000 sets the run's length \(59,644 steps\)"):
        assert size_run(cfg)[0] == 59_644
    with warnings.catch_warnings():  # the config as written (steps: null) says nothing
        warnings.simplefilter("error")
        assert size_run(config.load([str(ROOT / "configs/pretrain_base.yaml")], []))[0] == 59_644
        # Nor does a token budget where train.steps was never written: that was "train.steps=
        # 1000 is not used" for the default, until `train.steps: null` was added by hand.
        budget = config.load([], ["train.tokens=1e6", "data.seq_len=128"])
        assert budget.train.steps is None and size_run(budget)[0] == -(-1_000_000 // (32 * 128))
        assert config.load().train.steps == 1000  # no budget: the default


def test_a_ramp_over_every_step_says_it_never_trains_at_the_end_batch():
    """train.batch_ramp=1.0 from 8 to 64 in 8 stages trained at most 56, without a word."""
    import warnings

    ramp = ["train.micro_batch=8", "train.batch_start=8", "train.batch_end=64"]
    whole = BatchRamp.from_config(config.load([], [*ramp, "train.batch_ramp=1.0"]).train, 100)
    with pytest.warns(UserWarning, match=r"^the batch ramp spans all 100 steps, so the last "
                                         r"batch trained is 56, never train.batch_end=64 "):
        whole.warn_if_end_unreached(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fraction in (0.0, 0.9):
            train = config.load([], [*ramp, f"train.batch_ramp={fraction}"]).train
            BatchRamp.from_config(train, 100).warn_if_end_unreached(100)
        BatchRamp.from_config(config.load([], ramp[:1]).train, 100).warn_if_end_unreached(100)
