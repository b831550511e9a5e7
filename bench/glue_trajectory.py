"""GLUE trajectory parity: N steps of bertjax's GLUE fine-tuning and of Hugging Face
BertForSequenceClassification (torch AdamW, get_linear_schedule_with_warmup, clip_grad_norm_) from
the same weights on the same batches give the same losses: MNLI's classifier, STS-B's regressor.

    .venv-bench/bin/python bench/glue_trajectory.py [--steps 20] [--tasks mnli stsb] [--exact-adam]
"""

import argparse
import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from trajectory import hf_model, hf_optimizer  # bench/trajectory.py: the MLM parity bench
from transformers import get_linear_schedule_with_warmup

from bertjax import config, glue, glue_batches
from bertjax.finetune import resolve
from bertjax.glue_eval import device_batch
from bertjax.model import num_labels
from bertjax.seed_run import build_steps
from bertjax.sharding import make_mesh, shard_params, with_mesh
from bertjax.starting_points import initial_model
from bertjax.step import init_state

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"mnli": "mnli_local.yaml", "stsb": "stsb.yaml"}  # local MNLI: the partial files


def setup(task: str, args):
    """(config, Encoded training rows, model, Steps) as `python -m bertjax.train
    configs/mnli_local.yaml` / `configs/stsb.yaml` builds them (finetune.resolve,
    glue_batches.encode, seed_run.build_steps, starting_points.initial_model): a random post-LN
    mini encoder (no init.checkpoint; configs/tokenizer_mini.json), dropout 0, float32, real GLUE
    pairs with token types right-padded to their bucket (a bucket's last batch is partial), and
    glue.epochs set so that the run is args.steps steps long."""
    cfg = config.load([ROOT / "configs" / CONFIGS[task]], [
        f"glue.data_dir={args.glue_dir}", f"glue.max_train_examples={args.steps * args.batch}",
        f"glue.batch_size={args.batch}", "model.size=mini", "model.norm=post",
        "model.dropout=0.0", "model.attention_dropout=0.0", "glue.classifier_dropout=0.0",
        f"optim.lr={args.lr}", f"tokenizer.path={ROOT / 'configs' / 'tokenizer_mini.json'}"])
    cfg, start, tok = resolve(cfg)
    enc = glue_batches.encode(tok, glue.load_split(cfg.glue, "train"), cfg.glue.buckets)
    per_epoch = glue_batches.num_batches(enc, cfg.glue.batch_size)
    # A fraction of an epoch (fine-tuning takes one): args.steps batches. Half a step short,
    # so build_steps' ceil(epochs * per_epoch) cannot round a float's last bit up a step.
    cfg = dataclasses.replace(cfg, glue=dataclasses.replace(
        cfg.glue, epochs=(args.steps - 0.5) / per_epoch))
    model = initial_model(cfg.glue.seeds[0], start, cfg)
    steps = build_steps(cfg, enc, model)
    assert steps.total == args.steps, (steps.total, args.steps)
    return cfg, enc, model, steps


def hf_inputs(batch: dict, regression: bool) -> dict:
    """The batch's valid rows as transformers takes them (padding rows are not examples)."""
    rows = batch["valid"]
    inputs = {k: torch.from_numpy(batch[k][rows].astype(np.int64))
              for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = batch["labels"][rows]
    inputs["labels"] = torch.from_numpy(labels.astype(np.float32 if regression else np.int64))
    return inputs


def exact_adam_bias_correction() -> None:
    """--exact-adam, a diagnosis (not what training runs). Without it expect ~1e-6 (MNLI) and a
    few 1e-5 (STS-B, whose larger gradients make the loss more sensitive): bertjax's Adam is
    optax's by design (tests/test_optim.py), which computes the bias correction 1 - b2**t in
    float32, where float32(0.999) is 1.3e-8 off and 1 - b2**t ~ 0.001 t turns that into a 1e-5
    to 2e-5 relative error (torch: float64), so early updates are ~1e-5 smaller than exact
    Adam's. This computes it as -expm1(t * log(b2)), the log in float64; what is left is float32
    rounding (~1e-6). optax's scale_by_adam looks optax.tree.bias_correction up when the train
    step is traced, so this must run before."""
    def bias_correction(moment, decay, count):
        correction = -jnp.expm1(count.astype(jnp.float32) * np.float32(math.log(decay)))
        return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)

    optax.tree.bias_correction = bias_correction


def run_task(task: str, args) -> float:
    """Train both sides, print the table; returns the worst relative loss difference.

    The schedule is bertjax's GLUE one: warm-up (int(optim.warmup * N) steps), then linear decay
    to 0 (finetune.with_glue_schedule forces final_lr_fraction=0), which is transformers'
    get_linear_schedule_with_warmup with that warm-up, so both sides use theirs as is (the rates
    are compared). Hugging Face sees a batch's valid rows only (what a DataLoader gives), and its
    AdamW takes the config's betas and eps (glue.yaml: b2 0.999, eps 1e-6, not torch's 1e-8)."""
    cfg, enc, model, steps = setup(task, args)
    labels = num_labels(model)
    hf = hf_model(model, cfg, "cls", labels)
    torch_opt = hf_optimizer(hf, cfg.optim)
    warmup = int(steps.schedule.warmup)
    torch_schedule = get_linear_schedule_with_warmup(torch_opt, warmup, steps.total)
    mesh = make_mesh()
    train_step = with_mesh(steps.train_step, mesh)  # as finetune.setup wraps it
    seed = cfg.glue.seeds[0]
    state = shard_params(init_state(model, steps.optimizer, cfg.precision), mesh, cfg.mesh)
    key = jax.random.key(seed)
    print(f"{task}: {labels} output(s), {len(enc)} rows, batch {cfg.glue.batch_size}, "
          f"{steps.total} steps, peak lr {cfg.optim.lr:g}, warm-up {warmup}, "
          f"{cfg.optim.schedule} decay to {cfg.optim.final_lr_fraction:g}")
    print(f"{'step':>4} {'rows':>5} {'len':>4} {'lr':>9} {'bertjax loss':>13} {'HF loss':>13} "
          f"{'rel diff':>9}")
    worst = worst_lr = 0.0
    batches = glue_batches.iter_batches(enc, cfg.glue.batch_size, seed=seed, epoch=0)
    for i, batch in zip(range(steps.total), batches, strict=False):
        lr = torch_schedule.get_last_lr()[0]
        worst_lr = max(worst_lr, abs(steps.lr(i) - lr) / cfg.optim.lr)
        out = hf(**hf_inputs(batch, labels == 1))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.optim.clip)
        torch_opt.step()
        torch_schedule.step()
        torch_opt.zero_grad()
        # seed_run.SeedRun.train_epoch's call (the key is unused: dropout is off)
        state, sums = train_step((device_batch(batch, mesh), jax.random.fold_in(key, i + 1),
                                  steps.schedule), state)
        ours = float(sums["loss"]) / max(float(sums["weight"]), 1.0)
        theirs = out.loss.item()
        rel = abs(ours - theirs) / abs(theirs)
        worst = max(worst, rel)
        print(f"{i + 1:>4} {int(batch['valid'].sum()):>5} {batch['input_ids'].shape[1]:>4} "
              f"{lr:9.2e} {ours:13.6f} {theirs:13.6f} {rel:9.2e}")
    print(f"{task}: worst relative loss difference over {steps.total} steps: {worst:.2e} "
          f"(learning rates: {worst_lr:.1e} of the peak)\n")
    return worst


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tasks", nargs="+", choices=sorted(CONFIGS), default=["mnli", "stsb"])
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--exact-adam", action="store_true",
                        help="our Adam's bias correction without float32 cancellation (diagnosis)")
    args = parser.parse_args()
    if args.exact_adam:
        exact_adam_bias_correction()
    torch.manual_seed(0)
    worst = {task: run_task(task, args) for task in args.tasks}
    for task, rel in worst.items():
        head = "regression (MSE)" if task == "stsb" else "classification (cross-entropy)"
        print(f"{task} {head}: worst relative difference {rel:.2e}")


if __name__ == "__main__":
    main()
