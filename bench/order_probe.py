"""Does a pretrained encoder use word order? Validation MLM loss on real sequences and on the same
sequences with their tokens shuffled within each row.

    .venv/bin/python bench/order_probe.py CHECKPOINT [--data DIR] [--rows 256] [--seq 128]

A model that only counts which words are present (a bag of words: the early MLM plateau, where
attention has not yet learned where to look) scores the same on both; a model that uses syntax
and neighbours loses much more on the shuffled rows. CHECKPOINT is any kind load_pretrained takes;
DIR defaults to the run's data.dir. Same masks (positions and replacements) on both sides.
"""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.config import Config
from bertjax.data import PretrainData
from bertjax.errors import UserError, cli
from bertjax.loss import mlm_sums
from bertjax.masking import mask_tokens
from bertjax.pretrained import load_pretrained
from bertjax.tokenizer import load, special_tokens


def check_probe_fits(pretrained, args) -> None:
    """The probe reads MLM predictions at --seq positions: a fine-tuned classifier has no MLM
    head, and rows longer than the position table have no position embedding."""
    if pretrained.model.mlm is None:
        raise UserError(f"{args.checkpoint} has no MLM head (a fine-tuned classifier?): the probe "
                        "measures MLM loss; pass a pretraining run, checkpoint or bundle")
    positions = pretrained.model_cfg.max_position_embeddings
    if args.seq > positions:
        raise UserError(f"--seq {args.seq} is longer than the model's {positions} positions "
                        f"(model.max_position_embeddings); use --seq {positions} or less")


def distinct_rows(available: int, wanted: int, where: str, seq: int) -> int:
    """At most the split's own rows: positions past it wrap around to the same rows again (the
    demo's validation split holds 113 rows of 128 tokens; the default --rows is 256)."""
    if wanted <= available:
        return wanted
    print(f"note: {where} has {available} rows of {seq} tokens; probing those, not --rows {wanted}")
    return available


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", help="prepared data dir (default: the run's data.dir)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    for flag, value in (("--rows", args.rows), ("--seq", args.seq), ("--batch", args.batch)):
        if value < 1:
            raise UserError(f"{flag} {value}: give a positive number")
    pretrained = load_pretrained(args.checkpoint)
    check_probe_fits(pretrained, args)
    # The run's masking (rate, predictions per row) at the probe's length; defaults for HF dirs.
    data = dataclasses.replace((pretrained.config or Config()).data, seq_len=args.seq)
    data_dir = args.data or data.dir
    special = special_tokens(load(pretrained.tokenizer_path))
    split = PretrainData(data_dir, "validation", args.seq, "mlm", 0)
    args.rows = distinct_rows(split.num_sequences, args.rows, f"{data_dir}'s validation split",
                              args.seq)
    rows = split.rows(0, args.rows)
    ordered = rows["input_ids"].astype(np.int32)
    shuffled = ordered.copy()
    rng = np.random.default_rng(0)
    for row, length in zip(shuffled, rows["attention_mask"].sum(-1), strict=True):
        row[1:length - 1] = rng.permutation(row[1:length - 1])  # keep [CLS] ... [SEP] in place

    @jax.jit
    def sums(ids, mask, key):
        m = mask_tokens(key, ids, mask, rate=data.mask_rate, max_predictions=data.predictions,
                        vocab_size=pretrained.model_cfg.vocab_size, special=special)
        hidden = pretrained.model(m.input_ids, jnp.zeros_like(ids), mask)
        return mlm_sums(pretrained.model.mlm_logits(hidden, m.positions), m.labels, m.weights)

    print(f"{args.checkpoint}: {args.rows} validation rows of {args.seq} tokens from {data_dir}")
    print(f"{'tokens':<10}{'MLM loss':>10}{'accuracy':>10}")
    for name, ids in (("ordered", ordered), ("shuffled", shuffled)):
        total = {"mlm_loss": 0.0, "mlm_correct": 0.0, "mlm_weight": 0.0}
        for start in range(0, args.rows, args.batch):
            part = slice(start, start + args.batch)
            out = sums(jnp.asarray(ids[part]), jnp.asarray(rows["attention_mask"][part]),
                       jax.random.key(start))  # the same key, hence masks, for both orders
            total = {k: total[k] + float(out[k]) for k in total}
        print(f"{name:<10}{total['mlm_loss'] / total['mlm_weight']:>10.3f}"
              f"{total['mlm_correct'] / total['mlm_weight']:>10.3f}")


if __name__ == "__main__":
    cli(lambda argv: main())  # a bad path or checkpoint: one line, exit 2
