"""Host-side loader over prepared data: fixed-length sequences read from a token memmap.

`PretrainData.rows(start, count)` returns the sequences at global positions start.. of an endless
stream of epochs, each epoch a keyed pseudo-random permutation of (seed, epoch): a pure function
of the position, so resuming and slicing a batch across processes are exact and cost O(1).
MLM rows are contiguous `seq_len - 2` token chunks framed [CLS] … [SEP]; a [SEP] already in the
stream marks each document end (data/README.md). NSP/SOP rows pair sentences of one document.
"""

import queue
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bertjax import prepared, tokenizer
from bertjax.config import check_objective
from bertjax.errors import UserError
from bertjax.tokenizer import SpecialTokens

_PERM, _PAIR = 1, 2  # purpose tags, so the two host random streams never coincide
_SENTENCE_END = (".", "!", "?")
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a good 64-bit mix (uint64 in, uint64 out)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class Permutation:
    """A keyed bijection of [0, n): a 4-round Feistel network on the smallest even-bit domain
    holding n (at most 4n), cycle-walking back into range. O(1) memory and per index."""

    def __init__(self, n: int, seed: int, epoch: int):
        self.n = n
        self.half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        rng = np.random.default_rng((seed, _PERM, epoch))
        self.keys = rng.integers(0, 1 << 63, 4, dtype=np.uint64)

    def _round(self, r: np.ndarray, key: np.uint64) -> np.ndarray:
        return _mix(r ^ key) & self.mask

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half)
        left, right = x >> shift, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << shift) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        y = self._feistel(index.astype(np.uint64))
        out = y >= self.n
        while out.any():  # cycle-walking: each cycle through the domain returns to [0, n)
            y[out] = self._feistel(y[out])
            out = y >= self.n
        return y.astype(np.int64)


class PretrainData:
    """Sequences of one split of a prepared directory (train shuffles, validation does not)."""

    def __init__(self, data_dir: str | Path, split: str = "train", seq_len: int = 128,
                 objective: str = "mlm", seed: int = 0, shuffle: bool | None = None):
        meta = prepared.read_meta(data_dir)
        if split not in meta["splits"]:
            raise UserError(f"split {split!r} is unknown; use one of {list(meta['splits'])}")
        check_objective(objective)
        self.special = SpecialTokens(**meta["special_tokens"])
        self.split, self.seq_len, self.objective, self.seed = split, seq_len, objective, seed
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.data_dir, self.vocab_size = Path(data_dir), meta["vocab_size"]
        n_tokens, n_docs = meta["splits"][split]["tokens"], meta["splits"][split]["documents"]
        self.tokens = _memmap(self.data_dir / f"{split}.bin", meta["dtype"], n_tokens)
        self.lengths = _memmap(self.data_dir / f"{split}.lengths", "uint32", n_docs)
        self.pair = objective != "mlm"
        if self.pair:
            tok = tokenizer.load(self.data_dir / "tokenizer.json")
            ends = [tok.token_to_id(t) for t in _SENTENCE_END]
            self.enders = np.asarray([i for i in ends if i is not None], np.int64)
            self.pair_key = np.random.default_rng((seed, _PAIR)).integers(0, 1 << 63,
                                                                          dtype=np.uint64)
            self.num_sequences = self._index_chunks()
        else:
            self.span = seq_len - 2  # tokens per row between [CLS] and [SEP]
            self.num_sequences = -(-n_tokens // self.span)
            self.windows = np.lib.stride_tricks.sliding_window_view(self.tokens, self.span) \
                if n_tokens >= self.span else None
        self._perms: dict[int, Permutation] = {}

    def _index_chunks(self) -> int:
        """Pair mode: each document of >= 2 tokens is cut into ceil(len / (seq_len-3)) near-equal
        chunks; chunk j is the text a sentence pair is cut from."""
        self.docs = np.zeros(len(self.lengths) + 1, np.int64)  # document d: docs[d]..docs[d+1]
        np.cumsum(self.lengths, out=self.docs[1:])
        self.doc_len = self.lengths.astype(np.int64) - 1  # without the closing [SEP]
        room = self.seq_len - 3  # [CLS] A [SEP] B [SEP]
        self.doc_chunks = np.where(self.doc_len >= 2, -(-self.doc_len // room), 0)
        self.chunk_end = np.cumsum(self.doc_chunks)  # chunk ids < chunk_end[d] lie in docs <= d
        if np.count_nonzero(self.doc_chunks) < 2:  # a larger validation_fraction takes from train
            more = ("a larger data.validation_fraction" if self.split == "validation" else
                    "blank lines between its documents")
            raise UserError(f"{self.objective} needs 2+ documents in the {self.split} split, "
                            f"which has {np.count_nonzero(self.doc_chunks)}; use more text, "
                            f"{more}, or data.objective=mlm")
        return int(self.chunk_end[-1])

    def sequence_index(self, positions: np.ndarray) -> np.ndarray:
        """Global positions -> sequence ids in [0, num_sequences)."""
        epochs, index = np.divmod(positions, self.num_sequences)
        if not self.shuffle:
            return index
        out = np.empty_like(index)
        for e in np.unique(epochs):
            if int(e) not in self._perms:
                self._perms = {k: v for k, v in self._perms.items() if k >= e - 1}
                self._perms[int(e)] = Permutation(self.num_sequences, self.seed, int(e))
            sel = epochs == e
            out[sel] = self._perms[int(e)](index[sel])
        return out

    def rows(self, start: int, count: int) -> dict[str, np.ndarray]:
        """The sequences at global positions start .. start+count-1 (any slice of a batch
        equals that slice of the whole batch)."""
        if self.num_sequences == 0:
            raise UserError(f"the {self.split} split is empty; use more text or a larger "
                            "data.validation_fraction")
        positions = start + np.arange(count, dtype=np.int64)
        index = self.sequence_index(positions)
        batch = self._pair_rows(positions, index) if self.pair else self._mlm_rows(index)
        self._check_vocabulary(batch["input_ids"])
        return batch

    def _check_vocabulary(self, ids: np.ndarray) -> None:
        """Token ids past the vocabulary (a damaged token file, which is too big to read whole
        on open) would index past the embedding table: NaN losses that read as a diverging run.
        Checked on each batch read, at the cost of one max over it."""
        top = int(ids.max(initial=0))
        if top >= self.vocab_size:
            raise UserError(f"{self.data_dir / self.split}.bin holds token id {top}, outside the "
                            f"vocabulary of {self.vocab_size} its meta.json names: the file is "
                            f"damaged; {prepared.reprepare_hint(self.data_dir)}")

    def _mlm_rows(self, index: np.ndarray) -> dict[str, np.ndarray]:
        count, n, span, sp = len(index), len(self.tokens), self.span, self.special
        begin = index * span
        full = begin + span <= n
        ids = np.full((count, self.seq_len), sp.pad, np.int32)
        mask = np.ones((count, self.seq_len), bool)
        ids[:, 0] = sp.cls
        if full.all():  # the common case: one vectorised copy out of the memmap
            ids[:, 1:-1] = self.windows[begin]
            ids[:, -1] = sp.sep
        else:
            if full.any():
                ids[full, 1:-1] = self.windows[begin[full]]
                ids[full, -1] = sp.sep
            for r in np.flatnonzero(~full):  # only the last chunk of the split is short
                tail = self.tokens[begin[r]:]
                ids[r, 1:1 + len(tail)] = tail
                ids[r, 1 + len(tail)] = sp.sep
                mask[r, 2 + len(tail):] = False
        return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}

    def _chunks(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pair mode: (start, end, document) of chunks j in the token stream."""
        d = np.searchsorted(self.chunk_end, j, side="right")
        k = j - np.where(d > 0, self.chunk_end[d - 1], 0)
        n, length, base = self.doc_chunks[d], self.doc_len[d], self.docs[d]
        return base + k * length // n, base + (k + 1) * length // n, d

    def _sentence_ends(self, begin: np.ndarray, length: np.ndarray) -> np.ndarray:
        """[rows, seq_len - 3]: whether token i of each span (begin, length) ends a sentence,
        for i < length - 1 (a cut after the last token would leave nothing)."""
        offsets = np.arange(self.seq_len - 3)
        window = self.tokens[np.minimum(begin[:, None] + offsets, len(self.tokens) - 1)]
        return np.isin(window, self.enders) & (offsets < (length - 1)[:, None])

    def _uniforms(self, positions: np.ndarray, draws: int) -> np.ndarray:
        """[rows, draws] uniforms in [0, 1), each a pure function of (seed, position, draw)."""
        z = _mix(positions.astype(np.uint64) ^ self.pair_key)
        z = _mix(z[:, None] ^ np.arange(1, draws + 1, dtype=np.uint64) * _M1)
        return (z >> np.uint64(11)) * 2.0 ** -53

    def _pair_rows(self, positions: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
        """[CLS] A [SEP] B [SEP] from chunk `index` of each row: A ends at a sentence end picked
        at random (anywhere when the chunk has none); label 1 = B from another document (NSP)
        or A and B swapped (SOP). Vectorised over rows: a host core must keep up with GPUs."""
        u = self._uniforms(positions, 3)  # cut, label, NSP's other chunk
        begin, end, doc = self._chunks(index)
        length = end - begin
        ends = self._sentence_ends(begin, length)
        n_cuts = ends.sum(1)
        pick = np.floor(u[:, 0] * np.maximum(n_cuts, 1)).astype(np.int64)
        nth_end = np.argmax(ends & (np.cumsum(ends, 1) == (pick + 1)[:, None]), 1)
        cut = np.where(n_cuts > 0, nth_end + 1,
                       1 + np.floor(u[:, 0] * (length - 1)).astype(np.int64))
        label = u[:, 1] < 0.5
        a_start, a_len, b_start, b_len = begin, cut, begin + cut, length - cut
        if self.objective == "mlm+nsp":
            b_start, b_len = b_start.copy(), b_len.copy()
            b_start[label], b_len[label] = self._other_segments(u[label, 2], doc[label],
                                                                b_len[label])
        else:
            a_start, b_start = np.where(label, b_start, a_start), np.where(label, a_start, b_start)
            a_len, b_len = np.where(label, b_len, a_len), np.where(label, a_len, b_len)
        return self._frame(a_start, a_len, b_start, b_len, label)

    def _other_segments(self, u: np.ndarray, doc: np.ndarray, length: np.ndarray):
        """NSP's random next segments: (start, length) in a chunk of another document, from the
        chunk's first sentence start, at most `length` tokens and never past that document."""
        r = np.floor(u * (self.num_sequences - self.doc_chunks[doc])).astype(np.int64)
        r += np.where(r >= self.chunk_end[doc] - self.doc_chunks[doc], self.doc_chunks[doc], 0)
        begin, end, other = self._chunks(r)
        starts = self._sentence_ends(begin, end - begin)
        begin = begin + np.where(starts.any(1), np.argmax(starts, 1) + 1, 0)
        return begin, np.minimum(length, self.docs[other + 1] - 1 - begin)

    def _frame(self, a_start, a_len, b_start, b_len, label) -> dict[str, np.ndarray]:
        """Rows [CLS] tokens[a_start:+a_len] [SEP] tokens[b_start:+b_len] [SEP] [PAD]…"""
        sp, p = self.special, np.arange(self.seq_len)[None]
        first_sep, last_sep = 1 + a_len[:, None], 2 + (a_len + b_len)[:, None]
        in_a = (p >= 1) & (p < first_sep)
        in_b = (p > first_sep) & (p < last_sep)
        source = np.where(in_a, a_start[:, None] + p - 1, b_start[:, None] + p - first_sep - 1)
        ids = np.where(in_a | in_b, self.tokens[np.clip(source, 0, len(self.tokens) - 1)],
                       sp.pad).astype(np.int32)
        ids[:, 0] = sp.cls
        ids[(p == first_sep) | (p == last_sep)] = sp.sep
        mask = p <= last_sep
        return {"input_ids": ids, "token_type_ids": ((p > first_sep) & mask).astype(np.int32),
                "attention_mask": mask, "pair_labels": label.astype(np.int32)}


def _memmap(path: Path, dtype: str, length: int) -> np.ndarray:
    if length == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


class Prefetcher:
    """Pulls `items` on a daemon thread, at most `depth` ahead (so a lazy `map(read, steps)`
    does its reading there).

    Iterate it for the items in order; an exception raised while pulling one is raised in the
    consumer. `close()` (or leaving a `with` block) stops the thread.
    """

    _END = object()

    def __init__(self, items: Iterable[Any], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(items,), daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, items: Iterable[Any]) -> None:
        try:
            for item in items:
                if not self._put((True, item)):
                    return
        except BaseException as e:  # handed to the consumer, who re-raises it
            self._put((False, e))
            return
        self._put((True, self._END))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        ok, value = self._queue.get()
        if not ok:
            raise value
        if value is self._END:
            raise StopIteration
        return value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
