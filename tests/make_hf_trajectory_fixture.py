"""Build the GLUE fine-tuning trajectory fixtures: STEPS steps of Hugging Face's
BertForSequenceClassification trained as transformers users train it (torch AdamW without decay
on biases and LayerNorm, get_linear_schedule_with_warmup, clip_grad_norm_) from the hf_tiny
classifier, on fixed pair batches; its losses and learning rates, for tests/test_hf_trajectory.py.

    .venv-bench/bin/python tests/make_hf_trajectory_fixture.py   (torch, transformers: no test deps)
"""

import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
import transformers
from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

FIXTURES = Path(__file__).resolve().parent / "fixtures"
START = FIXTURES / "hf_tiny" / "cls"  # tests/make_hf_fixture.py's 3-class classifier
OUT = FIXTURES / "hf_trajectory"
COMMAND = ".venv-bench/bin/python tests/make_hf_trajectory_fixture.py"
STEPS, BATCH, SEQ_LEN, VOCAB = 8, 4, 16, 99
CLS_ID, SEP_ID, PAD_ID = 2, 3, 0
# What the test's bertjax config sets: configs/glue.yaml's betas, eps and clip; a rate at which
# the tiny model's loss moves visibly; warm-up 0.25 of 8 steps = 2, as bertjax counts it; weight
# decay 0.1 (RoBERTa's), not BERT's 0.01, so that decaying LayerNorm too moves the loss past the
# test's tolerance in 8 steps (at 0.01 by only 4e-5 to 8e-5).
OPTIM = dict(lr=3e-3, warmup=0.25, weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-6, clip=1.0)


def make_batches(task: str) -> dict[str, np.ndarray]:
    """STEPS batches [STEPS, BATCH, SEQ_LEN] of right-padded pairs ([CLS] A [SEP] B [SEP], B of
    type 1) of varied lengths. The last batch holds one padding row as bertjax's GLUE batches
    make them (a copy of the first row, valid False): Hugging Face never sees it."""
    rng = np.random.default_rng(0 if task == "mnli" else 1)
    shape = (STEPS, BATCH, SEQ_LEN)
    ids, types, mask = (np.zeros(shape, np.int32) for _ in range(3))
    for step in range(STEPS):
        for row in range(BATCH):
            length = int(rng.integers(6, SEQ_LEN + 1))
            first = int(rng.integers(2, length - 2))  # [SEP] after segment A
            ids[step, row, :length] = rng.integers(5, VOCAB, length)
            ids[step, row, [0, first, length - 1]] = CLS_ID, SEP_ID, SEP_ID
            types[step, row, first + 1:length] = 1
            mask[step, row, :length] = 1
    labels = (rng.integers(0, 3, (STEPS, BATCH)).astype(np.int32) if task == "mnli"
              else rng.uniform(0, 5, (STEPS, BATCH)).astype(np.float32))
    valid = np.ones((STEPS, BATCH), bool)
    valid[-1, -1] = False
    for array in (ids, types, mask, labels):
        array[-1, -1] = array[-1, 0]
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels,
                valid=valid.astype(np.int32))


def start_model(task: str) -> BertForSequenceClassification:
    """mnli: hf_tiny/cls as it is; stsb: its encoder and pooler under a new 1-output head
    (saved to OUT/stsb/, the test's starting point)."""
    if task == "mnli":
        return BertForSequenceClassification.from_pretrained(START, attn_implementation="eager")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        START, num_labels=1, ignore_mismatched_sizes=True, attn_implementation="eager")
    model.save_pretrained(OUT / "stsb", safe_serialization=True)
    return model


def train(task: str, batches: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Losses and learning rates of STEPS steps; dropout off (eval mode), float32."""
    model = start_model(task).eval()
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters()
             if not (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": OPTIM["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=OPTIM["lr"], betas=(OPTIM["b1"], OPTIM["b2"]),
                                  eps=OPTIM["eps"])
    schedule = get_linear_schedule_with_warmup(optimizer, int(OPTIM["warmup"] * STEPS), STEPS)
    losses, lrs = [], []
    for step in range(STEPS):
        rows = batches["valid"][step].astype(bool)
        inputs = {k: torch.from_numpy(batches[k][step][rows].astype(np.int64))
                  for k in ("input_ids", "token_type_ids", "attention_mask")}
        labels = torch.from_numpy(batches["labels"][step][rows])
        lrs.append(schedule.get_last_lr()[0])
        loss = model(**inputs, labels=labels.long() if task == "mnli" else labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["clip"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return dict(losses=np.array(losses, np.float64), lrs=np.array(lrs, np.float64))


def main() -> None:
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    lines = []
    for task in ("mnli", "stsb"):
        batches = make_batches(task)
        result = train(task, batches)
        safetensors.numpy.save_file(batches | result, str(OUT / f"{task}.safetensors"),
                                    metadata={"optim": json.dumps(OPTIM)})
        lines.append(f"| {task} | " + " ".join(f"{x:.5f}" for x in result["losses"]) + " |")
    versions = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
                f"numpy {np.__version__}, Python {platform.python_version()}")
    (OUT / "README.md").write_text(f"""# hf_trajectory: GLUE fine-tuning losses of Hugging Face

Generated by `tests/make_hf_trajectory_fixture.py`; do not edit by hand.

- command: `{COMMAND}` (from the repository root); {versions}
- start: `hf_tiny/cls` (mnli: 3 classes, cross-entropy); `stsb/` = its encoder and pooler under
  a new 1-output head (`torch.manual_seed(0)`; regression, MSE)
- {STEPS} steps, batch {BATCH} x {SEQ_LEN}, right-padded pairs; the last batch's last row is
  padding (valid 0), left out of Hugging Face's batch
- torch AdamW {json.dumps(OPTIM)}, no decay on biases and LayerNorm,
  `get_linear_schedule_with_warmup`, `clip_grad_norm_`, eval mode (no dropout), float32
- `<task>.safetensors`: the batches [steps, batch, seq], `labels`, `valid`, and float64
  `losses` and `lrs` (the rate each step used)

| task | losses |
|---|---|
{chr(10).join(lines)}
""")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
