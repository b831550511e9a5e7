"""GLUE examples -> bucketed fixed-shape batches (a few padded lengths, so XLA compiles once per
length), deterministic shuffles per (seed, epoch), and outputs put back in example order.

Padding rows fill the last batch of a bucket; they carry valid=False and must get zero weight.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Int, Shaped
from tokenizers import Tokenizer

from bertjax.errors import UserError
from bertjax.glue_tasks import Examples, get_task
from bertjax.tokenizer import encode_in_chunks, pad_rows


@dataclass(frozen=True)
class Encoded:
    """Token ids of one split, concatenated (row i is tokens[offsets[i]:offsets[i + 1]])."""

    tokens: Int[np.ndarray, " total"]
    type_ids: Int[np.ndarray, " total"]
    offsets: Int[np.ndarray, " n1"]
    labels: Shaped[np.ndarray, " n"]  # int32 class / float32 score (zeros for a test split)
    bucket: Int[np.ndarray, " n"]  # index into `buckets` of each row
    buckets: tuple[int, ...]
    truncated: int  # rows cut to the largest bucket

    def __len__(self) -> int:
        return len(self.bucket)


def check_buckets(buckets: Sequence[int], spelled: Callable[[list[int]], str] = "glue.buckets={}"
                  .format) -> tuple[int, ...]:
    """The bucket lengths as a tuple; `spelled` writes them as the user gives them."""
    b = tuple(int(x) for x in buckets)
    if not b or b[0] < 8 or any(x >= y for x, y in zip(b[:-1], b[1:], strict=True)):
        raise UserError(f"{spelled(list(b))} must be strictly increasing lengths >= 8, "
                        f"e.g. {spelled([32, 64, 128])}")
    return b


def encode(tokenizer: Tokenizer, examples: Examples, buckets: Sequence[int]) -> Encoded:
    """Tokenize (pairs framed by tokenizer.encode_truncated: [CLS] a [SEP] b [SEP], type ids
    0/1), truncating longest-first to the largest bucket, and assign each row its bucket.
    A chunk of rows at a time (tokenizer.encode_in_chunks), so memory follows the arrays, not
    the tokenizer's objects."""
    b = check_buckets(buckets)
    tokens, type_ids, lengths, truncated = [], [], [], 0
    for encs, cut in encode_in_chunks(tokenizer, examples.text_a, examples.text_b, b[-1]):
        size = sum(len(e.ids) for e in encs)
        tokens.append(np.fromiter((i for e in encs for i in e.ids), np.int32, size))
        type_ids.append(np.fromiter((i for e in encs for i in e.type_ids), np.int32, size))
        lengths.append(np.asarray([len(e.ids) for e in encs], np.int64))
        truncated += cut
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    labels = examples.labels
    if labels is None:
        labels = np.zeros(len(lengths), np.float32 if not get_task(examples.task).labels
                          else np.int32)
    return Encoded(
        tokens=np.concatenate(tokens) if tokens else np.zeros(0, np.int32),
        type_ids=np.concatenate(type_ids) if type_ids else np.zeros(0, np.int32),
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        labels=labels,
        bucket=np.searchsorted(np.asarray(b), lengths).astype(np.int32),  # smallest that fits
        buckets=b,
        truncated=truncated,
    )


def batch_order(enc: Encoded, batch_size: int, seed: int | None = None,
                epoch: int = 0) -> list[np.ndarray]:
    """Row numbers of each batch (-1 fills the last batch of a bucket). seed=None: eval order
    (bucket, then file order); else shuffled by default_rng((seed, epoch)) within buckets and
    across batches, so one length per batch and at most len(buckets) shapes."""
    if batch_size < 1:
        raise UserError(f"glue.batch_size={batch_size} must be positive")
    rng = None if seed is None else np.random.default_rng((seed, epoch))
    batches = []
    for k in range(len(enc.buckets)):
        rows = np.flatnonzero(enc.bucket == k)
        rows = rows if rng is None else rng.permutation(rows)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batches.append(np.pad(chunk, (0, batch_size - len(chunk)), constant_values=-1))
    return batches if rng is None else [batches[i] for i in rng.permutation(len(batches))]


def num_batches(enc: Encoded, batch_size: int) -> int:
    """Batches per epoch (the same for every seed and epoch)."""
    counts = np.bincount(enc.bucket, minlength=len(enc.buckets))
    return int(np.sum(-(-counts // batch_size)))


def make_batch(enc: Encoded, rows: Int[np.ndarray, " batch"]) -> dict[str, np.ndarray]:
    """Fixed-shape arrays for `rows`; L = the smallest bucket holding the longest row.

    Rows of -1 are padding: a copy of the first row (so every row has real tokens and finite
    activations) with valid=False and example_index=-1; they must carry zero weight.
    """
    real = rows[rows >= 0]
    src = np.where(rows >= 0, rows, real[0])
    length = enc.buckets[int(enc.bucket[real].max())]
    spans = [(enc.offsets[i], enc.offsets[i + 1]) for i in src]
    ids, types, mask = pad_rows([(enc.tokens[lo:hi], enc.type_ids[lo:hi]) for lo, hi in spans],
                                length)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
            "labels": enc.labels[src], "example_index": rows.astype(np.int32),
            "valid": rows >= 0}


def iter_batches(enc: Encoded, batch_size: int, seed: int | None = None, epoch: int = 0,
                 start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Batches of one epoch from batch `start` on (resume skips without building them)."""
    for rows in batch_order(enc, batch_size, seed, epoch)[start:]:
        yield make_batch(enc, rows)


def in_example_order(n: int, example_index: Sequence[np.ndarray],
                     values: Sequence[np.ndarray]) -> np.ndarray:
    """Per-batch outputs (e.g. logits) -> one array in row order, padding rows dropped.

    Raises if a row is missing or seen twice, so an eval pass that lost data cannot be scored.
    """
    idx = np.concatenate([np.asarray(i) for i in example_index])
    val = np.concatenate([np.asarray(v) for v in values])
    keep = idx >= 0
    idx, val = idx[keep], val[keep]
    if len(idx) != n or not np.array_equal(np.sort(idx), np.arange(n)):
        raise ValueError(f"expected each of {n} rows once, got {len(idx)} rows")
    out = np.empty_like(val)
    out[idx] = val
    return out
