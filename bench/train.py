"""Train-step benchmark: bertjax vs Hugging Face PyTorch BertForMaskedLM, same shapes and device.

    .venv-bench/bin/python bench/train.py --size tiny --batch 32 --seq 128 [--precision bfloat16] \
        [--set model.remat=true ...]

Each side runs in its own subprocess (so peak memory is its own): random tokens, 15 % masked,
AdamW after global-norm clipping (1.0), forward + backward + update. Reported: compile/first-step
time, step time, tokens/s, peak memory, achieved model FLOP/s as a share of this device's
*measured* matmul peak (a large square matmul timed here), and MFU against the vendor peak where
known. The environment needs jax
(bertjax) and torch + transformers: `make bench-env` creates .venv-bench with both.
"""

import argparse
import time

import sides  # bench/sides.py: the script's own folder is on sys.path


def measured_matmul_peak(dtype: str) -> float:
    """FLOP/s of a large square matmul through XLA on this device (the practical peak): the GPU
    suite's measurement (random data: on an H200 a product of zeros ran 13 % faster)."""
    import jax
    from suite_items import matmul_peak  # bench/: the script's own folder

    n = 8192 if jax.default_backend() != "cpu" else 2048
    return matmul_peak({"n": n, "precision": dtype})["matmul_flops"]


def run_ours(args) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bertjax import config
    from bertjax.masking import row_masker
    from bertjax.metrics import device_peak_flops
    from bertjax.model import Bert, flops_per_token
    from bertjax.optim import make_optimizer, schedule_args
    from bertjax.precision import Precision
    from bertjax.step import StepSpec, init_state, make_train_step
    from bertjax.tokenizer import SpecialTokens

    cfg = config.load([], [f"model.size={args.size}", f"model.vocab_size={args.vocab}",
                           f"model.attention_dropout={args.attention_dropout}",
                           f"precision.compute={args.precision}", f"data.seq_len={args.seq}",
                           *args.set])
    special = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)

    one_row = row_masker(cfg.data, args.vocab, special)
    model = Bert(cfg.model, key=jax.random.key(0))
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    state = init_state(model, optimizer, cfg.precision)
    spec = StepSpec(Precision.from_names(compute=args.precision), one_row, False, True)
    step = make_train_step(spec, optimizer, args.batch)
    schedule = schedule_args(cfg.optim, 1000)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, args.vocab, (args.batch, args.seq)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3
    batch = {"input_ids": jnp.asarray(ids), "token_type_ids": jnp.zeros_like(jnp.asarray(ids)),
             "attention_mask": jnp.ones(ids.shape, bool)}
    mask_key = jax.random.key(1)

    def call(i):
        return step(state_box[0], batch, jnp.int32(i * args.batch), mask_key,
                    jax.random.key(i), schedule)

    state_box = [state]
    t0 = time.perf_counter()
    state_box[0], metrics = call(0)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
        state_box[0], metrics = call(i)
    jax.block_until_ready((metrics, state_box[0]))  # the last update done, as the peer syncs
    step_time = (time.perf_counter() - t0) / args.steps
    device = jax.devices()[0]
    stats = device.memory_stats() if jax.default_backend() != "cpu" else None
    return {"name": "bertjax", "first_step_s": first, "step_s": step_time,
            "loss": float(metrics["mlm_loss"] / metrics["mlm_weight"]),
            "flops_per_token": flops_per_token(cfg.model, args.seq, cfg.data.predictions),
            "peak_bytes": stats["peak_bytes_in_use"] if stats else None,
            "device": device.device_kind,
            # bertjax's own (the card's, float32's TF32 or full peak as jax computes)
            "vendor_peak": device_peak_flops(args.precision),
            "matmul_peak": measured_matmul_peak("bfloat16" if args.precision != "float32"
                                                else "float32")}


def run_peer(args) -> dict:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from bertjax import config
    from bertjax.model import flops_per_token

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg = config.load([], [f"model.size={args.size}", f"model.vocab_size={args.vocab}"])
    mcfg = cfg.model
    hf_cfg = BertConfig(vocab_size=args.vocab, hidden_size=mcfg.hidden_size,
                        num_hidden_layers=mcfg.num_layers, num_attention_heads=mcfg.num_heads,
                        intermediate_size=mcfg.intermediate_size,
                        attention_probs_dropout_prob=args.attention_dropout)
    model = BertForMaskedLM._from_config(hf_cfg, attn_implementation="sdpa").to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, args.vocab, (args.batch, args.seq), generator=gen)
    masked = torch.rand(ids.shape, generator=gen) < 0.15
    labels = torch.where(masked, ids, torch.full_like(ids, -100)).to(device)
    ids = torch.where(masked, torch.full_like(ids, 4), ids).to(device)
    attention = torch.ones_like(ids)
    autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(enabled=args.precision == "float16")

    def step():
        with torch.autocast(device.type, dtype=autocast or torch.float32,
                            enabled=autocast is not None):
            loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        scaler.scale(loss).backward()
        # Our step clips the global gradient norm (optim.clip), as Hugging Face's Trainer does
        # (max_grad_norm 1.0): the peer does that work too. unscale_ first: clip true gradients.
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    step_time = (time.perf_counter() - t0) / args.steps
    return {"name": "HF BertForMaskedLM (torch " + torch.__version__ + ", sdpa)",
            "first_step_s": first, "step_s": step_time, "loss": float(loss),
            # its MLM head at every position (ours: at the predicted ones alone)
            "dense_flops_per_token": flops_per_token(mcfg, args.seq),
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--attention-dropout", type=float, default=0.0)
    sides.main(parser, {"ours": run_ours, "peer": run_peer}, report, __file__)


def report(args, results) -> None:
    ours, peer = results
    tokens = args.batch * args.seq
    print(f"\n{args.size}, batch {args.batch} x seq {args.seq}, {args.precision}, "
          f"attention dropout {args.attention_dropout}, device: {ours['device']}, measured "
          f"matmul peak {ours['matmul_peak'] / 1e12:.2f} TFLOP/s"
          + (f"; bertjax with {' '.join(args.set)}" if args.set else ""))
    print(f"{'':44} {'first s':>8} {'step ms':>8} {'tokens/s':>10} {'peak MB':>8} "
          f"{'%mm-peak':>8} {'MFU':>6}")
    vendor = ours["vendor_peak"]
    for r in results:
        rate = tokens / r["step_s"]
        achieved = rate * ours["flops_per_token"]  # the same useful work for both sides
        mem = r["peak_bytes"] / 2**20 if r["peak_bytes"] else r["max_rss_mb"]
        mfu = f"{achieved / vendor:6.1%}" if vendor else "   n/a"
        print(f"{r['name'][:44]:44} {r['first_step_s']:8.2f} {r['step_s'] * 1e3:8.1f} "
              f"{rate:10,.0f} {mem:8.0f} {achieved / ours['matmul_peak']:8.1%} {mfu}")
    print(f"speed-up (tokens/s): {peer['step_s'] / ours['step_s']:.2f}x   "
          "(peak MB: device memory on GPU, process max RSS on CPU; FLOPs counted with the sparse "
          "MLM head for both, i.e. useful work)")


if __name__ == "__main__":
    main()
