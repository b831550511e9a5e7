"""Jittable BERT masked-LM corruption, run on device inside the train step (row by row).

Per row, min(max_predictions, max(1, round(rate * eligible))) positions are picked uniformly
among non-special, non-padding tokens (BERT's create_pretraining_data); each becomes [MASK]
80 % of the time, a random non-special token 10 %, and stays unchanged 10 % (Devlin et al. 2019,
section 3.1). With whole-word masking the positions are the pieces of whole words, taken in
random order while they fit (BERT's create_pretraining_data, do_whole_word_mask). Shapes are
fixed: `max_predictions` slots per row, unused ones have weight 0.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray
from tokenizers import Tokenizer

from bertjax import tokenizer as tokenizer_lib
from bertjax.config import DataConfig
from bertjax.errors import UserError
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


def whole_words(
    key: PRNGKeyArray, eligible: Bool[Array, "batch seq"], continues: Bool[Array, "batch seq"],
    budget: Int[Array, " batch"],
) -> Bool[Array, "batch seq"]:
    """The pieces of the words chosen per row: a word is an eligible piece and the eligible
    continuation pieces right after it; in random order, each word is taken when its pieces fit
    in what is left of `budget`, else skipped (as create_pretraining_data does)."""
    batch, seq = eligible.shape
    after_eligible = jnp.pad(eligible[:, :-1], ((0, 0), (1, 0)))
    starts = eligible & ~(continues & after_eligible)
    rows = jnp.arange(batch)[:, None]
    word = jnp.where(eligible, jnp.cumsum(starts, axis=1) - 1, seq)  # seq: no word (dropped)
    length = jnp.zeros((batch, seq), jnp.int32).at[rows, word].add(1, mode="drop")
    order = jnp.argsort(jnp.where(length > 0, jax.random.uniform(key, (batch, seq)), -1.0),
                        axis=1, descending=True)

    def take(count, pieces):  # one word of every row per iteration, in the rows' random order
        fits = (pieces > 0) & (count + pieces <= budget)
        return count + jnp.where(fits, pieces, 0), fits

    _, taken = jax.lax.scan(take, jnp.zeros(batch, jnp.int32),
                            jnp.take_along_axis(length, order, axis=1).T)
    chosen = jnp.zeros((batch, seq + 1), bool).at[rows, order].set(taken.T)
    return jnp.take_along_axis(chosen, word, axis=1)


def mask_tokens(
    key: PRNGKeyArray,
    input_ids: Int[Array, "batch seq"],
    attention_mask: Bool[Array, "batch seq"],
    *,
    rate: float,
    max_predictions: int,
    vocab_size: int,
    special: SpecialTokens,
    continuation: np.ndarray | None = None,
) -> MaskedBatch:
    """Choose and corrupt prediction positions; all keyword arguments are static under jit.
    `continuation` ([vocab] bool, tokenizer.continuation_pieces) turns on whole-word masking."""
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
    if continuation is None:
        # A uniformly random subset: the eligible positions with the largest uniform scores.
        scores = jnp.where(eligible, jax.random.uniform(k_pick, (batch, seq)), -1.0)
    else:  # the words' pieces (fewer than n_pred where the next word would not fit)
        picks = whole_words(k_pick, eligible, jnp.asarray(continuation)[input_ids], n_pred)
        n_pred = picks.sum(axis=-1, dtype=jnp.int32)
        scores = picks.astype(jnp.float32)
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


def row_masker(data_cfg: DataConfig, vocab_size: int, special: SpecialTokens,
               continuation: np.ndarray | None = None):
    """mask_tokens for one row (the train step vmaps it over rows with per-row keys)."""
    if data_cfg.whole_word_mask and continuation is None:  # a caller without the tokenizer
        raise UserError("data.whole_word_mask=true needs the tokenizer's word pieces here; "
                        "set data.whole_word_mask=false")
    fn = partial(mask_tokens, rate=data_cfg.mask_rate, max_predictions=data_cfg.predictions,
                 vocab_size=vocab_size, special=special,
                 continuation=continuation if data_cfg.whole_word_mask else None)

    def one_row(key, input_ids, attention_mask):
        out = fn(key, input_ids[None], attention_mask[None])
        return jax.tree.map(lambda x: x[0], out)

    return one_row


def tokenizer_masker(data_cfg: DataConfig, tok: Tokenizer):
    """The train step's row masker for this data config and tokenizer: random replacements come
    from the tokenizer's ids (model rows beyond it are never inputs)."""
    continuation = tokenizer_lib.continuation_pieces(tok) if data_cfg.whole_word_mask else None
    return row_masker(data_cfg, tokenizer_lib.vocab_size(tok), tokenizer_lib.special_tokens(tok),
                      continuation)
