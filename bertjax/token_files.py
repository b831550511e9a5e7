"""Text -> the token files of one preparation: each split's flat token ids and document lengths.

`write_token_files` streams the corpus's pieces through the tokenizer's batch encoder into one
`SplitWriter` per split (validation: every document `is_validation` picks), so memory does not
grow with the corpus. The files get temporary names; prepare.py renames them when complete.
Format: data/README.md.
"""

import ctypes
import math
import sys
import time
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from bertjax import sources, tokenizer
from bertjax.config import DataConfig
from bertjax.errors import UserError
from bertjax.prepared import SPLITS

# Text per encode_batch call: enough to keep the Rust threads busy; small enough that the
# transient Encoding objects (~100 bytes a token) keep peak memory low.
BATCH_CHARS = 1 << 18


def _malloc_trim() -> Callable[[], object]:
    """glibc keeps memory freed by the tokenizer's threads in per-thread arenas, so RSS creeps up
    with the corpus; malloc_trim hands it back (~1 ms). A no-op where there is no glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65,536), else uint32."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise UserError(f"vocabulary of {vocab_size} tokens does not fit uint32 token files; "
                    "use a smaller tokenizer")


def is_validation(doc: int, fraction: float) -> bool:
    """Exactly `fraction` of documents, evenly spread: doc i when floor((i+1)f) > floor(if)."""
    return math.floor((doc + 1) * fraction) > math.floor(doc * fraction)


def split_pieces(cfg: DataConfig) -> Iterator[tuple[str, bool, int]]:
    """(text, ends_document, split index) for every piece, up to data.max_documents documents
    (data.validation_fraction is checked by DataConfig)."""
    doc = 0
    for text, ends in sources.pieces(cfg):
        yield text, ends, int(is_validation(doc, cfg.validation_fraction))
        if ends:
            doc += 1
            if cfg.max_documents is not None and doc >= cfg.max_documents:
                return


class SplitWriter:
    """Appends one split's tokens (a [SEP] closes each document) and document lengths."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype, sep: int):
        self.tokens = open(directory / f"{name}.bin.tmp", "wb")
        self.docs = open(directory / f"{name}.lengths.tmp", "wb")
        self.dtype, self.sep = dtype, [sep]
        self.pending: list[list[int]] = []
        self.lengths: list[int] = []  # tokens per document, its [SEP] included (uint32)
        self.n_tokens = self.written = self.n_docs = self.doc_len = 0

    def add(self, ids: list[int], ends: bool) -> None:
        if ids:
            self.pending.append(ids)
            self.doc_len += len(ids)
            self.n_tokens += len(ids)
        if ends and self.doc_len:  # a document with no tokens leaves no trace
            self.pending.append(self.sep)
            self.n_tokens += 1
            self.lengths.append(self.doc_len + 1)
            self.n_docs += 1
            self.doc_len = 0

    def flush(self) -> None:
        count = self.n_tokens - self.written
        # file.write, not ndarray.tofile: a full disk then raises OSError(ENOSPC), which
        # tofile reports without an errno ("N requested and 0 written").
        self.tokens.write(np.fromiter(chain.from_iterable(self.pending), self.dtype, count).data)
        self.docs.write(np.asarray(self.lengths, np.uint32).data)  # 4 bytes a document, not 8
        self.pending, self.lengths, self.written = [], [], self.n_tokens

    def close(self) -> dict:
        self.flush()
        self.tokens.close()
        self.docs.close()
        return {"tokens": self.n_tokens, "documents": self.n_docs}

    def abandon(self) -> None:
        """Close after a failure without writing what is still buffered: after a failed write
        (a full disk) a flush fails again, and the files stayed open until collected, where
        Python 3.14 reports each one ("Exception ignored while finalizing file ... No space
        left on device") below the one-line error. Closing the raw file drops the buffer."""
        for file in (self.tokens, self.docs):
            file.raw.close()


_release = _malloc_trim()


def _encode_into(tok: Tokenizer, batch: list[tuple[str, bool, int]], writers) -> int:
    encodings = tok.encode_batch_fast([text for text, _, _ in batch], add_special_tokens=False)
    for encoding, (_, ends, split) in zip(encodings, batch, strict=True):
        writers[split].add(encoding.ids, ends)
    for w in writers:
        w.flush()
    n = sum(len(e.ids) for e in encodings)
    del encodings
    _release()
    return n


def write_token_files(cfg: DataConfig, tok: Tokenizer, directory: Path, dtype: np.dtype) -> dict:
    """Stream every piece through encode_batch into the split writers (<split>.bin.tmp and
    <split>.lengths.tmp in `directory`); returns the counts meta.json records."""
    tok.encode_special_tokens = True  # a literal "[SEP]" in the text is text, not a separator
    # A tokenizer.json saved with truncation or padding on (enable_truncation(512) before save):
    # every document was cut to that length, or padded with [PAD] written as text, exit 0.
    tok.no_truncation()
    tok.no_padding()
    sep = tokenizer.special_tokens(tok).sep
    writers = [SplitWriter(directory, name, dtype, sep) for name in SPLITS]
    # Under data.max_documents the files' size is no total: the bar stopped at a few per cent.
    total = sources.total_bytes(cfg) if cfg.max_documents is None else None
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000,
               desc="prepare", mininterval=1.0, file=sys.stderr, leave=False)
    start, n_bytes, n_tokens, batch, chars = time.perf_counter(), 0, 0, [], 0
    try:
        for piece in chain(split_pieces(cfg), [None]):
            if piece is not None:
                batch.append(piece)
                chars += len(piece[0])
            if batch and (piece is None or chars >= BATCH_CHARS):
                n_tokens += _encode_into(tok, batch, writers)
                size = sum(len(text.encode()) for text, _, _ in batch)
                n_bytes += size
                bar.update(size)
                bar.set_postfix_str(f"{n_tokens / (time.perf_counter() - start) / 1e6:.2f} "
                                    "M tokens/s", refresh=False)
                batch, chars = [], 0
        counts = {name: w.close() for name, w in zip(SPLITS, writers, strict=True)}
    except BaseException:
        for w in writers:
            w.abandon()
        raise
    finally:
        bar.close()
    return {"splits": counts, "text_bytes": n_bytes, "text_tokens": n_tokens}
