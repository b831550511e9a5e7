"""Jittable BERT masked-LM corruption, run on device inside the train step (row by row).

Per row, min(max_predictions, max(1, round(rate * eligible))) positions are picked uniformly
among non-special, non-padding tokens (BERT's create_pretraining_data); each becomes [MASK]
80 % of the time, a random non-special token 10 %, and stays unchanged 10 % (Devlin et al. 2019,
section 3.1). Shapes are fixed: `max_predictions` slots per row, unused ones have weight 0.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray
from tokenizers import Tokenizer

from bertjax import tokenizer as tokenizer_lib
from bertjax.config import DataConfig
from bertjax.tokenizer import SpecialTokens


class MaskedBatch(NamedTuple):
    """The corrupted inputs and the sparse prediction targets."""

    input_ids: Int[Array, "batch seq"]
    positions: Int[Array, "batch preds"]  # where to predict (0 in unused slots)
    labels: Int[Array, "batch preds"]  # the original token there (0 in unused slots)
    weights: Float[Array, "batch preds"]  # 1.0 for a real prediction, 0.0 for an unused slot


def _random_tokens(
    key: PRNGKeyArray, shape: tuple[int, ...], vocab_size: int, special: SpecialTokens
) -> Int[Array, "..."]:
    """Uniform over the vocabulary minus the special ids (whatever their positions)."""
    skip = sorted(set(special))
    draw = jax.random.randint(key, shape, 0, vocab_size - len(skip), dtype=jnp.int32)
    for s in skip:  # ascending: shift every draw at or past a special id one step up
        draw = draw + (draw >= s).astype(jnp.int32)
    return draw


def mask_tokens(
    key: PRNGKeyArray,
    input_ids: Int[Array, "batch seq"],
    attention_mask: Bool[Array, "batch seq"],
    *,
    rate: float,
    max_predictions: int,
    vocab_size: int,
    special: SpecialTokens,
) -> MaskedBatch:
    """Choose and corrupt prediction positions; all keyword arguments are static under jit."""
    batch, seq = input_ids.shape
    if not 0 < max_predictions <= seq:
        raise ValueError(f"max_predictions={max_predictions} must be in [1, seq={seq}]")
    k_pick, k_kind, k_tok = jax.random.split(key, 3)
    eligible = attention_mask
    for s in set(special):
        eligible = eligible & (input_ids != s)
    n_eligible = eligible.sum(axis=-1, dtype=jnp.int32)
    wanted = jnp.round(rate * n_eligible.astype(jnp.float32)).astype(jnp.int32)
    n_pred = jnp.minimum(jnp.minimum(max_predictions, jnp.maximum(1, wanted)), n_eligible)
    # A uniformly random subset: the eligible positions with the largest uniform scores.
    scores = jnp.where(eligible, jax.random.uniform(k_pick, (batch, seq)), -1.0)
    _, picked = jax.lax.top_k(scores, max_predictions)
    valid = jnp.arange(max_predictions, dtype=jnp.int32)[None, :] < n_pred[:, None]
    rows = jnp.arange(batch)[:, None]
    original = input_ids[rows, picked]
    kind = jax.random.uniform(k_kind, (batch, max_predictions))
    replacement = jnp.where(
        kind < 0.8,
        jnp.int32(special.mask),
        jnp.where(kind < 0.9, _random_tokens(k_tok, kind.shape, vocab_size, special), original),
    ).astype(input_ids.dtype)
    # Unused slots scatter out of bounds and are dropped, so they never touch the input.
    target = jnp.where(valid, picked, seq)
    corrupted = input_ids.at[rows, target].set(replacement, mode="drop")
    zero = jnp.zeros_like(picked)
    return MaskedBatch(
        input_ids=corrupted,
        positions=jnp.where(valid, picked, zero).astype(jnp.int32),
        labels=jnp.where(valid, original, zero).astype(jnp.int32),
        weights=valid.astype(jnp.float32),
    )


def row_masker(data_cfg: DataConfig, vocab_size: int, special: SpecialTokens):
    """mask_tokens for one row (the train step vmaps it over rows with per-row keys)."""
    fn = partial(mask_tokens, rate=data_cfg.mask_rate, max_predictions=data_cfg.predictions,
                 vocab_size=vocab_size, special=special)

    def one_row(key, input_ids, attention_mask):
        out = fn(key, input_ids[None], attention_mask[None])
        return jax.tree.map(lambda x: x[0], out)

    return one_row


def tokenizer_masker(data_cfg: DataConfig, tok: Tokenizer):
    """The train step's row masker for this data config and tokenizer: random replacements come
    from the tokenizer's ids (model rows beyond it are never inputs)."""
    return row_masker(data_cfg, tokenizer_lib.vocab_size(tok), tokenizer_lib.special_tokens(tok))
