"""Run monitoring: console progress bar, metrics.jsonl, wandb, throughput and MFU.

The bar is for terminals. When stderr is not one (a batch job's log file, `nohup`, CI), a bar
would fill the log with carriage-return redraws; there each logged row becomes one plain line,
with the time left at the pace so far (on the bar too, in place of tqdm's own).

metrics.jsonl is strict JSON, one object a line: a value that is not finite (a skipped step's
loss) is written as null. A resumed run first drops the rows past the step it resumes from
(`drop_rows_after`), so every step has one row however often the run was killed.

Only process 0 writes. wandb is imported lazily and defaults to `disabled`; `online` with a bad
key hangs in wandb itself, so it is never a default. MFU needs the device's peak FLOP/s, known
for common accelerators only (dense bf16 / f32 peaks from the vendors' data sheets).
"""

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
from tqdm import tqdm

from bertjax.config import WandbConfig
from bertjax.errors import StoppedBySignal, UserError, first_line
from bertjax.files import json_text, write_atomic

# Dense peak FLOP/s per device, by compute dtype (vendor data sheets, no sparsity). The first
# name in the device's kind counts: the PCIe and NVL cards come before the SXM ones they share a
# name with (an H100 PCIe's MFU was a quarter low at the SXM peak). NVIDIA's "float32" is the
# TensorFloat-32 tensor-core peak: jax's default matmul precision runs float32 matmuls as TF32
# on Ampere and Hopper (against the CUDA-core peak, "float32_full", MFU read up to 7x high).
PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12, "float32_full": 51e12},
    "H100 NVL": {"bfloat16": 835e12, "float16": 835e12, "float32": 418e12, "float32_full": 60e12},
    "H200 NVL": {"bfloat16": 835e12, "float16": 835e12, "float32": 418e12, "float32_full": 60e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12, "float32_full": 67e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12, "float32_full": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12, "float32_full": 19.5e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 2},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12 / 2},
}
FULL_FLOAT32 = ("highest", "float32", "F32_F32_F32")  # jax_default_matmul_precision's names


def device_memory() -> dict:
    """The highest allocator peak among this process's devices (jax's peak_bytes_in_use: since
    the process started, compilation and validation included) and that device's limit, in GB:
    how close a run's batch comes to the device's memory. {} where jax keeps no such statistics
    (the CPU)."""
    try:
        stats = [s for d in jax.local_devices() if (s := d.memory_stats())]
    except Exception:  # monitoring never stops a run
        return {}
    stats = [s for s in stats if "peak_bytes_in_use" in s]
    if not stats:
        return {}
    top = max(stats, key=lambda s: s["peak_bytes_in_use"])
    return {"memory_peak_gb": top["peak_bytes_in_use"] / 1e9,
            **({"memory_limit_gb": top["bytes_limit"] / 1e9} if top.get("bytes_limit") else {})}


def device_peak_flops(compute_dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_FLOPS.items():
        if name in kind:
            if compute_dtype == "float32" and "float32_full" in peaks and \
                    str(jax.config.jax_default_matmul_precision) in FULL_FLOAT32:
                return peaks["float32_full"]  # TF32 turned off: CUDA cores
            return peaks.get(compute_dtype)
    return None


def mlm_row(steps: list[dict]) -> dict:
    """Loss, accuracy, grad norm (and pair objective, fp16 loss scale) of some pretraining
    steps' metrics (sums, from the train step), and how many were skipped (not finite): those
    are left out unless all were. Loss and accuracy are per predicted token over all the steps
    (a step that masked more tokens weighs more); grad_norm is the mean of the steps' global
    gradient norms before clipping (optim.clip), so one step's spike shows diluted."""
    finite = [m for m in steps if m["finite"]] or steps
    total = {k: float(sum(m[k] for m in finite)) for k in finite[0] if k != "finite"}
    row = {"loss": total["mlm_loss"] / max(total["mlm_weight"], 1.0),
           "accuracy": total["mlm_correct"] / max(total["mlm_weight"], 1.0),
           "grad_norm": total["grad_norm"] / len(finite),
           "skipped": sum(1 for m in steps if not m["finite"])}
    if "pair_loss" in total:
        row["pair_loss"] = total["pair_loss"] / max(total["pair_weight"], 1.0)
        row["pair_accuracy"] = total["pair_correct"] / max(total["pair_weight"], 1.0)
    if "loss_scale" in steps[-1]:
        row["loss_scale"] = float(steps[-1]["loss_scale"])
    return row


def stepped_rows(lines: list[str]) -> Iterator[tuple[str, dict]]:
    """Each of metrics.jsonl's `lines` that is a row (a JSON object with a numeric step), with
    its row; others are passed over: a torn last line (a kill in mid-write), a damaged one."""
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("step"), int | float) and \
                    not isinstance(row["step"], bool):
                yield line, row


def drop_rows_after(run_dir: Path, step: int, seed: int | None = None) -> None:
    """Keep only the rows of `run_dir/metrics.jsonl` up to `step` (a resume's restored step): the
    interrupted run's rows past it are about to be written again. With `seed` (a GLUE seed's
    resume), only that seed's rows go. A torn last line (a kill in mid-write) goes too.
    Rewritten atomically; untouched when nothing goes."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line, row in stepped_rows(lines)
            if row["step"] <= step or (seed is not None and row.get("seed") != seed)]
    if len(kept) != len(lines):
        write_atomic(path, "".join(line + "\n" for line in kept))


# In the run directory: the id of the wandb run a resume of this run logs into.
WANDB_RUN_ID = "wandb_run_id"


@contextlib.contextmanager
def wandb_session(cfg: WandbConfig, run_dir: Path, config_dict: dict, *, resuming: bool):
    """The run's wandb run for the Monitor (None when disabled or on a process other than 0),
    finished on the way out with what happened: exit code 0 when the block returns; a stop on a
    signal marks it preempting (for wandb a preemption, not a crash) with 128 + the signal's
    number; any other exception: 1 (failed; 2 for the user's mistakes).

    One bertjax run is one wandb run: `resuming` (the run continues its own checkpoints or
    seeds) logs into the wandb run whose id the run directory keeps (`resume="allow"`), so a
    preempted and resumed run is one curve; a run that starts over gets a new id. wandb's
    refusals (no API key for online, a bad project or entity) are the user's to fix: one line,
    not wandb's traceback. The loops enter this before they write or delete anything in the run
    directory, so a refusal leaves the directory as it was."""
    run = start_wandb(cfg, run_dir, config_dict, resuming)
    if run is None:
        yield None
        return
    try:
        yield run
    except StoppedBySignal as e:
        run.mark_preempting()
        run.finish(exit_code=e.exit_code)
        raise
    except BaseException as e:
        run.finish(exit_code=2 if isinstance(e, UserError) else 1)
        raise
    run.finish()


def start_wandb(cfg: WandbConfig, run_dir: Path, config_dict: dict, resuming: bool):
    """wandb.init for `wandb_session` (which see), keeping the run's id in the run directory."""
    if cfg.mode == "disabled" or jax.process_index() != 0:
        return None
    import wandb

    logging.getLogger(OTEL_METRICS).addFilter(NOT_SHUT_DOWN_TWICE)  # the same object: added once

    kept = run_dir / WANDB_RUN_ID
    run_id = kept.read_text(errors="replace").strip() if resuming and kept.is_file() else None
    try:
        run = wandb.init(mode=cfg.mode, project=cfg.project, name=cfg.name or run_dir.name,
                         entity=cfg.entity, dir=str(run_dir), config=config_dict,
                         id=run_id, resume="allow")  # no id: wandb makes a new one
    except Exception as e:  # wandb raises UsageError, CommError, ValueError, ...
        first = first_line(e)
        raise UserError(f"wandb.mode={cfg.mode}: wandb did not start ({first}); "
                        f"{_wandb_fix(cfg, first)}") from None
    if run.id != run_id:
        write_atomic(kept, run.id + "\n")
    return run


# wandb's telemetry (opentelemetry's MeterProvider) is shut down twice at exit under Python
# 3.14, whose second call logs "shutdown can only be called once": a line after every wandb
# run's output, and after the one-line error of a wandb that did not start. Only that is dropped.
OTEL_METRICS = "opentelemetry.sdk.metrics._internal"


class _NotShutDownTwice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "shutdown can only be called once"


NOT_SHUT_DOWN_TWICE = _NotShutDownTwice()


def _wandb_fix(cfg: WandbConfig, message: str) -> str:
    """The fix for wandb's refusal `message`: a bad project or entity is the config's to
    correct in any mode (offline too, where login advice misleads); a missing key is online's."""
    if re.search(r"\b(project|entity)\b", message, re.IGNORECASE):
        return ("correct wandb.project / wandb.entity (a name may not hold / \\ # ? % :), or use "
                "wandb.mode=disabled")
    if cfg.mode == "online":
        return ("run `wandb login` or set WANDB_API_KEY, or use wandb.mode=offline (sync later) "
                "or disabled")
    return "see wandb's reason, or use wandb.mode=disabled"


class Monitor:
    """Progress bar + metrics.jsonl + wandb for one run (process 0 only)."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, wandb_run,
                 flops_per_token: float | None, compute_dtype: str,
                 work_before: Callable[[int], int] | None = None):
        """`wandb_run`: the caller's `wandb_session(...)` (or None), entered before it wrote to the
        run directory, and finished by it. A resumed wandb run already holds the steps before
        its `step`: rows for them (the steps a killed run repeats) go to metrics.jsonl only, as
        wandb would drop them, with a warning each. `work_before(step)`: the work done before a
        step, for the log lines' ETA (pretraining's sequences: with a batch-size ramp, later
        steps take longer); None counts steps."""
        self.work_before = work_before or (lambda step: step)
        self.enabled = jax.process_index() == 0
        self.peak = device_peak_flops(compute_dtype)
        self.flops_per_token = flops_per_token
        self.n_devices = jax.device_count()
        self.last_time, self.last_tokens = time.perf_counter(), None
        # Steps done of total_steps, as the bar counts them (also when it is hidden): a GLUE
        # row's step is its seed's offset + step, which a seed resumed with its earlier offset
        # keeps, past this run's total (the log line said "step 16/8").
        self.position = start_step
        if not self.enabled:
            return
        self.wandb = wandb_run
        self.wandb_from = 0 if wandb_run is None else wandb_run.step
        self.run_dir = run_dir
        self.file = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self.total_steps = total_steps
        # tqdm's own time left (counted by steps, from the start) is left out of the bar: the
        # rows' `eta` (`eta()`) stands in its place, as on the log lines.
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step",
                        disable=not sys.stderr.isatty(),
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, "
                                   "{rate_fmt}{postfix}]")
        self.since: tuple[float, int] | None = None  # (time, step) the log lines' ETA counts from

    def throughput(self, tokens_seen: int) -> dict:
        """tokens/s (and MFU where the peak is known) since the previous call, or since
        `restart_throughput`; none when no step's tokens are in that window (a row of only the
        step that compiled a new shape, which the window leaves out: 0 tok/s would be wrong)."""
        now = time.perf_counter()
        out = {}
        if self.last_tokens is not None and now > self.last_time and \
                tokens_seen > self.last_tokens:
            rate = (tokens_seen - self.last_tokens) / (now - self.last_time)
            out["tokens_per_s"] = rate
            if self.peak and self.flops_per_token:
                out["mfu"] = rate * self.flops_per_token / (self.peak * self.n_devices)
        self.last_time, self.last_tokens = now, tokens_seen
        return out | device_memory()

    def restart_throughput(self, tokens_seen: int) -> None:
        """The next rate counts from now at `tokens_seen`: the time since the last row went to
        something other than training steps (validation, a checkpoint, a rollback's restore,
        another seed's start), which made that row's tok/s and MFU a fraction of the steps' (a
        new seed, counting from 0 again, a negative rate). Before the first row there is no
        window to restart: that row's rate, which holds the compilation, stays out."""
        if self.last_tokens is not None:
            self.last_time, self.last_tokens = time.perf_counter(), tokens_seen

    def drop_seed_rows_after(self, step: int, seed: int) -> None:
        """A GLUE seed resumed at `step` (global): its rows past it go, as drop_rows_after does
        for pretraining before the file is opened; here it is open, so it is reopened."""
        if not self.enabled:
            return
        self.file.close()
        drop_rows_after(self.run_dir, step, seed)
        self.file = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115

    def last_step(self) -> int:
        """The highest step metrics.jsonl holds a row for (0: none, or not process 0)."""
        if not self.enabled:
            return 0
        self.file.flush()
        lines = (self.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return max((int(row["step"]) for _, row in stepped_rows(lines)), default=0)

    def log(self, step: int, row: dict, show: dict | None = None,
            progress: int | None = None) -> None:
        """Write `row`; `show` (short strings) goes to the console, with the row's throughput,
        MFU and a GPU's peak memory from `throughput()` when it has them, at `progress` of
        total_steps (default `step`; GLUE: `position`), which the ETA counts from too."""
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **row}
        self.file.write(json_text(row, indent=None) + "\n")  # NaN, inf: null
        self.file.flush()
        if self.wandb is not None and step >= self.wandb_from:
            self.wandb.log(row, step=step)
        if show is None:
            return
        if "tokens_per_s" in row:
            show = {**show, "tok/s": f"{row['tokens_per_s']:,.0f}"}
        if "mfu" in row:
            show = {**show, "mfu": f"{row['mfu']:.1%}"}
        if "memory_peak_gb" in row:  # a GPU's: how much room the batch leaves
            limit = row.get("memory_limit_gb")
            show = {**show, "mem": f"{row['memory_peak_gb']:.1f}"
                    + (f"/{limit:.0f} GB" if limit else " GB")}
        if row.get("skipped"):  # steps not applied (not finite): a loss alone would not say so
            show = {**show, "skipped": row["skipped"]}
        progress = step if progress is None else progress
        show = {**show, **self.eta(progress)}
        if self.bar.disable:
            print(f"step {progress}/{self.total_steps}: "
                  + ", ".join(f"{k} {v}" for k, v in show.items()), flush=True)
        else:
            self.bar.set_postfix(show, refresh=False)

    def eta(self, step: int) -> dict:
        """{"eta": "H:MM:SS"} for a log line or the bar, at the pace of the work since the first
        row (compilation and a resume's restore come before it); nothing on the first row and
        the last. Counted by steps (tqdm's own ETA, which the bar showed), a batch-size ramp's
        ETA read up to its batch ratio low (a 4x ramp: 0:00 with 34 s left)."""
        now = time.perf_counter()
        if self.since is None:
            self.since = now, step
            return {}
        (then, first), work = self.since, self.work_before
        left, done = work(self.total_steps) - work(step), work(step) - work(first)
        if done <= 0 or left <= 0:
            return {}
        return {"eta": tqdm.format_interval(left * (now - then) / done)}

    def advance(self) -> None:
        """One step more on the progress bar."""
        if self.enabled:
            self.position += 1
            self.bar.update()

    def seek(self, step: int) -> None:
        """Put the progress bar back at `step` (after a rollback)."""
        if self.enabled:
            self.position = self.bar.n = step
            self.bar.refresh()
            self.since = None  # the pace counts again from the next line

    def write(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.file.close()
