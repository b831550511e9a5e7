"""Loader: contiguous framed chunks, per-epoch permutations, exact resume, process slices that
add up to the global batch, NSP/SOP pairs and label balance, prefetch."""

import json
import shutil

import numpy as np
import pytest
from conftest import load_cfg, sentences

from bertjax import prepare
from bertjax.data import Permutation, Prefetcher, PretrainData
from bertjax.errors import UserError

SEQ = 16


def stream(directory, split="train"):
    meta = json.loads((directory / "meta.json").read_text())
    return np.fromfile(directory / f"{split}.bin", meta["dtype"]).astype(np.int64)


def test_permutation_is_a_bijection_keyed_by_seed_and_epoch():
    for n in (1, 2, 3, 7, 64, 1000, 4097):
        assert sorted(Permutation(n, 3, 0)(np.arange(n))) == list(range(n))
    a, b, c = (Permutation(1000, s, e)(np.arange(1000)) for s, e in ((0, 0), (0, 1), (1, 0)))
    assert (a != b).mean() > 0.9 and (a != c).mean() > 0.9
    assert np.array_equal(a, Permutation(1000, 0, 0)(np.arange(1000)))


def test_mlm_rows_are_framed_contiguous_chunks(prepared):
    data = PretrainData(prepared, "train", SEQ, shuffle=False)
    sp, tokens = data.special, stream(prepared)
    batch = data.rows(0, data.num_sequences)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == batch["token_type_ids"].dtype == np.int32 and mask.dtype == bool
    assert (ids[:, 0] == sp.cls).all() and not batch["token_type_ids"].any()
    lengths = mask.sum(1)
    assert (ids[np.arange(len(ids)), lengths - 1] == sp.sep).all()
    body = np.concatenate([row[1:n - 1] for row, n in zip(ids, lengths, strict=True)])
    assert np.array_equal(body, tokens)  # every token once, in order, nothing else
    assert (lengths[:-1] == SEQ).all() and (ids[-1, lengths[-1]:] == sp.pad).all()


def test_each_epoch_is_a_permutation_and_differs(prepared):
    data = PretrainData(prepared, "train", SEQ, seed=5)
    n = data.num_sequences
    first, second = data.sequence_index(np.arange(n)), data.sequence_index(np.arange(n, 2 * n))
    assert sorted(first) == sorted(second) == list(range(n))
    assert (first != second).mean() > 0.9
    other = PretrainData(prepared, "train", SEQ, seed=6).sequence_index(np.arange(n))
    assert (first != other).mean() > 0.9


def schedule(steps: int) -> list[tuple[int, int]]:
    """(start, count) per step with a batch ramp 4 -> 12, as the trainer computes it."""
    out, start = [], 0
    for step in range(steps):
        count = 4 * min(3, 1 + step // 3)
        out.append((start, count))
        start += count
    return out


@pytest.mark.parametrize("objective", ["mlm", "mlm+nsp"])
def test_resume_matches_uninterrupted_run(prepared, objective):
    spans = schedule(40)  # > 1 epoch for mlm, so the epoch boundary is crossed too
    full = [PretrainData(prepared, "train", SEQ, objective, 7).rows(*s) for s in spans]
    for k in (0, 17, 39):  # a fresh process resuming at step k, running to the end
        resumed = PretrainData(prepared, "train", SEQ, objective, 7)
        for step in range(k, len(spans)):
            got = resumed.rows(*spans[step])
            assert all(np.array_equal(full[step][key], got[key]) for key in got)


@pytest.mark.parametrize("objective", ["mlm", "mlm+sop"])
def test_process_slices_partition_the_global_batch(prepared, objective):
    data = PretrainData(prepared, "train", SEQ, objective, seed=1)
    start, batch, procs = 1000, 32, 2
    whole = data.rows(start, batch)
    local = batch // procs
    parts = [PretrainData(prepared, "train", SEQ, objective, seed=1).rows(start + p * local, local)
             for p in range(procs)]
    for key in whole:
        assert np.array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    index = [data.sequence_index(start + p * local + np.arange(local)) for p in range(procs)]
    assert not set(index[0]) & set(index[1])


def contiguous(tokens: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """Start offsets where `piece` occurs in `tokens`."""
    windows = np.lib.stride_tricks.sliding_window_view(tokens, len(piece))
    return np.flatnonzero((windows == piece).all(1))


@pytest.mark.parametrize("objective", ["mlm+nsp", "mlm+sop"])
def test_pairs_structure_order_and_label_balance(prepared, objective):
    data = PretrainData(prepared, "train", SEQ, objective, seed=2)
    tokens, sp = stream(prepared), data.special
    enders = data.enders
    offsets = np.cumsum(np.fromfile(prepared / "train.lengths", np.uint32), dtype=np.int64)
    offsets = np.concatenate([[0], offsets])

    def document(i: int) -> int:
        return int(np.searchsorted(offsets, i, side="right")) - 1

    # Chunk j of document d is tokens[starts[j]:stops[j]], recomputed from the lengths file.
    starts, stops = [], []
    for d in range(len(offsets) - 1):
        text_len = int(offsets[d + 1] - offsets[d]) - 1  # without the closing [SEP]
        n = -(-text_len // (SEQ - 3)) if text_len >= 2 else 0
        starts += [int(offsets[d]) + k * text_len // n for k in range(n)]
        stops += [int(offsets[d]) + (k + 1) * text_len // n for k in range(n)]
    n, checked, cut_at_end = 2000, 0, 0
    batch = data.rows(0, n)
    labels, index = batch["pair_labels"], data.sequence_index(np.arange(n))
    assert labels.dtype == np.int32 and abs(labels.mean() - 0.5) < 3.5 * 0.5 / np.sqrt(n)
    for r in range(300):
        ids, types, mask = (batch[k][r] for k in ("input_ids", "token_type_ids", "attention_mask"))
        real = ids[mask]
        seps = np.flatnonzero(real == sp.sep)
        assert real[0] == sp.cls and len(seps) == 2 and seps[1] == len(real) - 1
        assert np.array_equal(types[mask], (np.arange(len(real)) > seps[0]).astype(np.int32))
        assert not ids[~mask].any() or (ids[~mask] == sp.pad).all()
        a, b = real[1:seps[0]], real[seps[0] + 1:-1]
        chunk = tokens[starts[index[r]]:stops[index[r]]]
        first = b if objective == "mlm+sop" and labels[r] else a
        assert len(a) and len(b) and np.array_equal(first, chunk[:len(first)])
        # A is cut after a sentence end whenever the chunk has one before its last token.
        if np.isin(chunk[:-1], enders).any():
            assert first[-1] in enders
            cut_at_end += 1
        if labels[r] and objective == "mlm+nsp":
            # B: from another document, starting at one of its chunks' first sentence start.
            where_b = [i for i in contiguous(tokens, b) if document(i) != document(starts[index[r]])
                       and (i in starts or tokens[i - 1] in enders)]
            assert where_b and len(b) <= len(chunk) - len(a)
            checked += 1
        else:  # A then B (or B then A for a swapped SOP pair) is the chunk itself
            joined = np.concatenate([b, a] if objective == "mlm+sop" and labels[r] else [a, b])
            assert np.array_equal(joined, chunk)
    assert cut_at_end > 50 and (checked > 50 or objective == "mlm+sop")
    again = PretrainData(prepared, "train", SEQ, objective, seed=2).rows(0, 64)
    assert all(np.array_equal(again[k], batch[k][:64]) for k in again)


def test_prefetch_reads_ahead_in_order_and_hands_errors_over(prepared):
    data = PretrainData(prepared, "train", SEQ)
    spans = schedule(6)
    with Prefetcher(map(lambda s: data.rows(*s), spans), 2) as it:  # reads on the thread
        got = list(it)
    assert all(np.array_equal(g["input_ids"], data.rows(*s)["input_ids"])
               for g, s in zip(got, spans, strict=True))

    def boom(step):
        raise ValueError(f"bad step {step}")

    with Prefetcher(map(boom, range(3)), 2) as it, pytest.raises(ValueError, match="bad step 0"):
        next(it)


def test_missing_data_and_unknown_split_are_user_errors(prepared, tmp_path):
    with pytest.raises(UserError, match="no meta.json"):
        PretrainData(tmp_path)
    with pytest.raises(UserError, match="split 'test' is unknown"):
        PretrainData(prepared, "test")


def test_corrupt_meta_or_lengths_are_refused_on_open(prepared, tmp_path):
    """A copy of the prepared directory whose meta.json lost special ids, or whose lengths are
    random bytes of the right size: one line when the loader opens it, not a TypeError or a
    pair stream of billions of garbage documents."""
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "special_tokens": {"pad": 0}}))
    with pytest.raises(UserError, match=r"meta.json: field 'special_tokens' is \{'pad': 0\}"):
        PretrainData(copy, objective="mlm+nsp")
    (copy / "meta.json").write_text(json.dumps(meta))
    size = (copy / "train.lengths").stat().st_size
    (copy / "train.lengths").write_bytes(np.random.default_rng(0).bytes(size))
    with pytest.raises(UserError, match=r"train.lengths does not match its token file"):
        PretrainData(copy, objective="mlm+nsp")


def test_a_pair_objective_on_one_training_document_gives_advice_that_helps(tmp_path):
    """One document in train (a one-line corpus): the advice was "a larger
    data.validation_fraction", which takes documents from train."""
    (tmp_path / "one.txt").write_text(" ".join(sentences(400)))
    out = prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "one.txt"]))
    with pytest.raises(UserError, match=r"needs 2\+ documents in the train split, which has 1; "
                                        "use more text, blank lines between its documents, or "
                                        "data.objective=mlm"):
        PretrainData(out, objective="mlm+nsp")


@pytest.mark.parametrize("objective", ["mlm", "mlm+sop"])
def test_token_ids_past_the_vocabulary_are_refused_when_read(prepared, tmp_path, objective):
    """A token file of the right size with a damaged id: it trained on NaN losses, rolled back
    and blamed the learning rate; now the batch that reads it says which file is damaged."""
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    meta = json.loads((copy / "meta.json").read_text())
    tokens = np.memmap(copy / "train.bin", meta["dtype"], mode="r+")
    tokens[5] = meta["vocab_size"]
    tokens.flush()
    data = PretrainData(copy, "train", SEQ, objective, shuffle=False)
    with pytest.raises(UserError, match=rf"train.bin holds token id {meta['vocab_size']}, "
                                        "outside the vocabulary"):
        data.rows(0, data.num_sequences)
