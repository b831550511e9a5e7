"""The pretraining step loop (`Loop`) and what it runs on (`Run`): batches -> sharded train step ->
metrics rows, validation, checkpoints, rollbacks when the steps diverge, and the results.

bertjax.pretrain resolves the run, builds its state (fresh, continued or resumed), calls
`Loop.train` and then `Loop.write_results`; a diverging run (bertjax.divergence: a non-finite
step or a loss spike) is rolled back here: the newest checkpoint from before the trouble is
restored (the initial state when none is), the steps from there to the bad one are skipped, not
replayed, and the learning rate is multiplied by `train.rollback_lr_factor` from then on.
Metrics are read lazily, so every save and validation reads and checks them first: no
checkpoint holds a state that is known to be bad.
"""

import dataclasses
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
from tokenizers import Tokenizer

from bertjax import config as config_lib
from bertjax.checkpoint import Checkpoints, config_hash, restore_target
from bertjax.config import Config
from bertjax.data import Prefetcher, PretrainData
from bertjax.divergence import Diverged, Trouble, Watch, roll_back
from bertjax.files import json_text, write_atomic
from bertjax.loss import safe_ratio
from bertjax.masking import tokenizer_masker
from bertjax.metrics import Monitor, mlm_row
from bertjax.optim import BatchRamp, schedule, schedule_args
from bertjax.precision import LossScale, Precision
from bertjax.processes import StopSignal
from bertjax.sharding import global_batch, process_slice, with_mesh
from bertjax.step import StepSpec, TrainState, make_eval_step, make_train_step
from bertjax.xla_options import compiler_options

# Purposes of the root key; each gets its own stream (fold_in), so adding one never shifts another.
INIT, MASK, DROPOUT, EVAL = range(4)
# Validation scores the same sequences, masked the same way, whatever train.seed: its sample
# (a fixed shuffle of the split) and its masks come from this seed, so two runs' validation
# losses score the same predictions, a paired comparison rather than each run's own draw.
VALIDATION_SEED = 0


def purpose_keys(seed: int) -> dict:
    """The run's key for each purpose, from train.seed; validation's from VALIDATION_SEED."""
    root = jax.random.key(seed)
    keys = {p: jax.random.fold_in(root, p) for p in (INIT, MASK, DROPOUT)}
    return keys | {EVAL: jax.random.fold_in(jax.random.key(VALIDATION_SEED), EVAL)}


@dataclasses.dataclass
class Run:
    """What the loop needs, resolved from the config and the prepared data."""

    cfg: Config
    data: PretrainData  # the train split
    validation: PretrainData | None
    tokenizer: Tokenizer
    ramp: BatchRamp
    total_steps: int
    run_dir: Path
    prepared_data: dict  # what identifies the token stream (prepared.identity), for checkpoints

    @property
    def config_yaml(self) -> str:
        return config_lib.to_yaml(self.cfg)


def token_counts(ramp: BatchRamp, seq_len: int, steps_done: int, tokens_before: int | None,
                 watch: Watch, offset: int = 0) -> dict:
    """Training tokens behind the weights: this run's, earlier phases' (continued pretraining;
    None when the starting checkpoint does not say) and their sum (None when unknown), as
    sequences x seq_len: positions computed on, an NSP/SOP row's padding too (data/README.md).
    The steps that applied no update are not behind the weights and are left out: those
    rollbacks threw away (Watch.skipped, [first, last] ranges) and float16's single non-finite
    steps (Watch.unapplied). `offset`: tokens this formula miscounts before a resume that changed
    seq_len or the batch ramp (TokenOffsets). metrics.jsonl's `tokens` is the stream's position."""
    sequences = ramp.sequences_before(steps_done) - sum(
        ramp.sequences_before(min(last, steps_done)) - ramp.sequences_before(first - 1)
        for first, last in watch.skipped if first <= steps_done) - sum(
        ramp.batch(step - 1) for step in watch.unapplied if step <= steps_done)
    this_run = sequences * seq_len + offset
    return {"tokens_seen": None if tokens_before is None else tokens_before + this_run,
            "tokens_this_run": this_run, "tokens_before": tokens_before}


@dataclasses.dataclass(frozen=True)
class TokenOffsets:
    """What a checkpoint counted less what this run's seq_len and batch ramp count for the same
    steps: tokens of the stream read (metrics.jsonl's `tokens`) and tokens behind the weights
    (`tokens_this_run`). Both are 0 unless a resume changed data.seq_len, train.micro_batch or
    the ramp: counted from step 0 with the new values, results.json, the bundle's manifest and
    the curves' token axis were wrong (512 x 8 from step 0 where steps 1-10 read 128 x 8)."""

    stream: int = 0
    seen: int = 0

    @classmethod
    def at(cls, ramp: BatchRamp, seq_len: int, step: int, meta: dict,
           watch: Watch) -> "TokenOffsets":
        """For the state of checkpoint `step` (its `meta`; `watch` restored from it)."""
        if step == 0 or "tokens_this_run" not in meta:  # fresh, or older than the count
            return cls()
        seen = meta["tokens_this_run"] - token_counts(ramp, seq_len, step, 0,
                                                      watch)["tokens_this_run"]
        # Checkpoints from before `tokens_stream` was saved: without rollbacks the same offset.
        stream = meta.get("tokens_stream", ramp.sequences_before(step) * seq_len + seen) - \
            ramp.sequences_before(step) * seq_len
        return cls(stream, seen)


def restore_state(checkpoints: Checkpoints, step: int, target, cfg: Config, mesh):
    """(state, meta) of checkpoint `step` restored into `target` (a state or its
    restore_target), holding the loss scale this run computes with: float16's dynamic scale is
    part of the state, so a checkpoint written at another precision.compute (its config says)
    did not fit the target, and Orbax's tree mismatch was called a damaged checkpoint, to be
    deleted. float16 -> bfloat16 drops the scale; a switch to float16 starts a fresh one."""
    meta = checkpoints.read_meta(step)
    theirs = (config_lib.from_yaml_text(meta["config_yaml"], f"checkpoint {step}'s config")
              .precision if "config_yaml" in meta else cfg.precision)
    saved, wanted = theirs.compute == "float16", cfg.precision.compute == "float16"
    if saved == wanted:
        return checkpoints.restore(step, target)

    def scale(precision):  # replicated, as shard_params places a loss scale
        return jax.device_put(LossScale.create(precision.loss_scale, precision.loss_scale_period),
                              NamedSharding(mesh, PartitionSpec()))

    state, meta = checkpoints.restore(step, with_loss_scale(
        target, restore_target(scale(theirs)) if saved else None))
    return with_loss_scale(state, scale(cfg.precision) if wanted else None), meta


def with_loss_scale(state, scale):
    """`state` (a TrainState, or its restore target) with `scale` (None: no loss scale)."""
    return eqx.tree_at(lambda s: s.loss_scale, state, scale, is_leaf=lambda x: x is None)


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
        # A resume past the first epoch said so before it was stopped (the row that crossed
        # it); said again, it named the resume's first logged step as the crossing.
        self.warned_epoch = run.ramp.sequences_before(start) > run.data.num_sequences
        self.offsets = TokenOffsets.at(run.ramp, cfg.data.seq_len, start, meta, self.watch)
        self.last_validation: dict | None = None
        self.target = None  # what a rollback restores into

    def batches(self, start: int):
        """(step, first global row, this process's rows), read ahead on a thread."""
        ramp, data = self.run.ramp, self.run.data

        def read(step):
            first, size = ramp.sequences_before(step), ramp.batch(step)
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
        with self.batches(start) as batches:
            for step, first, local in batches:
                batch = global_batch(local, self.mesh)
                state, metrics = self.train_step(state, batch, jnp.int32(first), self.keys[MASK],
                                                 jax.random.fold_in(self.keys[DROPOUT], step),
                                                 rates)
                self.pending.append((step, metrics))
                done = step + 1
                if done % train.log_every == 0 or done == self.run.total_steps:
                    self.log()
                if train.eval_every and done % train.eval_every == 0:
                    self.validate(state, done)
                stopping = stop.should_stop()
                if (train.checkpoint_every and done % train.checkpoint_every == 0) or stopping:
                    self.save(state, done)
                self.monitor.advance()
                if stopping:
                    self.log()
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
            trouble = self.watch.see(step + 1, bool(m["finite"]), loss)
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
        last_step, _, updates = self.window[-1]
        row = mlm_row([m for _, m, _ in self.window])
        self.window = []
        done = last_step + 1
        sequences = self.run.ramp.sequences_before(done)
        # The schedule follows the optimizer's updates (a skipped step applies none), times the
        # rollbacks' factor.
        row |= {"lr": float(self.lr(updates)) * self.watch.lr_factor,
                "batch": self.run.ramp.batch(last_step),
                "tokens": sequences * self.cfg.data.seq_len + self.offsets.stream,
                "epoch": sequences / self.run.data.num_sequences}
        row |= self.monitor.throughput(row["tokens"])
        if row["epoch"] > 1 and not self.warned_epoch:
            self.warned_epoch = True
            self.monitor.write(f"warning: passed one epoch of the training data at step {done}; "
                               "sequences now repeat (in a new order)")
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
        self.offsets = TokenOffsets.at(
            self.run.ramp, self.cfg.data.seq_len, target,
            self.checkpoints.read_meta(target) if target else {}, self.watch)
        self.monitor.seek(trouble.step)
        return state, trouble.step

    def validate(self, state: TrainState, done: int) -> dict | None:
        data = self.run.validation
        if data is None:
            return None
        self.read()  # a diverged state is not worth validating
        total = validation_sums(self.eval_step, state.model, data, self.cfg.train.micro_batch,
                                self.cfg.train.eval_sequences, self.mesh, self.keys[EVAL])
        loss = float(safe_ratio(jnp.asarray(total["mlm_loss"]), jnp.asarray(total["mlm_weight"])))
        row = {"val_loss": loss, "val_accuracy": total["mlm_correct"] / total["mlm_weight"],
               "val_perplexity": math.exp(min(loss, 50.0))}
        if "pair_loss" in total:
            row["val_pair_accuracy"] = total["pair_correct"] / total["pair_weight"]
        self.monitor.log(done, row)
        self.last_validation = row
        self.monitor.write(f"step {done}: validation loss {loss:.3f}, accuracy "
                           f"{row['val_accuracy']:.3f}, perplexity {row['val_perplexity']:.1f}")
        return row

    def save(self, state: TrainState, done: int) -> None:
        self.read()  # never checkpoint a state whose steps diverged
        meta = {**token_counts(self.run.ramp, self.cfg.data.seq_len, done, self.tokens_before,
                               self.watch, self.offsets.seen),
                "tokens_stream": (self.run.ramp.sequences_before(done) * self.cfg.data.seq_len
                                  + self.offsets.stream),
                "total_steps": self.run.total_steps,
                "config_hash": config_hash(self.config_yaml), "config_yaml": self.config_yaml,
                "prepared_data": self.run.prepared_data, "divergence": self.watch.saved()}
        self.checkpoints.save(done, state, meta)

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
