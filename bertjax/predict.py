"""Inference: fill-mask, classify and NSP, as library functions and `python -m bertjax.predict`.

    python -m bertjax.predict fill-mask CHECKPOINT "The capital of France is [MASK]." [--top-k 5]

Inputs (arguments, or --file with one per line; `--file -` reads standard input) run in batches
of --batch-size, each padded to a power-of-two length and cut to the model's positions; outputs
are probabilities (softmax in f32; a sigmoid per class for a multi-label classifier); classify
prints the predicted class first (a multi-label classifier's classes above 0.5, or -).
"""

import sys
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from bertjax import glue_tasks
from bertjax.errors import UserError, cli
from bertjax.files import ArgParser, check_file, path_argument, utf8_error
from bertjax.model import Bert, num_labels
from bertjax.pretrained import Pretrained, fine_tune_config, load_pretrained
from bertjax.tokenizer import encode_in_chunks, pad_rows

BATCH_SIZE = 64
USAGE = ("usage: python -m bertjax.predict fill-mask|classify|nsp CHECKPOINT [TEXT ...] "
         "[--file F] [--top-k K] [--batch-size B] [--allow-tokenizer-mismatch]")


def _bucket(n: int, limit: int, least: int = 16) -> int:
    """A padded size: the next power of two >= n (at least `least`), at most `limit`. Few
    shapes, so a file of any number of inputs compiles a handful of times."""
    return min(max(least, 1 << (n - 1).bit_length()), limit)


def _batches(model: Bert, tokenizer: Tokenizer, texts: list, pairs: list | None,
             batch_size: int, max_len: int | None = None, marks_masks: bool = False):
    """(rows, padded arrays) per batch of `batch_size` inputs, in input order; every batch of a
    call has the same number of rows (the last one is padded with empty rows). Inputs get
    [CLS]/[SEP] and token types, and are cut (longest first) to the model's positions or
    `max_len`; a warning says how many were cut. Special tokens written in the text are text,
    but for fill-mask's [MASK] (`marks_masks`). Tokenized a chunk at a time
    (tokenizer.encode_in_chunks): a --file of any length never holds all its Encodings."""
    positions = model.encoder.embeddings.position.shape[0]
    limit = min(positions, max_len or positions)
    rows, cut = max(1, min(batch_size, len(texts))), 0
    for encodings, chunk_cut in encode_in_chunks(tokenizer, texts, pairs, limit, marks_masks,
                                                 batch=rows):
        cut += chunk_cut
        for first in range(0, len(encodings), rows):
            chunk = encodings[first:first + rows]
            length = _bucket(max(len(e.ids) for e in chunk), positions)
            filled = [(e.ids, e.type_ids) for e in chunk] + [([], [])] * (rows - len(chunk))
            yield len(chunk), pad_rows(filled, length)
    if cut:
        what = f"the model's {limit} positions" if limit == positions else \
            f"the {limit} tokens it was fine-tuned and evaluated on (glue.buckets)"
        warnings.warn(f"{cut} input(s) longer than {what} were cut to {limit} tokens",
                      stacklevel=3)


HEADS = {"mlm": "MLM head", "classifier": "GLUE head (fine-tune it first)", "nsp": "NSP head"}


def check_call(model: Bert, head: str, call: str, source: str = "the model", **texts) -> None:
    """A call's mistakes as one UserError each (the CLI's too, `source` its checkpoint): a model
    without the head the call needs (else a TypeError from inside jit), and one string where a
    list of texts belongs (else read as one input per character, silently)."""
    if getattr(model, head) is None:
        raise UserError(f"{source} has no {HEADS[head]}, which {call} needs")
    for name, value in texts.items():
        if isinstance(value, str):
            raise UserError(f"{call}: {name} is one string, not a list of texts (it would be "
                            f"read one character per input); pass [{name}]")


@partial(jax.jit, static_argnums=4)
def _top_k(model: Bert, ids, types, mask, k: int, positions, has_token):
    """Top-k (probability, token id) at `positions` [batch, slots] of each row, over the ids
    that `has_token` [vocabulary rows] (rows that pad the table past the tokenizer, or an id a
    vocabulary with a repeated entry skipped, have no token to print)."""
    logits = model.mlm_logits(model(ids, types, mask), positions)
    return jax.lax.top_k(jax.nn.softmax(jnp.where(has_token, logits, -jnp.inf), axis=-1), k)


def fill_mask(model: Bert, tokenizer, texts: list[str], top_k: int = 5,
              batch_size: int = BATCH_SIZE) -> list:
    """For each text, for each [MASK] in it: the top-k (token, probability) pairs (an empty list
    for a text without one). `tokenizer`: a tokenizers.Tokenizer (Pretrained.tokenizer()).
    Raises UserError for a model without an MLM head, a top_k outside the vocabulary, or one
    string for `texts`."""
    check_call(model, "mlm", "fill_mask", texts=texts)
    return list(_each_fill_mask(model, tokenizer, texts, top_k, batch_size))


def _each_fill_mask(model: Bert, tokenizer, texts: list[str], top_k: int, batch_size: int):
    """fill_mask's answer for one text after another, computed a batch at a time."""
    has_token = np.array([tokenizer.id_to_token(i) is not None
                          for i in range(model.mlm.bias.shape[0])])
    vocab = int(has_token.sum())
    # Refused, not clamped: a list shorter than the k asked for would pass for the answer (a
    # script reading k columns breaks later, or reads fewer unawares). Checked before any input
    # runs; the CLI checks k >= 1 before loading, but the vocabulary is known only from the model.
    if not 1 <= top_k <= vocab:
        raise UserError(f"top-k {top_k}: the model's vocabulary has {vocab} tokens, so ask for "
                        f"1 to {vocab} (--top-k)")
    mask_id = tokenizer.token_to_id("[MASK]")
    for count, (ids, types, mask) in _batches(model, tokenizer, texts, None, batch_size,
                                              marks_masks=True):
        where = [np.flatnonzero(row == mask_id) for row in ids[:count]]
        # Slots from 1: the head and top-k run over the whole vocabulary per slot, and 16 slots
        # for the usual one [MASK] took a third of the time (a 10,000-line --file: 67 s).
        slots = _bucket(max(map(len, where)) or 1, ids.shape[1], least=1)
        positions = np.zeros((len(ids), slots), np.int32)
        for row, pos in enumerate(where):
            positions[row, :len(pos)] = pos
        probs, tokens = (np.asarray(x) for x in _top_k(model, ids, types, mask, top_k,
                                                       positions, has_token))
        for row, pos in enumerate(where):
            yield [[(tokenizer.id_to_token(int(t)), float(p))
                    for t, p in zip(tokens[row, slot], probs[row, slot], strict=True)]
                   for slot in range(len(pos))]


@partial(jax.jit, static_argnames="multi_label")
def _class_probs(model: Bert, ids, types, mask, multi_label: bool = False):
    logits = model.classify(model(ids, types, mask), mask)
    if multi_label:  # classes are independent: a sigmoid each, as transformers' pipelines do
        return jax.nn.sigmoid(logits)
    return logits if logits.shape[-1] == 1 else jax.nn.softmax(logits, axis=-1)


@jax.jit
def _pair_probs(model: Bert, ids, types, mask):
    return jax.nn.softmax(model.pair_logits(model(ids, types, mask)), axis=-1)


def _run(fn, model: Bert, tokenizer, texts: list[str], pairs: list[str] | None,
         batch_size: int, max_len: int | None = None):
    """fn's per-row outputs [rows, ...] of one batch after another, in input order."""
    for count, arrays in _batches(model, tokenizer, texts, pairs, batch_size, max_len):
        yield np.asarray(fn(model, *arrays))[:count]


def classify(model: Bert, tokenizer, texts: list[str], pairs: list[str] | None = None,
             batch_size: int = BATCH_SIZE, multi_label: bool = False,
             max_len: int | None = None) -> np.ndarray:
    """Class probabilities [n, labels] (or regression scores [n, 1]) of a GLUE model;
    `multi_label`: each class's own probability (Pretrained.multi_label). `pairs`: each text's
    second sentence, for a task on pairs. `max_len`: inputs cut to it (None: the model's
    positions); fine_tuned_length(pretrained) cuts as the fine-tune cut its dev set, as the CLI
    does. Raises UserError for a model without a GLUE head or one string for `texts` or
    `pairs`."""
    check_call(model, "classifier", "classify", texts=texts, pairs=pairs)
    fn = partial(_class_probs, multi_label=multi_label)
    return _rows(_run(fn, model, tokenizer, texts, pairs, batch_size, max_len),
                 num_labels(model))


def fine_tuned_length(pretrained: Pretrained) -> int | None:
    """The length a GLUE model's fine-tune cut its inputs to (glue.buckets' largest), so that
    classify's scores agree with the run's dev metrics; None for other checkpoints."""
    cfg = fine_tune_config(pretrained)
    return cfg.glue.buckets[-1] if cfg is not None else None


def next_sentence(model: Bert, tokenizer, first: list[str], second: list[str],
                  batch_size: int = BATCH_SIZE) -> np.ndarray:
    """P(IsNext) of each (first, second) pair from the NSP head (BERT's class 0: IsNext) [n].
    Raises UserError for a model without an NSP head or one string for `first` or `second`."""
    check_call(model, "nsp", "next_sentence", first=first, second=second)
    return _rows(_run(_pair_probs, model, tokenizer, first, second, batch_size), 2)[:, 0]


def _rows(batches, width: int) -> np.ndarray:
    """The batches' rows as one array; [0, width] for no input (np.concatenate needs one)."""
    parts = list(batches)
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


def _entries(args) -> list[tuple[str, str]]:
    """(where, text) of each input: the TEXT arguments, or the non-blank lines of --file."""
    if args.file and args.text:
        raise UserError(f"got {len(args.text)} TEXT argument(s) and --file {args.file}; give "
                        "one or the other")
    if not args.file:
        return [(f"TEXT argument {n}", text) for n, text in enumerate(args.text, 1)]
    fix = "--file takes UTF-8 text: convert it (e.g. iconv -t utf-8)"
    if args.file == "-":  # standard input, as Unix tools read it: `... | predict ... --file -`
        path, raw = "-", sys.stdin.buffer.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise UserError(f"--file - (standard input): not valid UTF-8 (byte "
                            f"0x{raw[e.start]:02x} at offset {e.start}); {fix}") from None
    else:
        path = check_file(args.file, "--file", "pass a text file with one input per line, "
                                               "or - for standard input")
        try:  # utf-8-sig: a byte order mark (Windows editors write one) is no part of the text
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise utf8_error(path, fix) from None
    # Lines end at \n (or \r\n) only, as the GLUE reader's: str.splitlines also breaks at
    # U+2028, U+0085, \f, ... inside a sentence, which made one line two inputs.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return [(f"--file {path} line {n}", line) for n, line in enumerate(lines, 1) if line.strip()]


def _split(entries: list[tuple[str, str]]) -> list[list[str]]:
    """Each input as [text] or [first, second] (split at its tab); anything else, an empty
    input and a mix of pairs and single texts are refused, naming the input."""
    split = [text.split("\t") for _, text in entries]
    for (where, _), parts in zip(entries, split, strict=True):
        if len(parts) > 2:
            raise UserError(f"{where} has {len(parts)} tab-separated columns; an input is one "
                            "text, or a pair as 'first<TAB>second'")
        if not all(part.strip() for part in parts):
            raise UserError(f"{where} is empty{' on one side of its tab' if parts[1:] else ''};"
                            " give it some text")
    pairs = [where for (where, _), parts in zip(entries, split, strict=True) if len(parts) == 2]
    if pairs and len(pairs) < len(split):
        single = next(where for (where, _), parts in zip(entries, split, strict=True)
                      if len(parts) == 1)
        raise UserError(f"{pairs[0]} is a pair (first<TAB>second) but {single} is a single "
                        "text; give only pairs or only single texts")
    return split


def _inputs(args) -> tuple[list[str], list[str] | None]:
    """TEXT arguments, or a file: one input per line, a pair as `first<TAB>second`."""
    entries = _entries(args)
    if not entries:
        raise UserError("no input: give TEXT arguments or --file FILE")
    split = _split(entries)
    if len(split[0]) == 2:
        return [s[0] for s in split], [s[1] for s in split]
    if args.command == "nsp" and len(split) == 2 and not args.file:
        return [split[0][0]], [split[1][0]]
    return [s[0] for s in split], None


def main(argv: list[str]) -> None:
    parser = ArgParser(usage_line=USAGE, prog="python -m bertjax.predict", doc=__doc__)
    parser.add_argument("command", choices=["fill-mask", "classify", "nsp"])
    parser.add_argument("checkpoint", type=path_argument,
                        help="run dir, checkpoint dir, bundle or HF BERT dir")
    # default=[]: argparse counts a '*' positional without a default as required in its error
    # ("required: ..., text"), though --file alone is a complete command line
    parser.add_argument("text", nargs="*", default=[], help="inputs; a pair as 'first<TAB>second'")
    parser.add_argument("--file", type=path_argument,
                        help="one input per line (pairs tab-separated); - reads standard input")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--allow-tokenizer-mismatch", action="store_true",
                        help="use a bundle whose tokenizer.json is not the one it was exported "
                             "with (its manifest says so)")
    args = parser.parse_intermixed_args(argv)  # TEXT after --file is TEXT too
    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top-k and --batch-size must be at least 1")
    texts = _inputs(args)  # read and checked before the model is loaded
    if args.command == "fill-mask":
        if texts[1] is not None:  # fill_mask reads single texts: the second would be dropped
            raise UserError("fill-mask takes single texts, each with a [MASK]; these are "
                            "pairs (first<TAB>second)")
        if missing := [i + 1 for i, text in enumerate(texts[0]) if "[MASK]" not in text]:
            raise UserError(f"input {missing[0]} has no [MASK] token ({len(missing)} of "
                            f"{len(texts[0])} inputs have none); fill-mask needs one per input")
    elif args.command == "nsp" and texts[1] is None:
        raise UserError("nsp needs sentence pairs: two TEXT arguments, or 'a<TAB>b' lines")
    pretrained = load_pretrained(args.checkpoint,
                                 allow_tokenizer_mismatch=args.allow_tokenizer_mismatch)
    tok = pretrained.tokenizer()
    model = pretrained.model
    needs = {"fill-mask": "mlm", "classify": "classifier", "nsp": "nsp"}[args.command]
    check_call(model, needs, f"`{args.command}`", args.checkpoint)
    if args.command == "classify":
        check_pairing(args.checkpoint, pretrained, texts)
    print_predictions(args, pretrained, tok, texts)


def check_pairing(path: str, pretrained, texts: tuple[list[str], list[str] | None]) -> None:
    """Single texts for a model fine-tuned on pairs (or pairs for one on single sentences) are
    refused: each was classified alone, exit 0 (`classify MNLI_RUN "a" "b"`, nsp's spelling of
    a pair, is two inputs). Models without a recorded GLUE task (Hugging Face) are not checked."""
    cfg = fine_tune_config(pretrained)
    if cfg is None:
        return
    task = glue_tasks.get_task(cfg.glue.task)
    pairs = task.columns[1] is not None
    if pairs and texts[1] is None:
        raise UserError(f"{path} was fine-tuned on {task.dir}, which classifies sentence pairs, "
                        f"but the inputs are single texts (two TEXT arguments are two inputs); "
                        f"give each pair as one 'first<TAB>second' argument or --file line")
    if not pairs and texts[1] is not None:
        raise UserError(f"{path} was fine-tuned on {task.dir}, which classifies single "
                        f"sentences, but the inputs are pairs (first<TAB>second); give one "
                        f"sentence per argument or --file line")


def print_predictions(args, pretrained, tok, texts: tuple[list[str], list[str] | None]) -> None:
    """One command's outputs on stdout, one input after another, in input order, each batch's
    as soon as it is computed (a long --file shows progress, and `| head` ends it early)."""
    model = pretrained.model
    if args.command == "fill-mask":
        for text, masks in zip(texts[0], _each_fill_mask(model, tok, texts[0], args.top_k,
                                                         args.batch_size), strict=True):
            print(text)
            for i, top in enumerate(masks):
                print(f"  [MASK] {i + 1}: " + ", ".join(f"{t} {p:.3f}" for t, p in top))
            if len(masks) < text.count("[MASK]"):  # the cut took the rest (or all of them)
                print(f"  [MASK] {len(masks) + 1} on: beyond the model's positions (the input "
                      "was cut)")
    elif args.command == "classify":
        shown = texts[0] if texts[1] is None else map(" || ".join, zip(*texts, strict=True))
        outputs = _run(partial(_class_probs, multi_label=pretrained.multi_label),
                       model, tok, *texts, args.batch_size, fine_tuned_length(pretrained))
        for text, probs in zip(shown, (row for batch in outputs for row in batch), strict=True):
            if probs.shape[0] == 1:
                print(f"{float(probs[0]):.4f}\t{text}")
            else:  # the class predicted first: near a tie the rounded figures cannot show it
                names = pretrained.label_names or [str(i) for i in range(len(probs))]
                chosen = (",".join(n for n, p in zip(names, probs, strict=True) if p > 0.5)
                          or "-") if pretrained.multi_label else names[int(np.argmax(probs))]
                print(f"{chosen}\t" + "  ".join(
                    f"{n} {p:.3f}" for n, p in zip(names, probs, strict=True)) + f"\t{text}")
    else:  # the pair head's class 0: B follows A (NSP), or A and B are in order (SOP)
        sop = pretrained.config is not None and pretrained.config.data.objective == "mlm+sop"
        outputs = _run(_pair_probs, model, tok, *texts, args.batch_size)
        for a, b, p in zip(*texts, (row[0] for batch in outputs for row in batch), strict=True):
            print(f"{'P(in order)' if sop else 'P(IsNext)'} {p:.3f}\t{a} || {b}")

if __name__ == "__main__":
    cli(main)
