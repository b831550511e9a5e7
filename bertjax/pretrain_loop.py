"""The pretraining step loop (`Loop`) over a `Run` (bertjax.pretrain_run): batches -> sharded train
step -> metrics rows, validation, checkpoints, rollbacks when the steps diverge, and the results.

bertjax.pretrain resolves the run, builds its state (fresh, continued or resumed), calls
`Loop.train` and then `Loop.write_results`; a diverging run (bertjax.divergence: a non-finite
step or a loss spike) is rolled back here: the newest checkpoint from before the trouble is
restored (the initial state when none is), the steps from there to the bad one are skipped, not
replayed, and the learning rate is multiplied by `train.rollback_lr_factor` from then on.
Metrics are read lazily, so every save and validation reads and checks them first: no
checkpoint holds a state that is known to be bad. A save also writes the row of the steps not
logged yet, so a run killed after it and resumed there has every step in a row; a validation
does too, so that row's tok/s is of its steps, before the validation.
"""

import dataclasses
import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bertjax.checkpoint import Checkpoints, config_hash, restore_target
from bertjax.data import Prefetcher, PretrainData
from bertjax.divergence import Diverged, Trouble, Watch, roll_back
from bertjax.files import json_text, write_atomic
from bertjax.loss import safe_ratio
from bertjax.masking import tokenizer_masker
from bertjax.metrics import Monitor, mlm_row
from bertjax.optim import schedule, schedule_args
from bertjax.precision import Precision
from bertjax.pretrain_run import (
    DROPOUT,
    EVAL,
    MASK,
    Run,
    TokenOffsets,
    restore_state,
    token_counts,
)
from bertjax.processes import StopSignal
from bertjax.sharding import global_batch, process_slice, with_mesh
from bertjax.step import StepSpec, TrainState, make_eval_step, make_train_step
from bertjax.step_trace import StepTrace
from bertjax.xla_options import compiler_options


def validation_sums(eval_step, model, data: PretrainData, size: int, max_sequences: int, mesh,
                    key) -> dict[str, float]:
    """Loss and accuracy sums over the first `max_sequences` sequences of the validation split
    (all of it when it is smaller), in batches of `size` rows. The last batch is filled by
    reading sequences again (the step's shape is fixed) and those rows weigh nothing: each
    sequence is scored once, and the same sequences whatever the micro-batch."""
    scored = min(max_sequences, data.num_sequences)
    sums = []
    for i in range(-(-scored // size)):
        offset, count = process_slice(size)
        batch = global_batch(data.rows(i * size + offset, count), mesh)
        sums.append(eval_step(model, batch, jnp.int32(i * size), key, jnp.int32(scored)))
    return jax.tree.map(lambda *xs: float(sum(xs)), *jax.device_get(sums))


def _why_none(nonfinite: int, rolled_back: int) -> str:
    """Why no step of a run is in its model: non-finite steps, rollbacks (the last one went
    back to the initial state), or both."""
    reasons = (["their gradients or loss were not finite"] if nonfinite else []) + \
        ([f"{rolled_back} were rolled back after training diverged"] if rolled_back else [])
    return "; ".join(reasons)


class Loop:
    """The step loop and its periodic work (logging, validation, checkpoints, rollbacks)."""

    def __init__(self, run: Run, mesh, keys: dict, optimizer, monitor: Monitor,
                 checkpoints: Checkpoints, meta: dict, start: int,
                 initial: Callable[[], TrainState]):
        """`meta`: the resumed checkpoint's (or the fresh run's tokens_before); `initial` makes
        the state before any step again (a rollback to it)."""
        self.run, self.cfg, self.mesh, self.keys = run, run.cfg, mesh, keys
        self.monitor, self.checkpoints, self.initial = monitor, checkpoints, initial
        self.config_yaml, self.tokens_before = run.config_yaml, meta.get("tokens_before", 0)
        cfg = run.cfg
        fp16 = cfg.precision.compute == "float16"
        self.watch = Watch.restore(cfg.train, self.cfg.train.max_nonfinite if fp16 else 1,
                                   meta.get("divergence"), start)
        dropout = cfg.model.dropout > 0 or cfg.model.attention_dropout > 0
        spec = StepSpec(Precision.from_names(cfg.precision.compute),
                        tokenizer_masker(cfg.data, run.tokenizer), cfg.data.objective != "mlm",
                        dropout, compiler_options(cfg.train.xla_flags))
        self.train_step = with_mesh(make_train_step(spec, optimizer, cfg.train.micro_batch), mesh)
        self.eval_step = with_mesh(make_eval_step(spec), mesh)
        self.lr = schedule(cfg.optim, run.total_steps)
        self.pending: list[tuple[int, dict]] = []  # dispatched steps, metrics not read yet
        self.window: list[tuple[int, dict, int]] = []  # read, not logged: (step, metrics, updates)
        self.offsets = TokenOffsets.at(run.ramp, cfg.data.seq_len, start, meta, self.watch)
        # A resume past the first epoch said so before it was stopped (the row that crossed
        # it); said again, it named the resume's first logged step as the crossing.
        self.warned_epoch = self.position(start) > run.data.num_sequences
        self.last_validation: dict | None = None
        self.target = None  # what a rollback restores into
        self.trace = StepTrace(cfg.train.profile, run.run_dir, monitor.write)

    def batches(self, start: int):
        """(step, first global row, this process's rows), read ahead on a thread."""
        ramp, data = self.run.ramp, self.run.data

        def read(step):
            first, size = self.position(step), ramp.batch(step)
            offset, count = process_slice(size)
            return step, first, data.rows(first + offset, count)

        return Prefetcher(map(read, range(start, self.run.total_steps)), self.cfg.data.prefetch)

    def train(self, state: TrainState, start: int, stop: StopSignal) -> TrainState:
        """Steps `start`.. to the end (or a stop signal), rolling back when they diverge."""
        self.target = restore_target(state)
        rolled_back = False
        while True:
            try:
                state = self.steps(state, start, stop)
                if not stop.stopped:
                    self.finish(state, missed=rolled_back and start == self.run.total_steps)
                return state
            except Diverged as e:
                state, start = self.roll_back(e.trouble)
                rolled_back = True

    def steps(self, state: TrainState, start: int, stop: StopSignal) -> TrainState:
        train = self.cfg.train
        rates = schedule_args(self.cfg.optim, self.run.total_steps, self.watch.lr_factor)
        with self.batches(start) as batches, self.trace:
            for step, first, local in batches:
                self.trace.before(step + 1, state)
                batch = global_batch(local, self.mesh)
                state, metrics = self.train_step(state, batch, jnp.int32(first), self.keys[MASK],
                                                 jax.random.fold_in(self.keys[DROPOUT], step),
                                                 rates)
                self.pending.append((step, metrics))
                if step > start and self.run.ramp.batch(step) != self.run.ramp.batch(step - 1):
                    # The call above compiled the ramp's next batch shape (seconds to a
                    # minute): not training time (a row across it read 72 tok/s beside 20,000).
                    # The window restarts after this step is done, without it: where the call
                    # also ran the step (CPU), a window from before the step counted its tokens
                    # in no time (a row of it alone: 397,000 tok/s beside 22,000).
                    jax.block_until_ready(metrics)
                    self.monitor.restart_throughput(self.stream_tokens(step + 1))
                done = step + 1
                if done % train.log_every == 0 or done == self.run.total_steps:
                    self.log()
                if train.eval_every and done % train.eval_every == 0:
                    self.validate(state, done)
                stopping = stop.should_stop()
                if (train.checkpoint_every and done % train.checkpoint_every == 0) or stopping:
                    self.save(state, done)
                self.monitor.advance()
                if self.trace.done(done, state):
                    self.log()  # the traced steps' row, timed before the trace is written
                    self.trace.stop()
                    self.monitor.restart_throughput(self.stream_tokens(done))
                if stopping:
                    self.monitor.write(f"{stop.name}: saved a checkpoint at step {done}; run the "
                                       "same command again to resume")
                    return state
        return state

    def finish(self, state: TrainState, missed: bool) -> None:
        """The last step's checkpoint and validation, where the loop's periodic ones did not
        fall on it (`missed`: a rollback at the last step skipped them), and the checkpoint is
        not there yet (a rerun of a run killed after its last checkpoint, before its results)."""
        train, total = self.cfg.train, self.run.total_steps
        if (missed or not train.checkpoint_every or total % train.checkpoint_every) and \
                self.checkpoints.latest_step() != total:
            self.save(state, total)
        if missed or not train.eval_every or total % train.eval_every or \
                self.last_validation is None:  # a rerun that started at the last step
            self.validate(state, total)

    def read(self) -> None:
        """Fetch the pending steps' metrics and watch them. Trouble logs the steps up to it,
        drops those after it (they ran on a diverged state) and raises Diverged."""
        if not self.pending:
            return
        steps = [step for step, _ in self.pending]
        fetched = jax.device_get([m for _, m in self.pending])
        self.pending = []
        for step, m in zip(steps, fetched, strict=True):
            self.window.append((step, m, self.watch.updates))
            loss = float(m["mlm_loss"]) / max(float(m["mlm_weight"]), 1.0)
            trouble = self.watch.see(step + 1, bool(m["finite"]), loss,
                                     bool(m.get("overflow", False)))
            if trouble is not None:
                self.write_row()
                raise Diverged(trouble)

    def log(self) -> None:
        self.read()
        self.write_row()

    def write_row(self) -> None:
        """One metrics row for the steps read since the last one."""
        if not self.window:
            return
        window, self.window = self.window, []
        last_step, _, updates = window[-1]
        row = mlm_row([m for _, m, _ in window])
        done = last_step + 1
        ramp, size = self.run.ramp, self.run.data.num_sequences
        sequences = self.position(done)
        # The schedule follows the optimizer's updates (a skipped step applies none), times the
        # rollbacks' factor.
        row |= {"lr": float(self.lr(updates)) * self.watch.lr_factor,
                "batch": ramp.batch(last_step),
                "tokens": self.stream_tokens(done),
                "epoch": sequences / size}
        row |= self.monitor.throughput(row["tokens"])
        if row["epoch"] > 1 and not self.warned_epoch:
            self.warned_epoch = True
            # The step of the window that first read a sequence again, not the row's last one
            # (a test at log_every=5 named the last row's step 12 for step 11)
            passed = next((s + 1 for s, _, _ in window if self.position(s + 1) > size), done)
            self.monitor.write(f"warning: passed one epoch of the training data at step "
                               f"{passed}; sequences now repeat (in a new order)")
        show = {"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.3f}",
                "lr": f"{row['lr']:.2e}", "batch": row["batch"]}
        self.monitor.log(done, row, show)

    def roll_back(self, trouble: Trouble) -> tuple[TrainState, int]:
        """Back to the newest checkpoint from before `trouble` (bertjax.divergence.roll_back),
        on after the bad step; returns the state and the next step."""
        state = roll_back(self.watch, trouble, self.checkpoints,
                          lambda step: restore_state(self.checkpoints, step, self.target,
                                                     self.cfg, self.mesh),
                          self.initial, self.monitor)
        target = self.watch.skipped[-1][0] - 1  # the restored checkpoint (0: the initial state)
        # The tokens behind the weights are the target's; the stream goes on from the bad step
        # (the skipped steps' data are not read again). Taken from a checkpoint written before a
        # resume that changed the ramp, the stream's offsets put it as if the new ramp had run
        # since the target: 8 -> 16 at step 10, a rollback to 5 skipped 40 sequences never read.
        seen = TokenOffsets.at(self.run.ramp, self.cfg.data.seq_len, target,
                               self.checkpoints.read_meta(target) if target else {},
                               self.watch).seen
        self.offsets = dataclasses.replace(self.offsets, seen=seen)
        self.monitor.seek(trouble.step)
        self.monitor.restart_throughput(self.stream_tokens(trouble.step))
        return state, trouble.step

    def validate(self, state: TrainState, done: int) -> dict | None:
        data = self.run.validation
        if data is None:
            return None
        # Read (a diverged state is not worth validating) and logged: the validation restarts
        # the tok/s window, and a row of steps from before it, written after it (by a checkpoint
        # at this step off the log cadence), counted 0 tokens in it: 0 tok/s, 0 MFU.
        self.log()
        total = validation_sums(self.eval_step, state.model, data, self.cfg.train.micro_batch,
                                self.cfg.train.eval_sequences, self.mesh, self.keys[EVAL])
        loss = float(safe_ratio(jnp.asarray(total["mlm_loss"]), jnp.asarray(total["mlm_weight"])))
        row = {"val_loss": loss, "val_accuracy": total["mlm_correct"] / total["mlm_weight"],
               "val_perplexity": math.exp(min(loss, 50.0))}
        if "pair_loss" in total:
            row["val_pair_accuracy"] = total["pair_correct"] / total["pair_weight"]
        self.monitor.log(done, row)
        self.last_validation = row
        self.monitor.restart_throughput(self.stream_tokens(done))
        self.monitor.write(f"step {done}: validation loss {loss:.3f}, accuracy "
                           f"{row['val_accuracy']:.3f}, perplexity {row['val_perplexity']:.1f}")
        return row

    def save(self, state: TrainState, done: int) -> None:
        # Read first: never checkpoint a state whose steps diverged. Logged, not left for the
        # next row: a resume here drops the killed run's rows past `done`, and the steps up to
        # it that no row held yet were in none (checkpoint_every=5, log_every=2: step 15)
        self.log()
        meta = {**token_counts(self.run.ramp, self.cfg.data.seq_len, done, self.tokens_before,
                               self.watch, self.offsets.seen),
                "tokens_stream": self.stream_tokens(done), "data_position": self.position(done),
                "total_steps": self.run.total_steps,
                "config_hash": config_hash(self.config_yaml), "config_yaml": self.config_yaml,
                "prepared_data": self.run.prepared_data, "divergence": self.watch.saved()}
        self.checkpoints.save(done, state, meta)
        self.monitor.restart_throughput(self.stream_tokens(done))

    def position(self, done: int) -> int:
        """The data stream's row after `done` steps: where the next step reads."""
        return self.run.ramp.sequences_before(done) + self.offsets.sequences

    def stream_tokens(self, done: int) -> int:
        """The stream's position after `done` steps: metrics.jsonl's `tokens`."""
        return self.run.ramp.sequences_before(done) * self.cfg.data.seq_len + self.offsets.stream

    def write_results(self) -> None:
        """results.json of the finished run (process 0), and a word where steps were not
        applied: none of them (a warning), non-finite ones, rollbacks."""
        run, watch = self.run, self.watch
        rolled_back = sum(last - first + 1 for first, last in watch.skipped)
        # Steps whose update was not applied, rollbacks apart: non-finite gradients or loss
        # (float16: a loss scale still halving; a few at the start are how the scaling settles).
        nonfinite = run.total_steps - watch.updates - rolled_back
        results = {"steps": run.total_steps,
                   **token_counts(run.ramp, self.cfg.data.seq_len, run.total_steps,
                                  self.tokens_before, watch, self.offsets.seen),
                   "validation": self.last_validation, "rollbacks": watch.rollbacks,
                   "lr_factor": watch.lr_factor, "skipped_steps": watch.skipped,
                   "nonfinite_steps": nonfinite}
        write_atomic(run.run_dir / "results.json", json_text(results))
        if watch.updates == 0:  # every step skipped: the curves and checkpoints look like a run's
            warnings.warn(f"none of the {run.total_steps} steps was applied "
                          f"({_why_none(nonfinite, rolled_back)}): the model did not train at "
                          "all; " + ("lower precision.loss_scale, or use bfloat16"
                                     if self.cfg.precision.compute == "float16" and nonfinite
                                     else "lower optim.lr"),
                          stacklevel=3)
        elif nonfinite:
            print(f"note: {nonfinite} of {run.total_steps} steps were not applied (gradients or "
                  "loss not finite; results.json nonfinite_steps)")
        if watch.rollbacks:
            print(f"note: training diverged and rolled back {watch.rollbacks} time(s): steps "
                  f"{', '.join(f'{a}-{b}' for a, b in watch.skipped)} are not in the model, and "
                  f"the learning rate ended at x{watch.lr_factor:g} of optim.lr's schedule")
