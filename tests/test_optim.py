"""Optimizer pieces: decay mask, schedules, batch ramp arithmetic."""

import jax
import numpy as np
import pytest

from bertjax import config
from bertjax.model import Bert
from bertjax.optim import BatchRamp, decay_mask, schedule


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


def test_batch_ramp_grows_in_bounded_stages_and_counts_sequences():
    ramp = BatchRamp(micro=4, start=8, end=64, ramp_steps=100, stages=8)
    batches = [ramp.batch(s) for s in range(150)]
    assert batches[0] == 8 and batches[99] < 64 and batches[100:] == [64] * 50
    assert all(b % 4 == 0 for b in batches)
    assert batches == sorted(batches)
    assert len(set(batches)) <= 8 + 1
    for step in (0, 1, 13, 50, 99, 100, 149):
        assert ramp.sequences_before(step) == sum(batches[:step])
    steps = ramp.steps_for_tokens(20_000, seq_len=10)
    assert sum(batches[:steps]) * 10 >= 20_000 > sum(batches[:steps - 1]) * 10


def test_constant_batch_without_ramp():
    ramp = BatchRamp.from_config(config.load([], ["train.micro_batch=8"]).train, 100)
    assert {ramp.batch(s) for s in range(100)} == {8}
    np.testing.assert_equal(ramp.sequences_before(37), 37 * 8)
