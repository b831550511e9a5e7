"""One GLUE fine-tuning seed (`SeedRun`): train epoch by epoch, evaluate, keep the best epoch
as a bundle, checkpoint, resume; and what every seed of a run shares (`Job`, `Steps`).

The train state is checkpointed (RUN/seedN/checkpoints) after every epoch and every
train.checkpoint_every steps; a rerun resumes from there to the same result, since batches and
dropout are functions of (seed, epoch, step).
"""

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax
from tokenizers import Tokenizer

from bertjax import glue_batches, glue_metrics, glue_tasks
from bertjax.checkpoint import Checkpoints
from bertjax.config import Config
from bertjax.errors import UserError
from bertjax.export import save_bundle
from bertjax.glue_eval import device_batch, evaluate
from bertjax.metrics import Monitor
from bertjax.model import Bert
from bertjax.optim import ScheduleArgs, make_optimizer, schedule, schedule_args
from bertjax.precision import Precision
from bertjax.pretrained import load_bundle
from bertjax.processes import StopSignal
from bertjax.sharding import full_copy, shard_params
from bertjax.starting_points import initial_model
from bertjax.step import init_state, make_glue_steps
from bertjax.step_trace import StepTrace
from bertjax.xla_options import compiler_options


def encoded_parts(tok: Tokenizer, train_enc, dev: dict) -> Iterator[bytes]:
    """The bytes of what the seeds train and are scored on: the tokenizer, every encoded split."""
    yield tok.to_str().encode()
    for enc in (train_enc, *(e for _, e in dev.values())):
        for f in dataclasses.fields(enc):
            if isinstance(array := getattr(enc, f.name), np.ndarray):
                yield np.ascontiguousarray(array).tobytes()


@dataclasses.dataclass(frozen=True)
class Steps:
    """The optimizer and jitted steps, made once per process: every seed has the same shapes,
    so XLA compiles each bucket once rather than once per seed."""

    optimizer: optax.GradientTransformation
    train_step: Callable
    predict: Callable
    total: int
    per_epoch: int
    schedule: ScheduleArgs  # the train step's
    lr: Callable[[int], float]  # for the logs


def build_steps(cfg: Config, train_enc: glue_batches.Encoded, model: Bert) -> Steps:
    per_epoch = glue_batches.num_batches(train_enc, cfg.glue.batch_size)
    total = max(1, math.ceil(cfg.glue.epochs * per_epoch))
    if total >= 2**31:  # optax's schedules and the step loop count in int32
        raise UserError(f"glue.epochs={cfg.glue.epochs:g} of {per_epoch:,} batches is {total:,} "
                        "steps, more than an int32 step counter holds (2**31); lower glue.epochs")
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    dropout = cfg.model.dropout > 0 or cfg.model.attention_dropout > 0 or \
        cfg.glue.classifier_dropout > 0
    train_step, predict = make_glue_steps(optimizer, Precision.from_names(cfg.precision.compute),
                                          dropout, compiler_options(cfg.train.xla_flags))
    return Steps(optimizer, train_step, predict, total, per_epoch,
                 schedule_args(cfg.optim, total), schedule(cfg.optim, total))


@dataclasses.dataclass
class Job:
    """One fine-tuning run, resolved: config, data, mesh, steps and monitoring."""

    cfg: Config
    tok: Tokenizer
    start: Bert | None  # the pretrained model; None for the random-init baseline
    train_enc: glue_batches.Encoded
    dev: dict  # dev split -> (Examples, Encoded)
    mesh: jax.sharding.Mesh
    run_dir: Path
    steps: Steps
    monitor: Monitor | None = None
    stop: StopSignal | None = None
    trace: StepTrace | None = None  # train.profile's window, in the first seed that reaches it
    # the batch shapes its train step has compiled (each seed's rates leave them out)
    shapes_run: set[tuple[int, ...]] = dataclasses.field(default_factory=set)

    @property
    def main(self) -> bool:
        return jax.process_index() == 0  # the process that writes files

    def save_best(self, model: Bert, out_dir: Path, best: dict) -> None:
        if self.main:
            save_bundle(model, self.cfg, self.tok, out_dir, summary=best)


class Stopped(Exception):
    """A signal asked the run to stop; the seed's train state was saved at `step`."""

    def __init__(self, seed: int, step: int):
        super().__init__(f"seed {seed}, step {step}")
        self.seed, self.step = seed, step


class SeedRun:
    """Fine-tune one seed. Rows go to the run's monitor (metrics.jsonl, wandb) at global step
    offset + step, so seeds follow each other.

    The train state is checkpointed (RUN/seedN/checkpoints) after every epoch and every
    train.checkpoint_every steps; a rerun resumes from there, and the result is the same as
    without the interruption (batches and dropout are functions of seed, epoch and step).
    SIGTERM/SIGINT save the state and raise Stopped (after an epoch's evaluation when the
    signal comes at its last step)."""

    def __init__(self, job: Job, seed: int, offset: int):
        self.job, self.seed, self.offset = job, seed, offset
        self.task = glue_tasks.get_task(job.cfg.glue.task).name
        self.key = jax.random.key(seed)
        self.dir = job.run_dir / f"seed{seed}"
        self.state = shard_params(init_state(initial_model(seed, job.start, job.cfg),
                                             job.steps.optimizer, job.cfg.precision),
                                  job.mesh, job.cfg.mesh)
        self.checkpoints = Checkpoints(self.dir, keep=1)
        # What the checkpoints carry besides the state: the epochs evaluated so far, the best
        # one, the current epoch's running loss sums, and the rows' step offset.
        self.progress = {"history": [], "best": {}, "loss": 0.0, "weight": 0.0, "offset": offset}
        self.best_model: Bert | None = None
        self.step, self.tokens = 0, 0
        # Step sums since the last row, read when the next is logged and then folded into
        # progress. A checkpoint and an epoch's end log it first, so that a resume there finds
        # every step before it in a row, and a row holds every step since the one before.
        self.window: list[dict] = []

    def run(self) -> tuple[dict, Bert]:
        """Its per-epoch and best metrics, and its best model (whole on this process)."""
        try:
            self.resume()
            self.job.monitor.restart_throughput(self.tokens)  # counted from 0 for each seed
            self.checkpoints.check_room(self.state)
            with self.job.trace:  # stopped however the seed ends (the window may outlast it)
                for epoch in range(len(self.progress["history"]),
                                   math.ceil(self.job.cfg.glue.epochs)):
                    self.train_epoch(epoch)
                    self.end_epoch(epoch)
        finally:
            self.checkpoints.close()
        return {"seed": self.seed, "history": self.progress["history"],
                **self.progress["best"]}, self.best_model

    def resume(self) -> None:
        latest = self.checkpoints.latest_step() if self.job.cfg.train.resume == "auto" else None
        if latest is None:
            # Rows of an attempt killed before its first checkpoint are written again; the
            # rows then come after every row the file holds: a seed new to a rerun whose list
            # changed ([0,1] done, then [1,2]) wrote below seed 1's, which wandb drops.
            self.job.monitor.drop_seed_rows_after(0, self.seed)
            self.offset = self.progress["offset"] = max(self.offset, self.job.monitor.last_step())
            return
        self.state, meta = self.checkpoints.restore(latest, self.state)
        self.progress, self.step = meta["progress"], latest
        # The rows go on at the steps they started at: with the seed now elsewhere in
        # glue.seeds (a rerun with seeds=[1] of [0,1]), its rows past the checkpoint were looked
        # for at the new offset, its earlier rows were all dropped, and the rows written after
        # went back below steps wandb already had (which drops them).
        self.offset = self.progress.setdefault("offset", self.offset)
        # A run killed outright logged steps past its checkpoint, which this one repeats.
        self.job.monitor.drop_seed_rows_after(self.offset + latest, self.seed)
        if self.progress["best"]:  # the bundle written when that epoch was best
            self.best_model = load_best(self.dir)
        self.job.monitor.write(f"{self.task} seed {self.seed}: resumed at step {latest}")

    def train_epoch(self, epoch: int) -> None:
        job, steps, train = self.job, self.job.steps, self.job.cfg.train
        first = self.step - epoch * steps.per_epoch  # > 0 when resuming inside this epoch
        for batch in glue_batches.iter_batches(job.train_enc, job.cfg.glue.batch_size,
                                               seed=self.seed, epoch=epoch, start=first):
            if self.step == steps.total:
                break
            job.trace.before(self.step + 1, self.state)
            self.state, sums = steps.train_step(
                (device_batch(batch, job.mesh), jax.random.fold_in(self.key, self.step + 1),
                 steps.schedule), self.state)
            self.window.append(sums)
            self.step += 1
            self.tokens += int(batch["attention_mask"].sum())  # real tokens, not padding
            if batch["input_ids"].shape not in job.shapes_run:
                # That call compiled a new bucket's step: not training time (a row's tok/s).
                # The window restarts after the step is done, without it: where the call also
                # ran it (CPU), a window from before it counted its tokens in no time.
                job.shapes_run.add(batch["input_ids"].shape)
                jax.block_until_ready(sums)
                job.monitor.restart_throughput(self.tokens)
            job.monitor.advance()
            if self.step % train.log_every == 0:
                self.log(epoch)
            if self.step % steps.per_epoch == 0 or self.step == steps.total:
                continue  # an epoch's last step is saved after its evaluation (end_epoch)
            stopping = job.stop.should_stop()
            if stopping or (train.checkpoint_every and self.step % train.checkpoint_every == 0):
                self.log(epoch)  # a resume here drops the rows past this step
                self.save()
            if stopping:
                raise Stopped(self.seed, self.step)
            self.end_trace_if_done(epoch)

    def end_trace_if_done(self, epoch: int) -> None:
        """After a step and its periodic work (an epoch's end: its evaluation and save): the
        traced steps' row, timed before the trace is written, then the trace."""
        if self.job.trace.done(self.step, self.state):
            self.log(epoch)
            self.job.trace.stop()
            self.job.monitor.restart_throughput(self.tokens)  # writing it is not training time

    def log(self, epoch: int) -> None:
        """The row of the steps since the last one (none: no row)."""
        if not self.window:
            return
        monitor, sums = self.job.monitor, self.window[-1]
        skipped, last_skipped = count_skipped(self.window), not bool(sums["finite"])
        loss, weight = (sum(float(s[k]) for s in self.window) for k in ("loss", "weight"))
        loss /= max(weight, 1.0)  # per example (padding rows weigh 0)
        fold(self.progress, self.window)
        # The rate this step's update used: optax counts the updates applied before it, and a
        # skipped step (gradients not finite) applies none, so float16's first overflows delay
        # the schedule; counted by steps, the logs ran ahead of it.
        unapplied = sum(h.get("skipped_steps", 0) for h in self.progress["history"]) + \
            self.progress["skipped"] - last_skipped
        row = {"seed": self.seed, "epoch": epoch + 1, "loss": loss, "skipped": skipped,
               "lr": float(self.job.steps.lr(self.step - 1 - unapplied)),
               **monitor.throughput(self.tokens)}
        if "loss_scale" in sums:
            row["loss_scale"] = float(sums["loss_scale"])
        monitor.log(self.offset + self.step, row, {"seed": self.seed, "loss": f"{loss:.4f}"},
                    progress=monitor.position)

    def end_epoch(self, epoch: int) -> None:
        """Evaluate, record the epoch, keep the best model as a bundle, checkpoint."""
        job, progress = self.job, self.progress
        self.log(epoch)  # the steps no row holds yet: the epoch's checkpoint comes below
        loss = progress["loss"] / max(progress["weight"], 1.0)
        metrics = evaluate(job.steps.predict, self.state.model, job.dev, job.cfg, job.mesh)
        score = glue_metrics.main_score(self.task, next(iter(metrics.values())))
        progress["history"].append({"epoch": epoch + 1, "step": self.step, "train_loss": loss,
                                    "dev": metrics, "score": score})
        skipped = progress.pop("skipped", 0)
        if skipped:
            progress["history"][-1]["skipped_steps"] = skipped
            self.warn_skipped(epoch, skipped)
        progress["loss"] = progress["weight"] = 0.0
        job.monitor.log(self.offset + self.step, {
            "seed": self.seed, "epoch": epoch + 1, "train_loss": loss, "dev_score": score,
            **{f"{split}/{name}": value for split, values in metrics.items()
               for name, value in values.items()}})
        job.monitor.write(f"{self.task} seed {self.seed} epoch {epoch + 1}: train loss "
                          f"{loss:.4f}, dev {json.dumps(metrics)}")
        # Every process scored the same gathered logits, so all take this branch together.
        if not progress["best"] or score > progress["best"]["best_score"]:
            progress["best"] = {"best_score": score, "best_epoch": epoch + 1,
                                "best_metrics": metrics}
            # On the host: the train step donates (frees) the device buffers. full_copy is a
            # collective when parameters span processes.
            self.best_model = jax.device_get(full_copy(self.state.model))
            job.save_best(self.best_model, self.dir / "best", progress["best"])
        self.save()
        self.end_trace_if_done(epoch)
        if job.stop.should_stop():
            raise Stopped(self.seed, self.step)

    def warn_skipped(self, epoch: int, skipped: int) -> None:
        """Steps whose gradients or loss were not finite were not applied: said, since the
        epoch's loss and dev score alone look like a trained model's. Under float16 a few are
        the loss scale's rhythm (it grows every loss_scale_period steps until one overflows,
        then halves): said only when they are most of the epoch."""
        steps = self.step - epoch * self.job.steps.per_epoch
        fp16 = self.job.cfg.precision.compute == "float16"
        if fp16 and 2 * skipped <= steps:
            return
        fix = ("precision.compute=float16: lower precision.loss_scale, or use bfloat16"
               if fp16 else "lower optim.lr")
        none = " (it did not train at all)" * (skipped >= steps)
        warnings.warn(f"{self.task} seed {self.seed} epoch {epoch + 1}: {skipped} of {steps} "
                      f"steps skipped{none}: their gradients or loss were not finite; {fix}",
                      stacklevel=1)

    def save(self) -> None:
        self.checkpoints.save(self.step, self.state, {"progress": self.progress})
        # An epoch's evaluation and its bundle came before this: not training time either.
        self.job.monitor.restart_throughput(self.tokens)


def load_best(seed_dir: Path) -> Bert:
    """The bundle an earlier run kept of this seed's best epoch; a missing or damaged one is a
    UserError whose fix is training the seed again (this bundle cannot be downloaded again)."""
    best = seed_dir / "best"
    if not (best / "manifest.json").is_file():
        raise damaged_seed(seed_dir, best, "missing, or written only in part")
    try:
        return load_bundle(best).model
    except UserError as e:
        raise damaged_seed(seed_dir, best, str(e)) from None


def damaged_seed(seed_dir: Path, path: Path, problem: str) -> UserError:
    """`path`, which an earlier run wrote into `seed_dir`, cannot be read back."""
    return UserError(f"{path} is damaged ({problem}); delete {seed_dir} to train that seed "
                     "again (the other seeds are kept)")


def count_skipped(window: list[dict]) -> int:
    """Steps in `window` that were not applied (gradients or loss not finite)."""
    return sum(1 for s in window if not bool(s["finite"]))


def fold(progress: dict, window: list[dict]) -> None:
    """Add the step sums in `window` to the epoch's running loss sums and skipped-step count
    and empty it."""
    loss, weight = (sum(float(s[k]) for s in window) for k in ("loss", "weight"))
    progress["loss"] += loss
    progress["weight"] += weight
    # .get: a checkpoint written before this count existed resumes without it
    progress["skipped"] = progress.get("skipped", 0) + count_skipped(window)
    window.clear()


INPUTS = "inputs.json"  # RUN/inputs.json: input_digests of the run's seeds


def input_digests(start: Bert | None, tok: Tokenizer, train_enc, dev: dict) -> dict:
    """sha256 of what config.yaml cannot show: the start weights (init.checkpoint names a path,
    and a run or bundle there can be trained on in place) and the data (GLUE files edited in
    place, another tokenizer)."""
    data = hashlib.sha256()
    for part in encoded_parts(tok, train_enc, dev):
        data.update(part)
    weights = None
    if start is not None:
        digest = hashlib.sha256()
        for leaf in jax.tree.leaves(eqx.filter(start, eqx.is_array)):
            digest.update(np.ascontiguousarray(leaf).tobytes())
        weights = digest.hexdigest()
    return {"weights": weights, "data": data.hexdigest()}


def check_same_inputs(run_dir: Path, init_checkpoint: str | None, digests: dict) -> None:
    """Refuse to keep or resume seeds trained on other inputs under the same config: results.json
    would report them as one run (it said "seed 0: done before" and printed the old scores).
    A run from before inputs.json was written, or a damaged one, is not checked."""
    try:
        saved = json.loads((run_dir / INPUTS).read_text())
    except (OSError, ValueError):
        return
    what = {"weights": f"the weights at init.checkpoint={init_checkpoint}",
            "data": "the GLUE data or the tokenizer"}
    changed = [what[key] for key in what
               if isinstance(saved, dict) and key in saved and saved[key] != digests[key]]
    if changed:
        raise UserError(f"{run_dir} holds seeds fine-tuned on other inputs: "
                        f"{' and '.join(changed)} changed since, so its results would mix the "
                        "two; set train.run_dir to a new directory, or train.resume=never to "
                        "start over here")
