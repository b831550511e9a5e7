"""The pretraining loop: data -> sharded train step -> logs, validation, checkpoints, resume,
rollback.

Everything a step does is a pure function of (config, step): the rows it reads, its masks and its
dropout. Resuming therefore restores the newest complete checkpoint and simply continues; the
result is bit-for-bit the same as an uninterrupted run on CPU. SIGTERM/SIGINT save and exit,
every process after the same step. The run holds its directory (a lock) while it runs.

A diverging run (bertjax.divergence: a non-finite step or a loss spike) rolls back: the newest
checkpoint from before the trouble is restored (the initial state when none is), the steps from
there to the bad one are skipped, not replayed, and the learning rate is multiplied by
`train.rollback_lr_factor` from then on; after `train.max_rollbacks` the run stops (exit 1).
Metrics are read lazily, so every save and validation reads and checks them first: no checkpoint
holds a state that is known to be bad.
Over the guide's ~350 lines since the rollback came in (issue 19); `Loop` is the next thing to
move into a module of its own, as seed_run.py did for fine-tuning.
"""

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from tokenizers import Tokenizer

from bertjax import config as config_lib
from bertjax import plot, prepare
from bertjax import tokenizer as tokenizer_lib
from bertjax.checkpoint import Checkpoints, config_hash, restore_target
from bertjax.config import Config
from bertjax.data import Prefetcher, PretrainData
from bertjax.divergence import Diverged, Trouble, Watch, roll_back
from bertjax.errors import UserError
from bertjax.files import check_dir_path, write_atomic
from bertjax.loss import safe_ratio
from bertjax.masking import tokenizer_masker
from bertjax.metrics import Monitor, drop_rows_after, mlm_row
from bertjax.model import Bert, attention_summary, flops_per_token, param_count
from bertjax.optim import BatchRamp, make_optimizer, schedule
from bertjax.precision import Precision
from bertjax.predict import fill_mask
from bertjax.pretrained import continue_from
from bertjax.runlock import hold_run_dir
from bertjax.sharding import (
    StopSignal,
    full_copy,
    global_batch,
    initialize_distributed,
    make_mesh,
    process_slice,
    same_on_every_process,
    shard_params,
    with_mesh,
)
from bertjax.step import StepSpec, TrainState, init_state, make_eval_step, make_train_step

# Purposes of the root key; each gets its own stream (fold_in), so adding one never shifts another.
INIT, MASK, DROPOUT, EVAL = range(4)


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

    @property
    def config_yaml(self) -> str:
        return config_lib.to_yaml(self.cfg)


def keep_tokenizer(run_dir: Path, data_dir: Path) -> None:
    """The run keeps a copy of its tokenizer (fine-tuning and export read it from there), and a
    resume refuses a data directory whose tokenizer has changed since: re-preparing retrains it,
    which is not reproducible, so every token id would silently mean something else."""
    source, kept = data_dir / "tokenizer.json", run_dir / "tokenizer.json"
    if kept.is_file():
        if kept.read_bytes() != source.read_bytes():
            raise UserError(f"{source} is not the tokenizer {run_dir} was trained with ({kept}): "
                            f"{data_dir} was prepared again since; prepare a data.dir with "
                            f"tokenizer.path={kept} to resume, or start a new train.run_dir")
    elif jax.process_index() == 0:
        write_atomic(kept, source.read_text())


def same_data_on_every_process(data_dir: Path) -> None:
    """Hosts without shared storage (TPU VMs, for one) each prepare their own copy of the data.
    Tokenizer training is not reproducible, so their token ids could differ, silently: compare
    the tokenizer's sha256 and the token counts across processes and refuse a mismatch."""
    meta = prepare.read_meta(data_dir)
    counts = [meta["splits"][s]["tokens"] for s in sorted(meta["splits"])]
    if not same_on_every_process([meta["tokenizer_sha256"].encode(), repr(counts).encode()]):
        raise UserError(f"the processes' prepared data in {data_dir} differ (tokenizer or token "
                        "counts): prepare once and copy the directory to every host, or set "
                        "tokenizer.path to the same tokenizer.json everywhere")


def resolve(cfg: Config) -> Run:
    """Prepare (or reuse) the data, fit the model's vocabulary to it, and size the run."""
    if cfg.data.seq_len > cfg.model.max_position_embeddings:
        raise UserError(f"data.seq_len={cfg.data.seq_len} is longer than the model's "
                        f"{cfg.model.max_position_embeddings} positions; lower data.seq_len or "
                        "raise model.max_position_embeddings")
    data_dir = prepare.ensure_prepared(cfg)
    same_data_on_every_process(data_dir)
    tok = tokenizer_lib.load(data_dir / "tokenizer.json")
    vocab = tokenizer_lib.vocab_size(tok)
    if cfg.model.vocab_size is None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    elif cfg.model.vocab_size < vocab:
        raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                        f"{vocab} tokens; set model.vocab_size=null to use the tokenizer's size")
    train = PretrainData(data_dir, "train", cfg.data.seq_len, cfg.data.objective, cfg.train.seed)
    validation = PretrainData(data_dir, "validation", cfg.data.seq_len,
                                       cfg.data.objective, cfg.train.seed)
    if validation.num_sequences == 0:
        validation = None
    probe = BatchRamp.from_config(cfg.train, 1)
    steps = cfg.train.steps
    if cfg.train.tokens is not None:
        # The ramp depends on the step count; a constant-batch estimate is refined once.
        steps = max(1, cfg.train.tokens // (probe.end * cfg.data.seq_len))
        steps = BatchRamp.from_config(cfg.train, steps).steps_for_tokens(cfg.train.tokens,
                                                                         cfg.data.seq_len)
    ramp = BatchRamp.from_config(cfg.train, steps)
    return Run(cfg, train, validation, tok, ramp, steps, Path(cfg.train.run_dir))


def pretrain(cfg: Config) -> Path:
    """Pretrain (or resume) the run `cfg` describes; returns its run directory."""
    check_dir_path(cfg.train.run_dir, "train.run_dir")
    initialize_distributed(cfg.mesh)
    with hold_run_dir(cfg.train.run_dir):
        return pretrain_holding_the_run_dir(cfg)


def pretrain_holding_the_run_dir(cfg: Config) -> Path:
    run = resolve(cfg)
    cfg = run.cfg
    keep_tokenizer(run.run_dir, Path(cfg.data.dir))
    if jax.process_index() == 0:
        write_atomic(run.run_dir / "config.yaml", run.config_yaml)
    mesh = make_mesh()
    root = jax.random.key(cfg.train.seed)
    keys = {p: jax.random.fold_in(root, p) for p in (INIT, MASK, DROPOUT, EVAL)}
    checkpoints = Checkpoints(run.run_dir, cfg.train.keep_checkpoints)
    state, optimizer, start, meta = start_state(run, keys[INIT], mesh, checkpoints)
    if jax.process_index() == 0:
        drop_rows_after(run.run_dir, start)  # a killed run's rows past the checkpoint
    fpt = flops_per_token(cfg.model, cfg.data.seq_len, cfg.data.predictions)
    monitor = Monitor(run.run_dir, run.total_steps, start, cfg.wandb, config_lib.to_dict(cfg),
                      fpt, cfg.precision.compute)
    monitor.write(f"bertjax: {param_count(state.model):,} parameters, {jax.device_count()} "
                  f"device(s), {run.total_steps} steps, {run.data.num_sequences:,} train "
                  f"sequences/epoch, attention: "
                  f"{attention_summary(cfg.model, cfg.precision.compute)}")
    stop = StopSignal(mesh)
    loop = Loop(run, mesh, keys, optimizer, monitor, checkpoints, meta, start,
                lambda: initial_state(run, keys[INIT], mesh, load_init=True)[0])
    try:
        state = loop.train(state, start, stop)
    finally:
        stop.restore()
        monitor.close()
        checkpoints.close()
    if stop.stopped:
        return run.run_dir
    # Parameters may be split across hosts (FSDP): every process joins the gather, then process
    # 0 alone runs fill-mask on its full copy (alone on the global mesh it would wait forever).
    model = full_copy(state.model) if cfg.train.fill_mask else state.model
    if jax.process_index() == 0:
        write_results(run, loop.last_validation, loop.tokens_before, loop.watch)
        finish(run, model)
    return run.run_dir


def initial_state(run: Run, key: jax.Array, mesh, load_init: bool):
    """(train state on the mesh before any step, optimizer, tokens of earlier phases): fresh, or
    init.checkpoint's weights (continued pretraining) when `load_init`."""
    cfg = run.cfg
    model = Bert(cfg.model, key=key, nsp=cfg.data.objective != "mlm")
    tokens_before = 0  # earlier phases' tokens (continued pretraining); None when unknown
    if load_init and cfg.init.checkpoint is not None:
        model, tokens_before = continue_from(model, cfg, run.tokenizer)
    optimizer = make_optimizer(cfg.optim, run.total_steps, eqx.filter(model, eqx.is_array))
    state = shard_params(init_state(model, optimizer, cfg.precision), mesh, cfg.mesh)
    return state, optimizer, tokens_before


def start_state(run: Run, key: jax.Array, mesh, checkpoints: Checkpoints):
    """(train state on the mesh, optimizer, first step, checkpoint meta): fresh, from
    init.checkpoint's weights (continued pretraining), or the newest checkpoint (resume)."""
    latest = checkpoints.latest_step() if run.cfg.train.resume == "auto" else None
    state, optimizer, tokens_before = initial_state(run, key, mesh, load_init=latest is None)
    if latest is None:
        return state, optimizer, 0, {"tokens_before": tokens_before}
    state, meta = checkpoints.restore(latest, state)
    if meta.get("config_hash") != config_hash(run.config_yaml):
        print(f"warning: resuming {run.run_dir} with a config that differs from the "
              "checkpoint's", file=sys.stderr)
    return state, optimizer, meta["step"], meta


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
                        dropout)
        self.train_step = with_mesh(make_train_step(spec, optimizer, cfg.train.micro_batch), mesh)
        self.eval_step = with_mesh(make_eval_step(spec), mesh)
        self.lr = schedule(cfg.optim, run.total_steps)
        self.pending: list[tuple[int, dict]] = []  # dispatched steps, metrics not read yet
        self.window: list[tuple[int, dict, int]] = []  # read, not logged: (step, metrics, updates)
        self.warned_epoch = False
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
        # No multiplier until a rollback: the step is then the very program it always was.
        factor = self.watch.lr_factor
        lr_scale = None if factor == 1.0 else jnp.asarray(factor, jnp.float32)
        with self.batches(start) as batches:
            for step, first, local in batches:
                batch = global_batch(local, self.mesh)
                state, metrics = self.train_step(state, batch, jnp.int32(first), self.keys[MASK],
                                                 jax.random.fold_in(self.keys[DROPOUT], step),
                                                 lr_scale)
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
        fall on it (`missed`: a rollback at the last step skipped them)."""
        train, total = self.cfg.train, self.run.total_steps
        if missed or not train.checkpoint_every or total % train.checkpoint_every:
            self.save(state, total)
        if missed or not train.eval_every or total % train.eval_every:
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
                "tokens": sequences * self.cfg.data.seq_len,
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
        state = roll_back(self.watch, trouble, self.checkpoints, self.target, self.initial,
                          self.monitor)
        self.monitor.seek(trouble.step)
        return state, trouble.step

    def validate(self, state: TrainState, done: int) -> dict | None:
        data = self.run.validation
        if data is None:
            return None
        self.read()  # a diverged state is not worth validating
        size = self.cfg.train.micro_batch
        n_batches = min(self.cfg.train.eval_batches, max(1, data.num_sequences // size))
        sums = []
        for i in range(n_batches):
            offset, count = process_slice(size)
            batch = global_batch(data.rows(i * size + offset, count), self.mesh)
            sums.append(self.eval_step(state.model, batch, jnp.int32(i * size), self.keys[EVAL]))
        total = jax.tree.map(lambda *xs: float(sum(xs)), *jax.device_get(sums))
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
        meta = {**token_counts(self.run, done, self.tokens_before),
                "total_steps": self.run.total_steps,
                "config_hash": config_hash(self.config_yaml), "config_yaml": self.config_yaml,
                "divergence": self.watch.saved()}
        self.checkpoints.save(done, state, meta)


def finish(run: Run, model: Bert) -> None:
    """End of training: curves to PNG and fill-mask examples."""
    plot.plot_run(run.run_dir)
    sentences = run.cfg.train.fill_mask
    if sentences:
        print("fill-mask predictions:")
        for text, top in zip(sentences, fill_mask(model, run.tokenizer, sentences, top_k=3),
                             strict=True):
            guesses = ", ".join(f"{tok} ({p:.2f})" for tok, p in top[0])
            print(f"  {text}  ->  {guesses}")


def token_counts(run: Run, steps_done: int, tokens_before: int | None) -> dict:
    """Training tokens behind the weights: this run's, earlier phases' (continued pretraining;
    None when the starting checkpoint does not say) and their sum (None when unknown)."""
    this_run = run.ramp.sequences_before(steps_done) * run.cfg.data.seq_len
    return {"tokens_seen": None if tokens_before is None else tokens_before + this_run,
            "tokens_this_run": this_run, "tokens_before": tokens_before}


def write_results(run: Run, validation: dict | None, tokens_before: int | None,
                  watch: Watch) -> None:
    results = {"steps": run.total_steps, **token_counts(run, run.total_steps, tokens_before),
               "validation": validation, "rollbacks": watch.rollbacks,
               "lr_factor": watch.lr_factor, "skipped_steps": watch.skipped}
    write_atomic(run.run_dir / "results.json", json.dumps(results, indent=2))
    if watch.rollbacks:
        print(f"note: training diverged and rolled back {watch.rollbacks} time(s): steps "
              f"{', '.join(f'{a}-{b}' for a, b in watch.skipped)} are not in the model, and "
              f"the learning rate ended at x{watch.lr_factor:g} of optim.lr's schedule")
