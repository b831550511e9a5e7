"""Trajectory parity: 20 AdamW steps of bertjax and of Hugging Face BertForMaskedLM from the same
weights on the same batches and masks must give the same losses (~1e-4 relative).

    .venv-bench/bin/python bench/trajectory.py [--steps 20]

This checks what a parity test of one forward pass cannot: the MLM loss normalisation, the mask
weights, the weight-decay mask (no decay on biases and LayerNorm) and AdamW + clipping semantics.
Both sides run in float32 on the CPU with dropout off and a constant learning rate.
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from bertjax import config
from bertjax.hf import bert_to_hf
from bertjax.hf_config import config_to_hf
from bertjax.masking import row_masker
from bertjax.model import Bert
from bertjax.optim import make_optimizer, schedule_args
from bertjax.precision import Precision
from bertjax.step import StepSpec, init_state, make_train_step, mask_rows
from bertjax.tokenizer import SpecialTokens

LR, WD, CLIP, B1, B2, EPS = 3e-3, 0.01, 1.0, 0.9, 0.98, 1e-6


def setup(args):
    cfg = config.load([], [
        "model.size=mini", "model.norm=post", f"model.vocab_size={args.vocab}",
        "model.dropout=0.0", "model.attention_dropout=0.0", "optim.schedule=constant",
        "optim.warmup=0.0", f"optim.lr={LR}", f"optim.weight_decay={WD}", f"optim.clip={CLIP}",
        f"optim.b1={B1}", f"optim.b2={B2}", f"optim.eps={EPS}", f"data.seq_len={args.seq}"])
    special = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)

    one_row = row_masker(cfg.data, args.vocab, special)

    spec = StepSpec(Precision(), one_row, False, False)
    return cfg, spec


def batches(args):
    """Two fixed batches in turn (fresh masks each step), so the loss falls visibly and a wrong
    optimizer detail would bend one trajectory away from the other."""
    rng = np.random.default_rng(0)
    fixed = [make_batch(rng, args) for _ in range(2)]
    for i in range(args.steps):
        yield fixed[i % 2]


def make_batch(rng, args):
    ids = rng.integers(5, args.vocab, (args.batch, args.seq)).astype(np.int32)
    lengths = rng.integers(args.seq // 2, args.seq + 1, args.batch)
    mask = np.arange(args.seq)[None] < lengths[:, None]
    ids[:, 0] = 2
    ids[np.arange(args.batch), lengths - 1] = 3
    ids[~mask] = 0
    return {"input_ids": jnp.asarray(ids), "token_type_ids": jnp.zeros_like(jnp.asarray(ids)),
            "attention_mask": jnp.asarray(mask)}


def hf_model(model: Bert, cfg, kind: str = "mlm", num_labels: int = 0):
    """The Hugging Face twin of `model` (kind mlm: BertForMaskedLM; cls:
    BertForSequenceClassification with `num_labels` outputs) holding its weights, in train mode."""
    hf_cfg = BertConfig(**{k: v for k, v in config_to_hf(
        cfg.model, kind, num_labels, classifier_dropout=cfg.glue.classifier_dropout).items()
        if k != "architectures"})
    hf_class = BertForMaskedLM if kind == "mlm" else BertForSequenceClassification
    hf = hf_class._from_config(hf_cfg, attn_implementation="eager")
    state = {k: torch.from_numpy(np.array(v)) for k, v in bert_to_hf(model, cfg.model,
                                                                     kind).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("decoder" in k for k in missing), (missing, unexpected)
    hf.tie_weights()
    return hf.train()


def hf_optimizer(hf, optim):
    """torch AdamW as Hugging Face fine-tunes: `optim`'s (bertjax's) rate and betas, weight
    decay on everything but biases and LayerNorm."""
    decay = [p for n, p in hf.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in hf.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg, spec = setup(args)
    model = Bert(cfg.model, key=jax.random.key(0))
    hf = hf_model(model, cfg)
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    state = init_state(model, optimizer, cfg.precision)
    step = make_train_step(spec, optimizer, args.batch)
    schedule = schedule_args(cfg.optim, args.steps)
    torch_opt = hf_optimizer(hf, cfg.optim)
    mask_key = jax.random.key(1)
    print(f"{'step':>4} {'bertjax loss':>13} {'HF loss':>13} {'rel diff':>9}")
    worst = 0.0
    for i, batch in enumerate(batches(args)):
        first = jnp.int32(i * args.batch)
        masked = mask_rows(spec, mask_key, batch, first)  # the masks our step will draw
        labels = np.full(batch["input_ids"].shape, -100, np.int64)
        rows = np.arange(args.batch)[:, None].repeat(masked["positions"].shape[1], 1)
        real = np.asarray(masked["weights"]) > 0
        labels[rows[real], np.asarray(masked["positions"])[real]] = \
            np.asarray(masked["labels"])[real]
        out = hf(input_ids=torch.from_numpy(np.asarray(masked["input_ids"], np.int64)),
                 attention_mask=torch.from_numpy(np.asarray(batch["attention_mask"], np.int64)),
                 token_type_ids=torch.zeros(batch["input_ids"].shape, dtype=torch.long),
                 labels=torch.from_numpy(labels))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
        torch_opt.step()
        torch_opt.zero_grad()
        state, metrics = step(state, batch, first, mask_key, jax.random.key(0), schedule)
        ours = float(metrics["mlm_loss"] / metrics["mlm_weight"])
        rel = abs(ours - out.loss.item()) / abs(out.loss.item())
        worst = max(worst, rel)
        print(f"{i + 1:>4} {ours:13.6f} {out.loss.item():13.6f} {rel:9.2e}")
    print(f"worst relative difference over {args.steps} steps: {worst:.2e}")


if __name__ == "__main__":
    main()
