"""GLUE fine-tuning benchmark: one epoch of bertjax's bucketed fine-tuning vs Hugging Face PyTorch
BertForSequenceClassification on the same examples, model shape, batch size and device.

    .venv-bench/bin/python bench/finetune.py [--task mnli] [--size tiny] [--batch 32] \
        [--buckets 32,48,64,96] [--max-examples N] [--lr 3e-4] [--dropout 0.1] \
        [--glue-dir ../shared/data/glue] [--set model.remat=true ...]

Both sides train a random encoder (speed does not depend on the weights) on the same rows,
tokenized once with the committed WordPiece vocabulary (configs/tokenizer_mini.json) and cut to
the largest bucket, with the GLUE recipe of configs/glue.yaml: AdamW (weight decay 0.01),
warm-up then linear decay, gradient clipping at 1.0, dropout 0.1 (--dropout), float32.
Ours: the jitted step of `python -m bertjax.train configs/<task>.yaml` on its bucketed
fixed-shape batches, the same fresh one-epoch fine-tune twice: the first compiles one step per
bucket, the second is the steady state. Peer: the usual Hugging Face recipe, shuffled batches
padded to their longest row (what DataCollatorWithPadding does), one warm-up batch, then one
epoch. Each side runs in its own subprocess. Reported: epoch time, examples/s, real
(non-padding) tokens/s, the share of computed positions that are padding, and the mean training
loss of the timed epoch (a check that both sides learn alike).
The environment needs jax (bertjax) and torch + transformers: `make bench-env`.
"""

import argparse
import time
from pathlib import Path

import sides  # bench/sides.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "configs" / "tokenizer_mini.json"
# The GLUE files each task reads (the local MNLI is the partial one in ../shared/data).
FILES = {"mnli": ["glue.train_file=train_pairs10k.tsv", "glue.dev_files=[dev_matched_subset.tsv]"]}


def load_rows(args):
    """(config, Encoded training split) exactly as fine-tuning builds them."""
    from bertjax import config, glue, glue_batches, tokenizer

    cfg = config.load([ROOT / "configs" / f"{args.task}.yaml"], [
        f"glue.data_dir={args.glue_dir}", *FILES.get(args.task, []),
        f"glue.max_train_examples={args.max_examples or 'null'}",
        f"glue.batch_size={args.batch}", f"glue.buckets=[{args.buckets}]", "glue.epochs=1",
        f"model.size={args.size}", "model.vocab_size=8192", f"optim.lr={args.lr}",
        *(f"{k}={args.dropout}" for k in ("model.dropout", "model.attention_dropout",
                                          "glue.classifier_dropout")), *args.set])
    tok = tokenizer.load(TOKENIZER)
    enc = glue_batches.encode(tok, glue.load_split(cfg.glue, "train"), cfg.glue.buckets)
    return cfg, enc


def run_ours(args) -> dict:
    import jax
    import numpy as np

    from bertjax import glue_batches
    from bertjax.finetune import with_glue_schedule
    from bertjax.glue_eval import device_batch
    from bertjax.seed_run import build_steps, fold
    from bertjax.sharding import make_mesh, shard_params
    from bertjax.starting_points import initial_model
    from bertjax.step import init_state

    cfg, enc = load_rows(args)
    cfg = with_glue_schedule(cfg)
    mesh = make_mesh()
    steps = build_steps(cfg, enc, initial_model(0, None, cfg))
    key = jax.random.key(0)
    epochs = []
    for _ in range(2):  # the same fresh fine-tune twice: compiled, then steady
        state = shard_params(init_state(initial_model(0, None, cfg), steps.optimizer,
                                        cfg.precision), mesh, cfg.mesh)
        progress, window = {"loss": 0.0, "weight": 0.0}, []
        positions = 0
        t0 = time.perf_counter()
        for step, batch in enumerate(glue_batches.iter_batches(enc, cfg.glue.batch_size, seed=0)):
            positions += batch["input_ids"].size
            state, sums = steps.train_step(
                (device_batch(batch, mesh), jax.random.fold_in(key, step), steps.schedule), state)
            window.append(sums)
        jax.block_until_ready(state.model)
        seconds = time.perf_counter() - t0
        fold(progress, window)
        epochs.append({"seconds": seconds, "positions": positions,
                       "loss": progress["loss"] / progress["weight"]})
    return {"name": f"bertjax (jax {jax.__version__}, buckets {list(enc.buckets)})",
            "first_epoch_s": epochs[0]["seconds"], "epoch_s": epochs[1]["seconds"],
            "positions": epochs[1]["positions"], "loss": epochs[1]["loss"],
            "examples": len(enc), "real_tokens": int(np.diff(enc.offsets).sum()),
            "device": jax.devices()[0].device_kind}


def peer_config(cfg):
    """transformers' BertConfig for our model config and GLUE task."""
    from transformers import BertConfig

    from bertjax import glue_tasks

    m = cfg.model
    return BertConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                      num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                      intermediate_size=m.intermediate_size,
                      max_position_embeddings=m.max_position_embeddings,
                      hidden_dropout_prob=m.dropout,
                      attention_probs_dropout_prob=m.attention_dropout,
                      classifier_dropout=cfg.glue.classifier_dropout,
                      num_labels=glue_tasks.get_task(cfg.glue.task).num_labels)


def peer_collate(enc, device):
    """collate(row indices) -> the torch batch of those rows, padded to the longest, as
    DataCollatorWithPadding does."""
    import numpy as np
    import torch

    rows = [(enc.tokens[a:b], enc.type_ids[a:b])
            for a, b in zip(enc.offsets[:-1], enc.offsets[1:], strict=True)]
    # int64 class ids (cross-entropy wants Long), float32 scores (STS-B regression)
    labels = torch.as_tensor(enc.labels.astype(np.int64 if enc.labels.dtype.kind == "i"
                                               else np.float32))

    def collate(index):
        width = max(len(rows[i][0]) for i in index)
        ids = np.zeros((len(index), width), np.int64)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for r, i in enumerate(index):
            n = len(rows[i][0])
            ids[r, :n], types[r, :n], mask[r, :n] = rows[i][0], rows[i][1], 1
        return {"input_ids": torch.as_tensor(ids).to(device),
                "token_type_ids": torch.as_tensor(types).to(device),
                "attention_mask": torch.as_tensor(mask).to(device),
                "labels": labels[index].to(device)}

    return collate


def run_peer(args) -> dict:
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

    cfg, enc = load_rows(args)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    hf_cfg = peer_config(cfg)
    batches = -(-len(enc) // args.batch)

    def fresh():
        torch.manual_seed(0)
        model = BertForSequenceClassification._from_config(hf_cfg, attn_implementation="sdpa")
        model = model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, eps=1e-6,
                                fused=cuda)
        return model, opt, get_linear_schedule_with_warmup(opt, int(0.1 * batches), batches)

    def step(batch):
        model, opt, sched = trainer
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    collate = peer_collate(enc, device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    order = np.random.default_rng(0).permutation(len(enc))
    index = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
    trainer = fresh()
    t0 = time.perf_counter()
    step(collate(index[0]))  # the warm-up batch: allocations, kernel selection
    sync()
    first = time.perf_counter() - t0
    trainer = fresh()  # the timed epoch is a whole fresh fine-tune, like ours
    losses, positions = [], 0
    t0 = time.perf_counter()
    for ix in index:
        batch = collate(ix)
        positions += batch["input_ids"].numel()
        losses.append(step(batch) * len(ix))
    sync()
    seconds = time.perf_counter() - t0
    return {"name": f"HF BertForSequenceClassification (torch {torch.__version__}, sdpa)",
            "first_epoch_s": first, "epoch_s": seconds, "positions": positions,
            "loss": float(sum(losses)) / len(enc), "examples": len(enc),
            "real_tokens": int(np.diff(enc.offsets).sum())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="mnli")
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--buckets", default="32,48,64,96", help="ours; the largest is both "
                        "sides' maximum length")
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--dropout", type=float, default=0.1, help="hidden, attention and "
                        "classifier dropout, both sides")
    sides.main(parser, {"ours": run_ours, "peer": run_peer}, report, __file__)


def report(args, results) -> None:
    ours, peer = results
    print(f"\n{args.task}, {ours['examples']:,} training rows ({ours['real_tokens']:,} real "
          f"tokens), {args.size}, batch {args.batch}, dropout {args.dropout}, float32, "
          f"device: {ours['device']}"
          + (f"; bertjax with {' '.join(args.set)}" if args.set else ""))
    width = max(len(r["name"]) for r in results)  # whole names: the peer names torch and SDPA
    print(f"{'':{width}} {'first s':>8} {'epoch s':>8} {'rows/s':>8} {'tokens/s':>9} "
          f"{'padding':>8} {'loss':>6} {'RSS MB':>7}")
    for r in results:
        print(f"{r['name']:{width}} {r['first_epoch_s']:8.2f} {r['epoch_s']:8.2f} "
              f"{r['examples'] / r['epoch_s']:8,.0f} {r['real_tokens'] / r['epoch_s']:9,.0f} "
              f"{1 - r['real_tokens'] / r['positions']:8.1%} {r['loss']:6.3f} "
              f"{r['max_rss_mb']:7.0f}")
    print(f"speed-up (epoch time): {peer['epoch_s'] / ours['epoch_s']:.2f}x   (first s: ours, "
          "the first epoch with one compilation per bucket; peer, one warm-up batch)")


if __name__ == "__main__":
    main()
