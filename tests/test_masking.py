"""MLM masking statistics on a large batch (tight bounds): prediction counts per row, the
80/10/10 split, specials and padding never touched, fixed shapes, one compilation."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models

from bertjax import masking, tokenizer
from bertjax.config import DataConfig
from bertjax.errors import UserError
from bertjax.masking import MaskedBatch, mask_tokens
from bertjax.tokenizer import SpecialTokens

OURS = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)
BERT = SpecialTokens(pad=0, unk=100, cls=101, sep=102, mask=103)
masker = jax.jit(mask_tokens, static_argnames=("rate", "max_predictions", "vocab_size", "special"))


def make_batch(special: SpecialTokens, vocab: int, rows: int = 4096, seq: int = 64, seed: int = 0):
    """Framed rows with random lengths, padding, a few in-text [UNK]s and an empty row."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, rows)
    lengths[0] = 2  # [CLS] [SEP] only: nothing to predict
    ordinary = np.setdiff1d(np.arange(vocab), list(special))
    ids = rng.choice(ordinary, (rows, seq)).astype(np.int32)
    ids[rng.random((rows, seq)) < 0.02] = special.unk
    pos = np.arange(seq)
    ids[:, 0] = special.cls
    ids[np.arange(rows), lengths - 1] = special.sep
    ids[pos >= lengths[:, None]] = special.pad
    return ids, pos < lengths[:, None]


@pytest.mark.parametrize("special, vocab, rate, preds", [(OURS, 8192, 0.15, 10),
                                                         (BERT, 30522, 0.3, 20)])
def test_masking_statistics(special, vocab, rate, preds):
    ids, attn = make_batch(special, vocab)
    out = masker(jax.random.key(1), jnp.asarray(ids), jnp.asarray(attn), rate=rate,
                 max_predictions=preds, vocab_size=vocab, special=special)
    assert isinstance(out, MaskedBatch)
    new, pos, lab, w = (np.asarray(x) for x in out)
    assert new.shape == ids.shape and pos.shape == lab.shape == w.shape == (len(ids), preds)
    assert pos.dtype == lab.dtype == np.int32 and w.dtype == np.float32
    eligible = attn & ~np.isin(ids, list(special))
    n_elig = eligible.sum(1)
    want = np.minimum(np.minimum(preds, np.maximum(1, np.round(rate * n_elig))), n_elig)
    assert np.array_equal(w.sum(1), want) and w[0].sum() == 0
    rows = np.arange(len(ids))[:, None]
    real = w > 0
    assert eligible[rows, pos][real].all()  # only eligible tokens are ever predicted
    assert all(len(set(p[r])) == r.sum() for p, r in zip(pos, real, strict=True))
    assert np.array_equal(lab[real], ids[rows, pos][real]) and not lab[~real].any()
    changed = new != ids
    picked = np.zeros_like(attn)
    picked[np.broadcast_to(rows, pos.shape)[real], pos[real]] = True
    assert not (changed & ~picked).any()  # specials, padding and unpicked tokens stay as they are
    got = new[rows, pos][real]
    n = real.sum()
    frac_mask = (got == special.mask).mean()
    frac_same = (got == lab[real]).mean()
    frac_random = 1 - frac_mask - frac_same
    sigma = lambda p: np.sqrt(p * (1 - p) / n)  # noqa: E731 (std of a proportion)
    assert n > 15_000 and abs(frac_mask - 0.8) < 4 * sigma(0.8)  # i.e. within ~0.012 or less
    assert abs(frac_same - 0.1) < 4 * sigma(0.1) and abs(frac_random - 0.1) < 4 * sigma(0.1)
    randoms = got[(got != special.mask) & (got != lab[real])]
    assert not np.isin(randoms, list(special)).any() and randoms.max() < vocab
    assert randoms.min() >= 0 and len(np.unique(randoms)) > 0.5 * min(len(randoms), vocab)
    assert abs(real.sum() / n_elig.sum() - rate) < 0.02  # overall rate (rounding per row)


def test_random_tokens_cover_the_ordinary_vocabulary():
    special, vocab = SpecialTokens(0, 3, 5, 6, 9), 12  # specials scattered between words
    ids = np.full((20000, 8), 7, np.int32)
    ids[:, 0], ids[:, -1] = special.cls, special.sep
    out = masker(jax.random.key(2), jnp.asarray(ids), jnp.ones(ids.shape, bool), rate=0.5,
                 max_predictions=3, vocab_size=vocab, special=special)
    got = np.asarray(out.input_ids)[np.arange(len(ids))[:, None], np.asarray(out.positions)]
    got = got[np.asarray(out.weights) > 0]
    counts = np.bincount(got[(got != 7) & (got != special.mask)], minlength=vocab)
    ordinary = [1, 2, 4, 7, 8, 10, 11]
    assert not counts[list(special)].any()
    seen = counts[ordinary]
    assert seen[ordinary.index(7)] == 0  # drawing the original token leaves it unchanged
    others = np.delete(seen, ordinary.index(7))
    assert others.min() > 0.8 * others.mean() and others.max() < 1.2 * others.mean()


def test_deterministic_in_key_and_compiled_once():
    ids, attn = make_batch(OURS, 500, rows=64, seq=32)
    kw = dict(rate=0.15, max_predictions=5, vocab_size=500, special=OURS)
    traces = []

    def traced(*args, **kwargs):
        traces.append(1)
        return mask_tokens(*args, **kwargs)

    fn = jax.jit(traced, static_argnames=tuple(kw))
    a = fn(jax.random.key(3), jnp.asarray(ids), jnp.asarray(attn), **kw)
    b = fn(jax.random.key(3), jnp.asarray(ids), jnp.asarray(attn), **kw)
    c = fn(jax.random.key(4), jnp.asarray(ids), jnp.asarray(attn), **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a.positions, c.positions)
    fn(jax.random.key(5), jnp.asarray(ids[::-1].copy()), jnp.asarray(attn[::-1].copy()), **kw)
    assert len(traces) == 1


def words_of(eligible: np.ndarray, continues: np.ndarray) -> list[list[int]]:
    """The words of one row, as create_pretraining_data groups them: an eligible piece and the
    eligible '##' pieces right after it."""
    words = []
    for i in np.flatnonzero(eligible):
        if continues[i] and i > 0 and eligible[i - 1]:
            words[-1].append(i)
        else:
            words.append([i])
    return words


@pytest.mark.parametrize("rate, preds", [(0.15, 10), (0.5, 6)])
def test_whole_word_masking_takes_whole_words_while_they_fit(rate, preds):
    """Each word is predicted in all its pieces or in none; the pieces never exceed the row's
    budget, and a word left out would not have fit in what was left (BERT's greedy order)."""
    vocab = 600
    continuation = np.zeros(vocab, bool)
    continuation[300:] = True  # ids 300.. are '##' pieces: about half the ordinary draws
    ids, attn = make_batch(OURS, vocab, rows=2048)
    fn = jax.jit(partial(mask_tokens, rate=rate, max_predictions=preds, vocab_size=vocab,
                         special=OURS, continuation=continuation))
    out = fn(jax.random.key(6), jnp.asarray(ids), jnp.asarray(attn))
    new, pos, lab, w = (np.asarray(x) for x in out)
    eligible = attn & ~np.isin(ids, list(OURS))
    n_elig = eligible.sum(1)
    budget = np.minimum(np.minimum(preds, np.maximum(1, np.round(rate * n_elig))), n_elig)
    filled, lengths = 0, []
    for r in range(len(ids)):
        picked = set(pos[r][w[r] > 0].tolist())
        assert len(picked) == w[r].sum() <= budget[r]
        assert np.array_equal(lab[r][w[r] > 0], ids[r, pos[r][w[r] > 0]])
        assert not ((new[r] != ids[r]) & ~np.isin(np.arange(ids.shape[1]), list(picked))).any()
        words = words_of(eligible[r], continuation[ids[r]])
        left = budget[r] - len(picked)
        for word in words:
            taken = picked & set(word)
            assert not taken or taken == set(word), (r, word, picked)
            assert taken or len(word) > left, (r, word, left)  # it would have fitted
            lengths += [len(word)] if taken else []
        filled += len(picked)
    assert filled > 0.9 * budget.sum()  # the leftovers are small
    assert max(lengths) >= 3 and np.mean(np.array(lengths) > 1) > 0.2  # long words are taken


def test_whole_word_masking_of_unbroken_words_is_token_masking_in_count():
    ids, attn = make_batch(BERT, 30522, rows=512)
    out = masker(jax.random.key(7), jnp.asarray(ids), jnp.asarray(attn), rate=0.15,
                 max_predictions=10, vocab_size=30522, special=BERT)
    whole = jax.jit(partial(mask_tokens, rate=0.15, max_predictions=10, vocab_size=30522,
                            special=BERT, continuation=np.zeros(30522, bool)))
    got = whole(jax.random.key(7), jnp.asarray(ids), jnp.asarray(attn))
    assert np.array_equal(np.asarray(got.weights).sum(1), np.asarray(out.weights).sum(1))


def test_whole_word_masking_groups_a_real_tokenizers_pieces(tmp_path):
    """Through the train step's masker: the pieces of one long word go together."""
    from conftest import bert_style_tokenizer

    tok = bert_style_tokenizer(tmp_path / "tok.json")
    continues = tokenizer.continuation_pieces(tok)
    assert continues[tok.token_to_id("##s")] and not continues[tok.token_to_id("cat")]
    cfg = DataConfig(seq_len=16, mask_rate=0.3, whole_word_mask=True)  # 2 of the 7 pieces
    one_row = masking.tokenizer_masker(cfg, tok)
    pieces = tok.encode("cats dogs cat cats").ids  # cat ##s dog ##s cat cat ##s
    ids = np.zeros(16, np.int32)
    ids[:len(pieces) + 2] = [tok.token_to_id("[CLS]"), *pieces, tok.token_to_id("[SEP]")]
    rows = jax.jit(jax.vmap(one_row))(jax.random.split(jax.random.key(0), 64),
                                      jnp.tile(ids, (64, 1)), jnp.tile(ids > 0, (64, 1)))
    words = [{1, 2}, {3, 4}, {5}, {6, 7}]
    seen = []
    for p, w in zip(np.asarray(rows.positions), np.asarray(rows.weights), strict=True):
        picked = set(p[w > 0].tolist())
        taken = [word for word in words if word <= picked]
        assert picked == set().union(*taken) and 1 <= len(picked) <= 2, picked
        seen += taken
    assert all(word in seen for word in words)
    with pytest.raises(UserError, match="needs the tokenizer's word pieces"):
        masking.row_masker(cfg, 100, OURS)
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    with pytest.raises(UserError, match="needs a WordPiece tokenizer.*this one is BPE"):
        tokenizer.continuation_pieces(bpe)
