"""Inference: fill-mask, classify and NSP, as library functions and `python -m bertjax.predict`.

    python -m bertjax.predict fill-mask CHECKPOINT "The capital of France is [MASK]." [--top-k 5]

Inputs are padded to the longest in the batch; outputs are probabilities (softmax in f32).
"""

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.errors import UserError
from bertjax.model import Bert


def encode(tokenizer, texts: list, pairs: list | None = None) -> dict[str, np.ndarray]:
    """Tokenize (with [CLS]/[SEP] and token types) and right-pad to the longest row."""
    inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
    encodings = tokenizer.encode_batch(inputs)
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), length), np.int32)
    types = np.zeros_like(ids)
    mask = np.zeros(ids.shape, bool)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = e.ids
        types[row, :len(e.ids)] = e.type_ids
        mask[row, :len(e.ids)] = True
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@jax.jit
def _mlm_probs(model: Bert, ids, types, mask):
    return jax.nn.softmax(model.mlm_logits(model(ids, types, mask)), axis=-1)


def fill_mask(model: Bert, tokenizer, texts: list[str], top_k: int = 5):
    """For each text, for each [MASK] in it: the top-k (token, probability) pairs."""
    mask_id = tokenizer.token_to_id("[MASK]")
    batch = encode(tokenizer, texts)
    probs = np.asarray(_mlm_probs(model, *(jnp.asarray(batch[k]) for k in (
        "input_ids", "token_type_ids", "attention_mask"))))
    results = []
    for row, ids in enumerate(batch["input_ids"]):
        per_mask = []
        for pos in np.flatnonzero(ids == mask_id):
            best = np.argsort(-probs[row, pos])[:top_k]
            per_mask.append([(tokenizer.id_to_token(int(t)), float(probs[row, pos, t]))
                             for t in best])
        results.append(per_mask)
    return results


@jax.jit
def _class_probs(model: Bert, ids, types, mask):
    logits = model.classify(model(ids, types, mask), mask)
    return logits if logits.shape[-1] == 1 else jax.nn.softmax(logits, axis=-1)


@jax.jit
def _pair_probs(model: Bert, ids, types, mask):
    return jax.nn.softmax(model.pair_logits(model(ids, types, mask)), axis=-1)


def _run(fn, model: Bert, batch: dict) -> np.ndarray:
    return np.asarray(fn(model, *(jnp.asarray(batch[k]) for k in (
        "input_ids", "token_type_ids", "attention_mask"))))


def classify(model: Bert, tokenizer, texts: list[str], pairs: list[str] | None = None):
    """Class probabilities [n, labels] (or regression scores [n, 1]) of a GLUE model."""
    return _run(_class_probs, model, encode(tokenizer, texts, pairs))


def next_sentence(model: Bert, tokenizer, first: list[str], second: list[str]) -> np.ndarray:
    """P(IsNext) of each (first, second) pair from the NSP head."""
    return _run(_pair_probs, model, encode(tokenizer, first, second))[:, 0]


def _inputs(args) -> tuple[list[str], list[str] | None]:
    """TEXT arguments, or a file: one input per line, a pair as `first<TAB>second`."""
    if args.file:
        from pathlib import Path

        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"--file {path} does not exist")
        lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        lines = args.text
    if not lines:
        raise UserError("no input: give TEXT arguments or --file FILE")
    split = [x.split("\t", 1) for x in lines]
    if all(len(s) == 2 for s in split):
        return [s[0] for s in split], [s[1] for s in split]
    if args.command == "nsp" and len(lines) == 2 and not args.file:
        return [lines[0]], [lines[1]]
    return lines, None


def main(argv: list[str]) -> None:
    import argparse

    from bertjax import glue
    from bertjax import tokenizer as tokenizer_lib
    from bertjax.pretrained import load_pretrained

    parser = argparse.ArgumentParser(prog="python -m bertjax.predict")
    parser.add_argument("command", choices=["fill-mask", "classify", "nsp"])
    parser.add_argument("checkpoint", help="run dir, checkpoint dir, bundle or HF BERT dir")
    parser.add_argument("text", nargs="*", help="inputs; a pair as 'first<TAB>second'")
    parser.add_argument("--file", help="one input per line (pairs tab-separated)")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    pretrained = load_pretrained(args.checkpoint)
    if pretrained.tokenizer_path is None:
        raise UserError(f"{args.checkpoint} carries no tokenizer.json; export it with one")
    tok = tokenizer_lib.load(pretrained.tokenizer_path)
    model, texts = pretrained.model, _inputs(args)
    needs = {"fill-mask": ("mlm", "an MLM head"), "classify": ("classifier", "a GLUE head"),
             "nsp": ("nsp", "an NSP head")}[args.command]
    if getattr(model, needs[0]) is None:
        raise UserError(f"{args.checkpoint} has no {needs[1]}, which `{args.command}` needs")
    if args.command == "fill-mask":
        for text, masks in zip(texts[0], fill_mask(model, tok, texts[0], args.top_k),
                               strict=True):
            if not masks:
                raise UserError(f"no [MASK] token in {text!r}")
            print(text)
            for i, top in enumerate(masks):
                print(f"  [MASK] {i + 1}: " + ", ".join(f"{t} {p:.3f}" for t, p in top))
    elif args.command == "classify":
        task = pretrained.config.glue.task if pretrained.config else None
        labels = glue.get_task(task).labels if task else ()
        for text, probs in zip(texts[0], classify(model, tok, *texts), strict=True):
            if probs.shape[0] == 1:
                print(f"{float(probs[0]):.4f}\t{text}")
            else:
                names = labels or [str(i) for i in range(len(probs))]
                print("  ".join(f"{n} {p:.3f}" for n, p in zip(names, probs, strict=True))
                      + f"\t{text}")
    else:
        if texts[1] is None:
            raise UserError("nsp needs sentence pairs: two TEXT arguments, or 'a<TAB>b' lines")
        for a, b, p in zip(*texts, next_sentence(model, tok, *texts), strict=True):
            print(f"P(IsNext) {p:.3f}\t{a} || {b}")


if __name__ == "__main__":
    from bertjax.errors import cli

    cli(main)
