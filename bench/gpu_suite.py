"""Issue 18's measurements in one GPU call of at most ~7 minutes: bertjax's BERT pretraining
step against Hugging Face's (eager and torch.compile), our ablations, and where the time goes.

    python bench/gpu_suite.py [--smoke] [--budget 400] [--only ID,ID] [--out DIR]   # make gpu-suite

Each item runs in its own subprocess (bench/suite_items.py) under its own time budget, so a slow
compile, a crash or an out-of-memory costs that item alone: it is reported, never fatal. Items run
in priority order; one that cannot get at least its minimum time from what is left of --budget
is skipped and listed. A table prints as items finish; $OUT/gpu_suite.json (or --out) is
rewritten after each item, so a call cut short still returns what it measured. It exits 0 when
at least one item measured something, 1 when none did. --smoke runs the same code on CPU with
tiny shapes (tests/test_gpu_suite.py).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sides  # bench/sides.py: the script's own folder is on sys.path
from profile_summary import format_summary

BASE = ("base", 30522, 128, 128)  # size, vocab, batch, seq: BERT-base, seq 128
SHAPES = {"base": BASE, "b256": ("base", 30522, 256, 128), "s512": ("base", 30522, 32, 512),
          "mini": ("mini", 8192, 256, 128)}
XLA = {"xla-lhs": "--xla_gpu_enable_latency_hiding_scheduler=true",
       "xla-no-triton-gemm": "--xla_gpu_enable_triton_gemm=false",
       "xla-no-cmd-buffers": "--xla_gpu_enable_command_buffer=",
       "xla-cmd-buffers-while": "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,"
                                "CUSTOM_CALL,WHILE,CONDITIONAL",
       "xla-cudnn-layernorm": "--xla_gpu_enable_cudnn_layer_norm=true",
       "xla-cublaslt": "--xla_gpu_enable_cublaslt=true"}
# cuBLAS adds the q/k/v biases in its epilogue, and without the dot merger q, k and v stay three
# matmuls that write cuDNN's inputs directly: the least bytes of any program compiled so far
# (bench/gpu_aot.py; log.md, session 46). Its items run early, before the XLA ones above, and
# pass the flags as a run would make them its default: train.xla_flags, not XLA_FLAGS.
CUBLAS_UNMERGED = "--xla_gpu_enable_triton_gemm=false --xla_gpu_dot_merger_threshold_mb=0"
# Dropout's random bits: JAX's default threefry hash (sharding-invariant) against XLA's
# RngBitGenerator (Philox on GPU), through JAX's own option. Dropout 0 bounds what any generator
# can win; on this CPU dropout costs ~10 % of a mini step (log.md, session 37).
RBG = {"JAX_DEFAULT_PRNG_IMPL": "rbg"}


def item(id_, kind, shape=BASE, budget=75, set_=(), xla="", note="", env=None,
         **extra) -> dict:
    """One row of the plan: `set_` are config overrides, `xla` XLA flags, `env` environment
    variables of the item's process."""
    return {"id": id_, "kind": kind, "shape": list(shape), "budget": budget, "set": list(set_),
            "xla_flags": xla, "env": dict(env or {}), "note": note, **extra}


def gpu_plan() -> list[dict]:
    """Priority order: what the issue's targets need first, then the ablations, then more shapes.
    Budgets are caps; a BERT-base item is guessed at 30-40 s (start, compile, 10 steps): the first
    GPU call measures it, and what did not fit runs in a second call with --only."""
    return [
        item("matmul", "matmul", budget=30, n=8192),
        item("ours", "ours", budget=120, note="defaults (attention auto: cuDNN; layers unrolled)"),
        item("peer", "peer", budget=60),
        # The GPU default since session 45 is unrolled layers, from static figures (the scan
        # moves 50 % more bytes: bench/gpu_aot.py) and session 5's trace; this times the scan.
        item("scan", "ours", set_=["model.scan_layers=true"]),
        item("xla-cublas-unmerged", "ours", set_=[f"train.xla_flags={CUBLAS_UNMERGED}"]),
        item("cublas-gelu-tanh", "ours", set_=["model.gelu=tanh",
                                               f"train.xla_flags={CUBLAS_UNMERGED}"],
             note="the tanh GELU, which cuBLAS computes in the up-projection's epilogue"),
        item("attn-xla", "ours", set_=["model.attention=xla"]),
        item("b256", "ours", SHAPES["b256"]),
        item("remat", "ours", set_=["model.remat=true"]),
        item("peer-compile", "peer-compile", budget=120),
        item("micro", "ours", SHAPES["b256"], set_=["train.micro_batch=128"],
             note="batch 256 as 2 accumulated micro-batches of 128"),
        item("no-dropout", "ours", set_=["model.dropout=0.0"],
             note="what dropout costs: the most a faster generator can win"),
        item("rng-rbg", "ours", env=RBG, note="dropout bits from XLA's RngBitGenerator"),
        item("loop", "loop", budget=150, note="the whole pretraining loop on the demo corpus: "
             "beside ours, what the host adds"),
        *(item(name, "ours", xla=flag) for name, flag in XLA.items()),
        item("s512", "ours", SHAPES["s512"]),
        item("peer-s512", "peer", SHAPES["s512"], budget=45),
        item("mini", "ours", SHAPES["mini"], budget=60),
        item("peer-mini", "peer", SHAPES["mini"], budget=45),
        item("peer-b256", "peer", SHAPES["b256"], budget=45),
        item("wwm", "ours", set_=["data.whole_word_mask=true"], note="whole-word masking's cost"),
    ]


def smoke_plan() -> list[dict]:
    """The same code paths on CPU in tiny shapes, in as few processes as cover them: our item
    takes overrides, micro-batches, XLA flags (XLA_FLAGS, train.xla_flags: XLA:CPU accepts and
    ignores GPU options) and an environment variable; the loop prepares a slice of the demo
    corpus; the profile reruns our item from the cache."""
    tiny = ("tiny", 512, 8, 32)
    return [item("matmul", "matmul", budget=60, n=512),
            item("ours", "ours", tiny, budget=90, xla=XLA["xla-lhs"], env=RBG,
                 set_=["train.micro_batch=4", "model.attention=xla", "data.whole_word_mask=true",
                       f"train.xla_flags={CUBLAS_UNMERGED}"]),
            item("loop", "loop", tiny, budget=90, set_=["data.max_documents=300"]),
            item("peer", "peer", tiny, budget=90)]


def run_item(it: dict, timeout: float, env: dict) -> dict:
    """Run one item in a subprocess (its own process group, so torch.compile's workers die with
    it); returns the item with status "ok" and its result, or "failed"/"over budget"."""
    env = dict(env, **it.get("env", {}))
    if it["xla_flags"]:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {it['xla_flags']}".strip()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--item", json.dumps(it)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended just then
            pass
        proc.communicate()
        return dict(it, status=f"over budget ({timeout:.0f} s): skipped",
                    seconds=time.monotonic() - t0)
    seconds = time.monotonic() - t0
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = [x for x in err.strip().splitlines() if x.strip()][-12:]
        reason = next((x for x in reversed(tail) if not x.startswith(" ")), "no output")
        return dict(it, status=f"failed: {reason[:200]}", seconds=seconds, stderr=tail)
    return dict(it, status="ok", seconds=seconds, result=json.loads(lines[-1][7:]))


def torch_missing() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is None for m in ("torch", "transformers"))


class Runner:
    """Runs items in order within one overall budget, keeping the report and its JSON current."""

    def __init__(self, budget: float, min_item_s: float, out: Path, meta: dict):
        self.start, self.budget, self.min_item_s, self.out = time.monotonic(), budget, \
            min_item_s, out
        self.report = {"meta": meta, "items": [], "elapsed_s": 0.0}
        self.cache = tempfile.mkdtemp(prefix="gpu_suite_jax_cache_")  # the profile reuses it
        self.env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=self.cache, PYTHONUNBUFFERED="1")
        self.no_torch = torch_missing()

    def run(self, it: dict, reserve: float = 0.0) -> None:
        """Run `it`, leaving `reserve` seconds of the budget for what must come after."""
        elapsed = time.monotonic() - self.start
        left = self.budget - elapsed - reserve
        timeout = min(it["budget"], left)
        if it["kind"].startswith("peer") and self.no_torch:
            done = dict(it, status="skipped: torch and transformers are not installed")
        elif it.get("skip"):
            done = dict(it, status=f"skipped: {it['skip']}")
        elif timeout < min(it["budget"], self.min_item_s):
            done = dict(it, status=f"skipped: {max(left, 0):.0f} s left of the budget")
        else:
            print(f"[{elapsed:5.0f} s] {it['id']} (budget {timeout:.0f} s) ...", flush=True)
            done = run_item(it, timeout, self.env)
            print(f"        {done['status']} in {done['seconds']:.1f} s", flush=True)
        self.report["items"].append(done)
        self.report["elapsed_s"] = time.monotonic() - self.start
        write_json(self.out, self.report)


def write_json(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gpu_suite.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "gpu_suite.json")


def profile_item(done: list[dict], shape: list, steps: int, budget: float) -> dict:
    """A rerun of the fastest successful ours row of `shape`, profiled."""
    ok = [d for d in done if d["kind"] == "ours" and d["status"] == "ok" and d["shape"] == shape]
    if not ok:
        return item("profile", "ours", shape, budget, skip="no successful row of this shape")
    best = min(ok, key=lambda d: d["result"]["step_s"])
    return {k: v for k, v in best.items() if k not in ("status", "seconds", "result")} | {
        "id": "profile", "budget": budget, "profile_steps": steps,
        "note": f"profile of the fastest {' '.join(map(str, shape))} row: {best['id']}"}


def pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def shape_label(shape: list) -> str:
    size, vocab, batch, seq = shape
    return f"{size} b{batch} s{seq} v{vocab}"


def fastest_peers(items: list[dict]) -> dict[tuple, dict]:
    """Per shape, the fastest successful peer row (eager or torch.compile): what "vs peer"
    divides by, the strongest peer measured."""
    best = {}
    for d in items:
        if d["kind"].startswith("peer") and d["status"] == "ok":
            shape = tuple(d["shape"])
            if shape not in best or d["result"]["step_s"] < best[shape]["result"]["step_s"]:
                best[shape] = d
    return best


def peer_lines(report: dict) -> list[str]:
    """Which peer row each shape's "vs peer" is against, beside every peer row of that shape:
    a torch.compile peer that failed or was not run leaves the ratio against eager, said here."""
    lines = []
    for shape, best in fastest_peers(report["items"]).items():
        peers = [d for d in report["items"] if d["kind"].startswith("peer")
                 and d["status"] == "ok" and tuple(d["shape"]) == shape]
        timed = ", ".join(f"{d['id']} {d['result']['step_s'] * 1e3:.2f} ms" for d in peers)
        compiled = any(d["kind"] == "peer-compile" for d in peers)
        ours = next((d["result"]["flops_per_token"] for d in report["items"] if d["status"] == "ok"
                     and d["kind"] == "ours" and tuple(d["shape"]) == shape), None)
        dense = best["result"].get("dense_flops_per_token")  # its head at every position
        lines.append(f"vs peer at {shape_label(list(shape))}: against {best['id']} (of {timed})"
                     + ("" if compiled else "; no torch.compile peer measured at this shape")
                     + (f"; the peer's dense MLM head does {dense / ours - 1:.0%} more FLOPs "
                        "than its MFU credits" if ours and dense else ""))
    return lines


def rows(report: dict) -> list[str]:
    """The table: one line per item. MFU counts the same useful work (our sparse-head model
    FLOPs of the shape) for every row of a shape, the peer's too."""
    items = report["items"]
    ok = [d for d in items if d["status"] == "ok"]
    mm = next((d["result"] for d in ok if d["kind"] == "matmul"), {})
    # Every jax row knows the vendor peak: a call without the matmul item (--only) keeps its MFU.
    vendor = next((d["result"]["vendor_peak"] for d in ok if d["result"].get("vendor_peak")), None)
    measured = mm.get("matmul_flops")
    peer_s = {shape: d["result"]["step_s"] for shape, d in fastest_peers(items).items()}
    flops = {tuple(d["shape"]): d["result"]["flops_per_token"] for d in ok
             if d["kind"] in ("ours", "loop")}
    lines = [f"{'item':22} {'shape':22} {'compile s':>9} {'step ms':>8} {'tok/s':>10} "
             f"{'vs peer':>7} {'MFU':>6} {'%mm':>6} {'peak MB':>8} {'loss':>7}  attention / status"]
    for d in items:
        size, vocab, batch, seq = d["shape"]
        shape = "" if d["kind"] == "matmul" else shape_label(d["shape"])
        if d["kind"] == "matmul" and d["status"] == "ok":
            status = (f"{measured / 1e12:.3g} TFLOP/s measured ({d['n']}^3 {d['precision']}), "
                      f"vendor peak {f'{vendor / 1e12:.0f}' if vendor else 'n/a'}, "
                      f"{mm['device']}, jax {mm['jax']}")
        if d["status"] != "ok" or d["kind"] == "matmul":
            lines.append(f"{d['id']:22} {shape:22} {status if d['status'] == 'ok' else ''}"
                         f"{d['status'] if d['status'] != 'ok' else ''}")
            continue
        r = d["result"]
        tok_s = batch * seq / r["step_s"]
        achieved = tok_s * flops[tuple(d["shape"])] if tuple(d["shape"]) in flops else None
        peer = peer_s.get(tuple(d["shape"])) if d["kind"] in ("ours", "loop") else None
        speedup = f"{peer / r['step_s']:.2f}x" if peer else ""
        mem = r.get("peak_bytes") or r.get("compiled_bytes")
        mem = f"{mem / 2**20:.0f}" if mem else f"{r['max_rss_mb']:.0f}r"
        what = r.get("attention", r.get("name", ""))[:60]
        what += " [fmha in HLO]" if r.get("cudnn_attention_in_hlo") else ""
        if r.get("moved_bytes"):  # read from the compiled program: what the step moved, per s
            what += (f" [{r['kernels']} kernels, {r['moved_bytes'] / 1e9:.1f} GB: "
                     f"{r['moved_bytes'] / r['step_s'] / 1e12:.2f} TB/s]")
        elif r.get("static_error"):
            what += " [its HLO not read: static_error in the json]"
        what += f" [{r['prng']}]" if r.get("prng", "threefry2x32") != "threefry2x32" else ""
        what += f" [its end failed: {r['run_end']}]" if r.get("run_end", "ok") != "ok" else ""
        lines.append(
            f"{d['id']:22} {shape:22} {r.get('compile_s', r['first_step_s']):9.1f} "
            f"{r['step_s'] * 1e3:8.2f} {tok_s:10,.0f} {speedup:>7} "
            f"{pct(achieved / vendor if achieved and vendor else None):>6} "
            f"{pct(achieved / measured if achieved and measured else None):>6} "
            f"{mem:>8} {r['loss']:7.3f}  {what}")
    return lines


def report_text(report: dict) -> str:
    lines = rows(report)
    prof = next((d for d in report["items"] if d["id"] == "profile"), None)
    if prof and prof["status"] == "ok" and "profile" in prof["result"]:
        lines += ["", prof["note"], format_summary(prof["result"]["profile"],
                                                   prof["result"]["step_s"] * 1e3)]
    loop = next((d for d in report["items"] if d["kind"] == "loop" and d["status"] == "ok"), None)
    if loop and "profile" in loop["result"]:  # kernels below the step time: the device waited
        r = loop["result"]
        lines += ["", f"profile of the loop's last window (train.profile; its kernels against "
                      f"its own step time, {r['traced_step_s'] * 1e3:.2f} ms under the trace):",
                  format_summary(r["profile"], r["traced_step_s"] * 1e3)]
        if "error" not in r["profile"]:  # the Python tracer slows the host: the plain windows
            busy = r["profile"]["busy_ms_per_step"]
            lines.append(f"  the same kernels against the untraced windows' {r['step_s'] * 1e3:.2f}"
                         f" ms step: {busy / (r['step_s'] * 1e3):.0%} busy (below 100 %: the "
                         "device waits for the host)")
    skipped = [d["id"] for d in report["items"] if d["status"] != "ok"]
    lines += ["", *peer_lines(report),
              f"elapsed {report['elapsed_s']:.0f} s of a {report['meta']['budget']:.0f} s "
              f"budget; not ok: {', '.join(skipped) or 'none'}",
              "tok/s: batch x seq per step (no padding on either side); vs peer: the fastest peer "
              "row of the shape (named above), its step ms / the row's; MFU: model FLOPs with our "
              "sparse MLM head (data.predictions positions a sequence) / vendor peak, the same "
              "useful work credited to the peer rows of the shape (ours is pre-LN, one "
              "LayerNorm more than the peer's post-LN, and masks inside its timed step, the peer "
              "outside it); %mm: / the matmul measured "
              "above; compile s: ours = trace + XLA compile, timed apart from the steps, a peer "
              "row's = its first step (eager: no compile; torch.compile: compiled in it); peak "
              "MB: device peak (GPU: ours jax peak_bytes_in_use over the process, compile "
              "included; the peer's torch max_memory_allocated over its timed steps), compiled "
              "size (CPU jax), or process max RSS (r); loop: step ms from its log windows after "
              "the first, compile s = start to the first log line (prepare, compile, 1 window); "
              "[kernels, GB: TB/s]: what the compiled step launches and moves in memory, read "
              "from its HLO (bench/hlo_summary.py), over the step's time"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, ~1 minute")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole suite "
                        "(default 400; smoke 240)")
    parser.add_argument("--only", default="", help="comma-separated item ids (see gpu_plan)")
    parser.add_argument("--max-item-seconds", type=float, default=None,
                        help="cap every item's budget")
    parser.add_argument("--out", default=None, help="output folder (default $OUT, else "
                        "runs/gpu_suite)")
    parser.add_argument("--item", help=argparse.SUPPRESS)  # a child: run one item
    args = parser.parse_args()
    if args.item:
        from suite_items import run

        sides.emit(run(json.loads(args.item)))
        return
    plan = smoke_plan() if args.smoke else gpu_plan()
    precision, steps, prof = ("float32", 2, 2) if args.smoke else ("bfloat16", 10, 3)
    for it in plan:
        it.update(precision=precision, steps=steps)
        if args.max_item_seconds:
            it["budget"] = min(it["budget"], args.max_item_seconds)
    only = {x for x in args.only.split(",") if x}
    # A mistyped id ran nothing of it (and, with no id right, crashed at the end): on a lent GPU
    # that is a call spent. Refused before anything runs.
    if unknown := sorted(only - {it["id"] for it in plan} - {"profile"}):
        parser.error(f"--only: unknown item id(s) {', '.join(unknown)}; the ids are "
                     f"{', '.join(it['id'] for it in plan)}, profile")
    profiled = not only or "profile" in only
    main_shape = next(it["shape"] for it in plan if it["kind"] == "ours")
    plan = [it for it in plan if not only or it["id"] in only]
    budget = args.budget or (240 if args.smoke else 400)
    out = Path(args.out or os.environ.get("OUT") or "runs/gpu_suite")
    meta = {"budget": budget, "smoke": args.smoke, "python": sys.version.split()[0],
            "argv": sys.argv[1:]}
    runner = Runner(budget, 5 if args.smoke else 25, out, meta)
    profile_budget = min(60 if args.smoke else 90, args.max_item_seconds or 1e9)
    for it in plan:
        runner.run(it, reserve=profile_budget if profiled else 0.0)
    if profiled:
        profile = profile_item(runner.report["items"], main_shape, prof, profile_budget)
        runner.run(dict(profile, precision=precision, steps=steps))
    shutil.rmtree(runner.cache, ignore_errors=True)
    report = runner.report
    text = report_text(report)
    print("\n" + text)
    (out / "gpu_suite.txt").write_text(text + "\n")
    print(f"written: {out / 'gpu_suite.json'}, {out / 'gpu_suite.txt'}")
    # A partial table is a result (exit 0); a call that measured nothing is a failed call.
    if not any(d["status"] == "ok" for d in report["items"]):
        sys.exit(f"error: no item measured anything (not ok: "
                 f"{', '.join(d['id'] for d in report['items'])}); the table above says why")


if __name__ == "__main__":
    main()
