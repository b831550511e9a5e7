"""Time by kernel family from a `jax.profiler` trace, as text: no TensorBoard needed.

`trace_steps(fn, steps, compiled_text)` runs `fn` under `jax.profiler.trace`, reads the XSpace
that trace writes (`*.xplane.pb`, through jax.profiler.ProfileData; `summarize_trace` reads one
written before, e.g. by a run's train.profile), and sums the device time of every XLA op by
family (matmul, attention, fusions/elementwise, copies, scatter/gather, collectives), naming each
op from the compiled HLO text (`compiled.as_text()`) and the "attention" named scope of
bertjax.attention.attention. Not the `perfetto_trace.json.gz` beside it: that file keeps only
the trace's first 1,000,000 events by start time, and a window whose Python calls fill them
(a run's loop, traced with the Python tracer on) lost its later kernels from the sums.

As a command, the text summary of a run's trace (train.profile=[FIRST, LAST]), no TensorBoard:

    .venv/bin/python bench/profile_summary.py RUN/profile --steps N   # N = LAST - FIRST + 1

(with several processes, give one's RUN/profile/processN). Without the compiled HLO text, ops are
told apart by their names and kernels' names only (XLA's attention counts as fusions).
"""

import argparse
import collections
import re
import tempfile
from pathlib import Path

FAMILIES = ("matmul", "attention", "fusions/elementwise", "copies", "scatter/gather",
            "collectives")
# Control flow: on CPU a while loop's event spans its body's ops, which have events of their own.
CONTAINERS = {"while", "conditional", "call", "async-start", "async-done"}
COPY_OPS = {"copy", "copy-start", "copy-done", "transpose", "dynamic-update-slice", "concatenate",
            "broadcast", "pad", "slice", "dynamic-slice", "bitcast", "reshape"}
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(")


def family(op: str, kernel: str = "", opcode: str = "", target: str = "",
           op_name: str = "") -> str:
    """The family of one XLA op from its name, the GPU kernel's name, its opcode, custom-call
    target and jax op_name. The first rule that matches wins: a cuDNN attention kernel is
    attention, not matmul; an "input_scatter_fusion" is a scatter, not a fusion. Only the op_name
    path's "attention" scope is read (bertjax.attention.attention): its other parts, such as
    "transpose(jvp(...))" for autodiff, name no kernel."""
    own = f"{op} {kernel} {opcode} {target}".lower()
    if re.search(r"all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute|nccl", own):
        return "collectives"
    if re.search(r"fmha|flash|sdpa", own) or re.search(r"(^|[/(;])attention[/)]", op_name):
        return "attention"
    if opcode in ("dot", "convolution") or re.search(
            r"gemm|cublas|matmul|nvjet|cutlass|xmma|ynn|^dot[._]|_dot_", own):
        return "matmul"
    if re.search(r"scatter|gather", own):
        return "scatter/gather"
    if opcode in COPY_OPS or re.search(r"^(copy|transpose|dynamic[-_]update[-_]slice|"
                                       r"concatenate|wrapped_broadcast|loop_broadcast)|memcpy|"
                                       r"memset", own):
        return "copies"
    return "fusions/elementwise"


def describe_ops(hlo_text: str) -> dict[str, dict[str, str]]:
    """Op name -> {opcode, target, op_name} for every instruction of compiled HLO text."""
    ops = {}
    for line in hlo_text.splitlines():
        m = INSTRUCTION.match(line)
        if not m:
            continue
        target = re.search(r'custom_call_target="([^"]*)"', line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        ops[m.group(1)] = {"opcode": m.group(2), "target": target.group(1) if target else "",
                           "op_name": op_name.group(1) if op_name else ""}
    return ops


def read_xspace(path: Path) -> list[dict]:
    """The events of a jax.profiler XSpace file that may be a device's work: those naming an
    `hlo_op`, and every event on a GPU's "Stream" lines. Each as {"plane" (a GPU, or the CPU
    host), "line", "name", "start" and "dur" (µs), "args" (its stats)}."""
    from bertjax.step_trace import xspace_events

    events = []
    for plane, line, e in xspace_events(path):
        stats = dict(e.stats)
        if line.startswith("Stream") or "hlo_op" in stats:
            events.append({"plane": plane, "line": line, "name": e.name,
                           "start": e.start_ns / 1e3, "dur": e.duration_ns / 1e3,
                           "args": stats})
    return events


def device_events(events: list[dict]) -> list[dict]:
    """The XLA-op events of `read_xspace`'s: those naming an `hlo_op`. A GPU's kernels sit on
    its "Stream" lines; other lines there repeat them as derived summaries ("XLA Ops"), so where
    stream lines exist only they count (on CPU, ops run on the PjRt client and Eigen threads). A
    trace whose events name no hlo_op (a profiler version that drops it) falls back to every
    event on the stream lines, named by its kernel."""
    on_stream = [e for e in events if e["line"].startswith("Stream")]
    ops = [e for e in events if "hlo_op" in e["args"]]
    streams = [e for e in on_stream if "hlo_op" in e["args"]]
    return streams or ops or on_stream


def busy_us(events: list[dict]) -> float:
    """The time some kernel ran, overlaps counted once (a copy stream beside the compute one,
    CPU threads side by side): below the sum of their durations where they overlap."""
    busy, end = 0.0, float("-inf")
    for start, stop in sorted((e["start"], e["start"] + e["dur"]) for e in events):
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return busy


def summarize(events: list[dict], ops: dict[str, dict], steps: int, top: int = 12) -> dict:
    """Milliseconds per step by family, and the `top` ops by time (control-flow ops left out:
    their time is their body's), per device: the mean of the GPUs a process drives (summed, 8
    GPUs' kernels read as 8 times a step's). `busy_ms_per_step`: the time a kernel ran at all,
    the share of the step the device did not wait."""
    devices = len({e.get("plane") for e in events}) or 1
    by_family, by_op, names = collections.Counter(), collections.Counter(), {}
    kernels = collections.defaultdict(list)  # plane -> its kernels
    for e in events:
        op = e.get("args", {}).get("hlo_op") or e.get("name", "?")
        info = ops.get(op, {})
        # Without the HLO text (a run's trace) XLA's own names tell: "while.454"
        if info.get("opcode", re.sub(r"\.\d+$", "", op)) in CONTAINERS:
            continue
        names[op] = family(op, e.get("name", ""), **info)
        by_family[names[op]] += float(e.get("dur", 0.0))
        by_op[op] += float(e.get("dur", 0.0))
        kernels[e.get("plane")].append(e)
    total = sum(by_family.values())
    ms = lambda us: round(us / 1e3 / steps / devices, 3)  # noqa: E731
    return {"steps": steps, "devices": devices, "kernel_ms_per_step": ms(total),
            "busy_ms_per_step": ms(sum(map(busy_us, kernels.values()))),
            "events": len(events),
            "families_ms": {f: ms(by_family[f]) for f in FAMILIES},
            "top_ops": [{"op": op, "family": names[op], "ms": ms(us),
                         "opcode": ops.get(op, {}).get("opcode", ""),
                         "op_name": ops.get(op, {}).get("op_name", "")[-120:]}
                        for op, us in by_op.most_common(top)]}


def trace_steps(fn, steps: int, compiled_text: str) -> dict:
    """Profile `steps` calls of `fn` (which must block until its step is done) and summarize."""
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for i in range(steps):
                fn(i)
        return summarize_trace(Path(tmp), steps, compiled_text)


def newest_trace(directory: Path) -> Path | None:
    """The XSpace file of the newest trace under a jax.profiler log folder (its run folders
    are named by date and time)."""
    files = sorted(directory.rglob("*.xplane.pb"), key=lambda p: (p.parent.name, p.name))
    return files[-1] if files else None


def summarize_trace(directory: Path, steps: int, compiled_text: str = "", top: int = 12) -> dict:
    """The summary of the newest trace under `directory` (a jax.profiler log folder, e.g. a
    run's RUN/profile from train.profile), over `steps` steps; without the compiled HLO text,
    ops are told apart by their names and kernels' names only."""
    path = newest_trace(directory)
    if path is None:
        return {"error": f"no *.xplane.pb under the trace directory "
                         f"({sorted(p.name for p in directory.rglob('*'))[:8]})"}
    events = device_events(read_xspace(path))
    if not events:
        return {"error": "the trace holds no XLA op event (none names an hlo_op, no Stream "
                         "line)"}
    return summarize(events, describe_ops(compiled_text), steps, top)


def format_summary(summary: dict, step_ms: float | None = None) -> str:
    """A few lines of text: ms per step and share by family, then the top ops."""
    if "error" in summary:
        return f"profile: {summary['error']}"
    total = summary["kernel_ms_per_step"] or 1e-9
    steps = summary["steps"]
    head = f"profile ({steps} step{'s' * (steps != 1)}): {total:.2f} ms of kernels per step"
    if summary.get("devices", 1) > 1:
        head += f" and device (the mean of {summary['devices']})"
    busy = summary.get("busy_ms_per_step", total)
    if busy < 0.995 * total:  # kernels side by side: CPU threads, GPU streams
        head += f", busy {busy:.2f} ms"
    if step_ms:
        head += f" ({busy / step_ms:.0%} of the {step_ms:.2f} ms step busy)"
    lines = [head]
    for fam, ms in sorted(summary["families_ms"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {fam:22} {ms:9.3f} ms  {ms / total:6.1%}")
    lines.append("  top ops:")
    for op in summary["top_ops"]:
        lines.append(f"    {op['ms']:8.3f} ms  {op['family']:20} {op['op'][:32]:32} "
                     f"{op['op_name'][-60:]}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Time by kernel family of a run's "
                                                 "train.profile trace, as text.")
    parser.add_argument("trace_dir", type=Path, help="a jax.profiler log folder: RUN/profile")
    parser.add_argument("--steps", type=int, default=1, help="the steps the trace holds (LAST - "
                        "FIRST + 1 of train.profile): times are per step (default 1: the total)")
    parser.add_argument("--top", type=int, default=12, help="the slowest ops listed")
    args = parser.parse_args(argv)
    from bertjax.errors import UserError, first_line

    if args.steps < 1 or args.top < 0:
        raise UserError(f"--steps {args.steps} --top {args.top}: give --steps >= 1, --top >= 0")
    fix = "give the RUN/profile folder a run's train.profile wrote"
    if not args.trace_dir.is_dir():
        raise UserError(f"{args.trace_dir} is not a folder; {fix}")
    if newest_trace(args.trace_dir) is None:
        raise UserError(f"{args.trace_dir} holds no jax.profiler trace (*.xplane.pb); {fix}")
    processes = sorted({part for path in args.trace_dir.rglob("*.xplane.pb")
                        for part in path.relative_to(args.trace_dir).parts
                        if re.fullmatch(r"process\d+", part)}, key=lambda p: int(p[7:]))
    if len(processes) > 1:  # the newest of them alone would pass for the run's
        raise UserError(f"{args.trace_dir} holds the traces of {len(processes)} processes "
                        f"({', '.join(processes)}), one folder each: give one, e.g. "
                        f"{args.trace_dir / processes[0]}")
    try:
        summary = summarize_trace(args.trace_dir, args.steps, top=args.top)
    except (OSError, RuntimeError) as e:  # a trace cut short (a run killed writing it)
        raise UserError(f"the newest trace under {args.trace_dir} is unreadable "
                        f"({type(e).__name__}: {first_line(e)}); trace the steps again") from None
    if "error" in summary:
        raise UserError(f"{args.trace_dir}: {summary['error']}")
    print(format_summary(summary))


if __name__ == "__main__":
    from bertjax.errors import cli

    cli(main)
