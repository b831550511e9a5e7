"""What one item of bench/gpu_suite.py measures, run inside that item's own subprocess.

`run(item)` dispatches on item["kind"]: "matmul" (the practical bf16 matmul peak), "ours" (the
bertjax pretraining step: compile time, step time, memory, the attention path that really ran,
and optionally a profile), "loop" (the whole pretraining loop on real data: what the host adds
to the step), "peer" / "peer-compile" (Hugging Face BertForMaskedLM, eager or under
torch.compile, through bench/train.py's `run_peer`).
"""

import argparse
import tempfile
import time
from pathlib import Path

import hlo_summary  # bench/: the script's own folder
from profile_summary import summarize_trace

SPECIAL_IDS = dict(pad=0, unk=1, cls=2, sep=3, mask=4)


def run(item: dict) -> dict:
    return {"matmul": matmul_peak, "ours": run_ours, "loop": run_loop, "peer": run_peer,
            "peer-compile": run_peer_compiled}[item["kind"]](item)


def matmul_peak(item: dict) -> dict:
    """FLOP/s of a large square matmul on random data (constant data runs faster on an H200,
    /work/.library/device/KINDS.md), mean of 10 after 3 warm-ups: the practical peak."""
    import jax

    from bertjax.metrics import device_peak_flops

    n, dtype = item["n"], item["precision"]
    a, b = (jax.random.normal(jax.random.key(i), (n, n), dtype) for i in (0, 1))
    f = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        f(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(10):
        out = f(a, b)
    out.block_until_ready()
    seconds = (time.perf_counter() - t0) / 10
    return {"matmul_flops": 2 * n**3 / seconds, "device": jax.devices()[0].device_kind,
            "vendor_peak": device_peak_flops(item["precision"]), "jax": jax.__version__}


def setup_ours(item: dict):
    """(config, jitted train step, state, batch) for the item's shape and overrides."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bertjax import config
    from bertjax.masking import row_masker
    from bertjax.model import Bert
    from bertjax.optim import make_optimizer, schedule_args
    from bertjax.precision import Precision
    from bertjax.step import StepSpec, init_state, make_train_step
    from bertjax.tokenizer import SpecialTokens
    from bertjax.xla_options import compiler_options

    size, vocab, batch, seq = item["shape"]
    cfg = config.load([], [f"model.size={size}", f"model.vocab_size={vocab}",
                           "model.attention_dropout=0.0", f"precision.compute={item['precision']}",
                           f"data.seq_len={seq}", f"train.micro_batch={batch}", *item["set"]])
    if batch % cfg.train.micro_batch:
        raise ValueError(f"batch {batch} is not a multiple of micro-batch {cfg.train.micro_batch}")
    special = SpecialTokens(**SPECIAL_IDS)
    model = Bert(cfg.model, key=jax.random.key(0))
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    state = init_state(model, optimizer, cfg.precision)
    # Hidden dropout 0.1 (the default) as the peer's; attention dropout 0 on both sides.
    # Whole-word masking groups '##' pieces: as many as bert-base-uncased has (5,828 of 30,522).
    rng = np.random.default_rng(0)
    continuation = rng.random(vocab) < 0.19 if cfg.data.whole_word_mask else None
    spec = StepSpec(Precision.from_names(compute=item["precision"]),
                    row_masker(cfg.data, vocab, special, continuation), False,
                    cfg.model.dropout > 0, compiler_options(cfg.train.xla_flags))
    step = make_train_step(spec, optimizer, cfg.train.micro_batch)
    ids = rng.integers(5, vocab, (batch, seq)).astype(np.int32)
    ids[:, 0], ids[:, -1] = SPECIAL_IDS["cls"], SPECIAL_IDS["sep"]
    arrays = {"input_ids": jnp.asarray(ids), "token_type_ids": jnp.zeros((batch, seq), jnp.int32),
              "attention_mask": jnp.ones((batch, seq), bool)}
    return cfg, step, state, arrays, schedule_args(cfg.optim, 1000)


def run_ours(item: dict) -> dict:
    """Compile (timed apart), one warm-up step, `steps` timed steps, then an optional profile."""
    import jax
    import jax.numpy as jnp

    from bertjax.metrics import device_peak_flops
    from bertjax.model import attention_summary, flops_per_token

    t0 = time.perf_counter()
    cfg, step, state, batch, schedule = setup_ours(item)
    setup_s = time.perf_counter() - t0
    rows = batch["input_ids"].shape[0]

    def inputs(i):
        return (batch, jnp.int32(i * rows), jax.random.key(1), jax.random.key(2 + i), schedule)

    t0 = time.perf_counter()
    compiled = step.jitted.lower(inputs(0), state).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def one(i):
        box[0], metrics = compiled(inputs(i), box[0])
        return metrics

    t0 = time.perf_counter()
    jax.block_until_ready(one(0))
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, item["steps"] + 1):
        metrics = one(i)
    # The updated state too: the clock stops when the last step's update is done, whether or
    # not the runtime marks all of a program's outputs ready at once (the peer synchronizes).
    jax.block_until_ready((metrics, box[0]))
    step_s = (time.perf_counter() - t0) / item["steps"]
    hlo = compiled.as_text()
    try:  # what the step launches and moves, read statically; never at the timing's cost
        launched, static_error = hlo_summary.kernels(hlo), None
    except Exception as e:  # e.g. another jax's HLO text the reader does not know
        launched, static_error = [], f"{type(e).__name__}: {e}"[:200]
    memory = compiled.memory_analysis()
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    result = {
        "name": "bertjax", "setup_s": setup_s, "compile_s": compile_s, "first_step_s": first_s,
        "step_s": step_s, "loss": float(metrics["mlm_loss"] / metrics["mlm_weight"]),
        "flops_per_token": flops_per_token(cfg.model, cfg.data.seq_len, cfg.data.predictions),
        "peak_bytes": stats["peak_bytes_in_use"] if stats else None,
        "compiled_bytes": None if memory is None else (
            memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes),
        "attention": attention_summary(cfg.model, item["precision"]),
        "cudnn_attention_in_hlo": "fmha" in hlo.lower(),  # jax's cuDNN custom call
        # beside step_s: the bandwidth the step reaches (bench/gpu_aot.py reads the same)
        "kernels": sum(k["times"] for k in launched),
        "moved_bytes": sum(k["bytes"] * k["times"] for k in launched),
        "static_error": static_error,
        "device": device.device_kind, "vendor_peak": device_peak_flops(item["precision"]),
        "micro_batch": cfg.train.micro_batch, "jax": jax.__version__,
        "prng": str(jax.config.jax_default_prng_impl)}
    if item.get("profile_steps"):
        from profile_summary import trace_steps  # bench/: the script's own folder

        def profiled(i):
            jax.block_until_ready(one(item["steps"] + 1 + i))

        result["profile"] = trace_steps(profiled, item["profile_steps"], hlo)
    return result


def run_loop(item: dict) -> dict:
    """`python -m bertjax.train configs/demo.yaml` at the item's shape, its corpus prepared in a
    temporary folder: 5 log windows of item["steps"] steps each, no validation split (its
    compilation would only cost budget; the final checkpoint cannot be turned off). Windows 2-4
    (the first holds the compilation) give the loop's step time; beside the bare step's (item
    "ours", same shape, fixed batch on the device) it is what the host adds: reading and copying
    batches, dispatch, the metrics read-back at each log line. The fifth is traced
    (train.profile): the device's busy time per step (bench/profile_summary.py) against the step
    time of the untraced windows says how long the device waits for the host (the Python tracer
    slows the traced window's own)."""
    import jax

    from bertjax import config
    from bertjax.model import attention_summary, flops_per_token
    from bertjax.plot import read_metrics
    from bertjax.train import main as train

    size, vocab, batch, seq = item["shape"]
    every = item["steps"]
    with tempfile.TemporaryDirectory(prefix="gpu_suite_loop_") as tmp:
        overrides = [f"data.dir={tmp}/data", f"train.run_dir={tmp}/run", f"model.size={size}",
                     f"model.vocab_size={vocab}", f"tokenizer.vocab_size={min(vocab, 8192)}",
                     "model.dropout=0.1", "model.attention_dropout=0.0",
                     f"precision.compute={item['precision']}", f"data.seq_len={seq}",
                     f"train.micro_batch={batch}", f"train.steps={5 * every}",
                     f"train.profile=[{4 * every + 1},{5 * every}]",
                     f"train.log_every={every}", "data.validation_fraction=0.0",
                     "train.checkpoint_every=0", "train.fill_mask=[]", *item["set"]]
        t0 = time.time()
        ended = "ok"
        try:
            train([str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"), *overrides])
        except Exception as e:  # a failure after the timed windows (the end's fill-mask,
            ended = f"{type(e).__name__}: {e}"[:120]  # results) still leaves them to read
        run = Path(tmp) / "run"
        if not (run / "metrics.jsonl").is_file():
            raise RuntimeError(f"the run wrote no metrics; it ended: {ended}")
        rows = [r for r in read_metrics(run) if "loss" in r]  # not a validation row
        cfg = config.load([str(run / "config.yaml")], [])
        profile = summarize_trace(run / "profile", every)
    # The first row's window holds the compilation and has no rate (bertjax.metrics.Monitor).
    later = [r["tokens_per_s"] for r in rows[1:]]
    if len(later) != 4:
        raise RuntimeError(f"expected 5 training rows in metrics.jsonl, found {len(rows)}; the "
                           f"run ended: {ended}")
    later, traced = later[:3], later[3]
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    step_s = sum(batch * seq / rate for rate in later) / len(later)
    return {"name": "bertjax loop (demo corpus)", "step_s": step_s,
            "first_step_s": rows[0]["time"] - t0, "loss": rows[-1]["loss"],
            "flops_per_token": flops_per_token(cfg.model, seq, cfg.data.predictions),
            "peak_bytes": stats["peak_bytes_in_use"] if stats else None,
            "attention": attention_summary(cfg.model, item["precision"]), "run_end": ended,
            "window_tok_s": later, "device": device.device_kind,
            "jax": jax.__version__, "profile": profile, "traced_step_s": batch * seq / traced}


def peer_args(item: dict) -> argparse.Namespace:
    """bench/train.py's arguments for this item."""
    size, vocab, batch, seq = item["shape"]
    return argparse.Namespace(size=size, vocab=vocab, batch=batch, seq=seq, steps=item["steps"],
                              precision=item["precision"], attention_dropout=0.0)


def run_peer(item: dict) -> dict:
    """HF BertForMaskedLM (SDPA, autocast, fused AdamW on GPU), labels -100 off the 15 % masked
    positions: bench/train.py's peer, unchanged."""
    import train as hf_bench  # bench/train.py

    return hf_bench.run_peer(peer_args(item))


def run_peer_compiled(item: dict) -> dict:
    """The same peer with its model under torch.compile (Module.compile: compiled in place when
    first called, so the first step's time includes the compilation)."""
    import train as hf_bench  # bench/train.py
    from transformers import BertForMaskedLM

    build = BertForMaskedLM._from_config

    def build_compiled(*args, **kwargs):
        model = build(*args, **kwargs)
        model.compile()
        return model

    BertForMaskedLM._from_config = build_compiled  # what bench/train.py's run_peer calls
    result = hf_bench.run_peer(peer_args(item))
    result["name"] += " + torch.compile"
    result["compile_s"] = result["first_step_s"]
    return result
