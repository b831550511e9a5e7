"""GLUE fine-tuning: `python -m bertjax.train configs/mnli.yaml init.checkpoint=PATH`.

For each seed: a pretrained encoder (or a random one, the baseline) gets a fresh classifier or
regression head, trains with AdamW (warm-up + linear decay) on bucketed fixed-shape batches, is
evaluated on every dev split after each epoch, and the best epoch (GLUE's main score on the first
dev split) is kept as a release bundle. Then test predictions become GLUE submission files, and
`results.json` reports every seed with mean, median and spread. Progress goes to a bar,
`metrics.jsonl` and wandb (when enabled) through the same Monitor as pretraining.

Each seed's train state is checkpointed after every epoch and every train.checkpoint_every
steps, and a finished seed leaves `seedN/result.json`: rerunning the same command resumes an
interrupted fine-tune to the same result (a changed config starts over).

On several processes (jax.distributed, as in pretraining) every process reads the GLUE files and
builds every batch, feeds its own rows, and sees all predictions; process 0 writes the files.
"""

import dataclasses
import itertools
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax
from tokenizers import Tokenizer

from bertjax import config as config_lib
from bertjax import glue, glue_batches, glue_metrics
from bertjax.checkpoint import Checkpoints
from bertjax.config import Config
from bertjax.errors import UserError
from bertjax.export import save_bundle
from bertjax.files import write_atomic
from bertjax.glue_eval import device_batch, evaluate, summarize, write_submissions
from bertjax.metrics import Monitor
from bertjax.model import Bert
from bertjax.optim import make_optimizer, schedule
from bertjax.precision import Precision
from bertjax.pretrained import initial_model, load_bundle, load_start
from bertjax.runlock import hold_run_dir
from bertjax.sharding import (
    StopSignal,
    barrier,
    full_copy,
    initialize_distributed,
    make_mesh,
    same_on_every_process,
    shard_params,
)
from bertjax.step import init_state, make_glue_steps


@dataclasses.dataclass(frozen=True)
class Steps:
    """The optimizer and jitted steps, made once per process: every seed has the same shapes,
    so XLA compiles each bucket once rather than once per seed."""

    optimizer: optax.GradientTransformation
    train_step: Callable
    predict: Callable
    total: int
    per_epoch: int
    lr: optax.Schedule  # for the logs


def build_steps(cfg: Config, train_enc: glue_batches.Encoded, model: Bert) -> Steps:
    per_epoch = glue_batches.num_batches(train_enc, cfg.glue.batch_size)
    total = max(1, math.ceil(cfg.glue.epochs * per_epoch))
    optimizer = make_optimizer(cfg.optim, total, eqx.filter(model, eqx.is_array))
    dropout = cfg.model.dropout > 0 or cfg.model.attention_dropout > 0 or \
        cfg.glue.classifier_dropout > 0
    train_step, predict = make_glue_steps(optimizer, Precision.from_names(cfg.precision.compute),
                                          dropout)
    return Steps(optimizer, train_step, predict, total, per_epoch, schedule(cfg.optim, total))


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
        self.task = glue.get_task(job.cfg.glue.task).name
        self.key = jax.random.key(seed)
        self.dir = job.run_dir / f"seed{seed}"
        self.state = shard_params(init_state(initial_model(seed, job.start, job.cfg),
                                             job.steps.optimizer, job.cfg.precision),
                                  job.mesh, job.cfg.mesh)
        self.checkpoints = Checkpoints(self.dir, keep=1)
        # What the checkpoints carry besides the state: the epochs evaluated so far, the best
        # one, and the current epoch's running loss sums.
        self.progress = {"history": [], "best": {}, "loss": 0.0, "weight": 0.0}
        self.best_model: Bert | None = None
        self.step, self.tokens = 0, 0
        self.window: list[dict] = []  # step sums not yet in progress (read when logged)

    def run(self) -> tuple[dict, Bert]:
        """Its per-epoch and best metrics, and its best model (whole on this process)."""
        try:
            self.resume()
            for epoch in range(len(self.progress["history"]), math.ceil(self.job.cfg.glue.epochs)):
                self.train_epoch(epoch)
                self.end_epoch(epoch)
        finally:
            self.checkpoints.close()
        return {"seed": self.seed, "history": self.progress["history"],
                **self.progress["best"]}, self.best_model

    def resume(self) -> None:
        latest = self.checkpoints.latest_step() if self.job.cfg.train.resume == "auto" else None
        if latest is None:
            return
        self.state, meta = self.checkpoints.restore(latest, self.state)
        self.progress, self.step = meta["progress"], latest
        if self.progress["best"]:  # the bundle written when that epoch was best
            self.best_model = load_bundle(self.dir / "best").model
        self.job.monitor.write(f"{self.task} seed {self.seed}: resumed at step {latest}")

    def train_epoch(self, epoch: int) -> None:
        job, steps, train = self.job, self.job.steps, self.job.cfg.train
        first = self.step - epoch * steps.per_epoch  # > 0 when resuming inside this epoch
        for batch in glue_batches.iter_batches(job.train_enc, job.cfg.glue.batch_size,
                                               seed=self.seed, epoch=epoch, start=first):
            if self.step == steps.total:
                break
            self.state, sums = steps.train_step(
                (device_batch(batch, job.mesh), jax.random.fold_in(self.key, self.step + 1)),
                self.state)
            self.window.append(sums)
            self.step += 1
            self.tokens += int(batch["attention_mask"].sum())  # real tokens, not padding
            job.monitor.advance()
            if self.step % train.log_every == 0:
                self.log(epoch, sums)
            if self.step % steps.per_epoch == 0 or self.step == steps.total:
                continue  # an epoch's last step is saved after its evaluation (end_epoch)
            stopping = job.stop.should_stop()
            if stopping or (train.checkpoint_every and self.step % train.checkpoint_every == 0):
                fold(self.progress, self.window)
                self.save()
            if stopping:
                raise Stopped(self.seed, self.step)

    def log(self, epoch: int, sums: dict) -> None:
        monitor = self.job.monitor
        loss = fold(self.progress, self.window)
        row = {"seed": self.seed, "epoch": epoch + 1, "loss": loss,
               "lr": float(self.job.steps.lr(self.step)), **monitor.throughput(self.tokens)}
        if "loss_scale" in sums:
            row["loss_scale"] = float(sums["loss_scale"])
        monitor.log(self.offset + self.step, row, {"seed": self.seed, "loss": f"{loss:.4f}"})

    def end_epoch(self, epoch: int) -> None:
        """Evaluate, record the epoch, keep the best model as a bundle, checkpoint."""
        job, progress = self.job, self.progress
        fold(progress, self.window)
        loss = progress["loss"] / max(progress["weight"], 1.0)
        metrics = evaluate(job.steps.predict, self.state.model, job.dev, job.cfg, job.mesh)
        score = glue_metrics.main_score(self.task, next(iter(metrics.values())))
        progress["history"].append({"epoch": epoch + 1, "step": self.step, "train_loss": loss,
                                    "dev": metrics, "score": score})
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
        if job.stop.should_stop():
            raise Stopped(self.seed, self.step)

    def save(self) -> None:
        self.checkpoints.save(self.step, self.state, {"progress": self.progress})


def fold(progress: dict, window: list[dict]) -> float:
    """Add the step sums in `window` to the epoch's running loss sums and empty it; returns the
    window's per-example mean loss (padding rows weigh 0)."""
    loss, weight = (sum(float(s[k]) for s in window) for k in ("loss", "weight"))
    progress["loss"] += loss
    progress["weight"] += weight
    window.clear()
    return loss / max(weight, 1.0)


def finetune(cfg: Config) -> Path:
    """Fine-tune every seed of `cfg` (resuming an interrupted run); returns the run directory."""
    initialize_distributed(cfg.mesh)
    with hold_run_dir(cfg.train.run_dir):  # one run at a time in a run directory
        return finetune_holding_the_run_dir(cfg)


def finetune_holding_the_run_dir(cfg: Config) -> Path:
    job, same_config = setup(cfg)
    done = seeds_done(job, same_config)
    job.monitor = Monitor(job.run_dir, job.steps.total * len(job.cfg.glue.seeds),
                          sum(done.values()), job.cfg.wandb, config_lib.to_dict(job.cfg), None,
                          job.cfg.precision.compute)
    job.stop = StopSignal(job.mesh)
    try:
        per_seed, best_model = run_seeds(job, done)
    except Stopped as stopped:
        job.monitor.write(f"{job.stop.name}: saved seed {stopped.seed} at step {stopped.step}; "
                          "run the same command again to resume")
        return job.run_dir
    finally:
        job.stop.restore()
        job.monitor.close()
    task = glue.get_task(job.cfg.glue.task).name
    results = {"task": task, "init": job.cfg.init.checkpoint, "seeds": per_seed,
               "summary": summarize(per_seed)}
    results["submissions"] = write_submissions(job.cfg, job.tok, job.run_dir, best_model,
                                               job.mesh, job.steps.predict)
    if job.main:
        write_atomic(job.run_dir / "results.json", json.dumps(results, indent=2))
        s = results["summary"]["main_score"]
        print(f"{task}: main score mean {s['mean']:.4f}, median {s['median']:.4f}, "
              f"std {s['std']:.4f} over {len(per_seed)} seed(s); {job.run_dir / 'results.json'}")
    return job.run_dir


def with_glue_schedule(cfg: Config) -> Config:
    """Fine-tuning's schedule is warm-up + linear decay to 0 (BERT's), whatever optim.schedule
    says; the run's saved config.yaml records it so."""
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, schedule="linear",
                                                              final_lr_fraction=0.0))


def resolve(cfg: Config) -> tuple[Config, Bert | None, Tokenizer]:
    """The run's config as it will be used and saved (the checkpoint decides the architecture;
    dropout and the like still come from the config), the start model and the tokenizer."""
    model, model_cfg, tok = load_start(cfg)
    model_cfg = dataclasses.replace(model_cfg, dropout=cfg.model.dropout,
                                    attention_dropout=cfg.model.attention_dropout,
                                    scan_layers=cfg.model.scan_layers, remat=cfg.model.remat)
    cfg = with_glue_schedule(dataclasses.replace(cfg, model=model_cfg))
    if cfg.glue.batch_size % jax.device_count():
        raise UserError(f"glue.batch_size={cfg.glue.batch_size} must be a multiple of the "
                        f"{jax.device_count()} devices")
    if cfg.glue.buckets[-1] > model_cfg.max_position_embeddings:
        raise UserError(f"glue.buckets={list(cfg.glue.buckets)} go up to {cfg.glue.buckets[-1]} "
                        f"tokens but the model has {model_cfg.max_position_embeddings} positions; "
                        "use buckets of at most that length")
    return cfg, model, tok


def setup(cfg: Config) -> tuple[Job, bool]:
    """Load the start model and the GLUE data, write the run's config.yaml; also returns
    whether the run directory's earlier config.yaml was the same (then it may resume)."""
    cfg, model, tok = resolve(cfg)
    train = glue.load_split(cfg.glue, "train")
    train_enc = glue_batches.encode(tok, train, cfg.glue.buckets)
    dev = {}
    for split in glue.dev_splits(cfg.glue):
        examples = glue.load_split(cfg.glue, split)
        dev[split] = (examples, glue_batches.encode(tok, examples, cfg.glue.buckets))
    same_inputs_on_every_process(tok, train_enc, dev)
    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = config_lib.to_yaml(cfg)
    # An interrupted fine-tune resumes only with the very same config; any change starts over.
    same_config = (run_dir / "config.yaml").is_file() and \
        (run_dir / "config.yaml").read_text() == config_yaml
    barrier("config compared")  # before process 0 writes the new one
    steps = build_steps(cfg, train_enc, initial_model(cfg.glue.seeds[0], model, cfg))
    job = Job(cfg, tok, model, train_enc, dev, make_mesh(), run_dir, steps)
    if job.main:
        write_atomic(run_dir / "config.yaml", config_yaml)
        print(f"{glue.get_task(cfg.glue.task).name}: {len(train)} training examples "
              f"({train_enc.truncated} truncated to {cfg.glue.buckets[-1]} tokens), dev "
              f"{[len(e) for e, _ in dev.values()]}, seeds {cfg.glue.seeds}, "
              f"{jax.process_count()} process(es)")
    return job, same_config


def seeds_done(job: Job, same_config: bool) -> dict[int, int]:
    """{seed: steps already done}; a changed config (or train.resume=never) starts over and
    removes what an earlier run of this directory left."""
    done = {seed: steps_done(job.run_dir / f"seed{seed}", job.steps.total)
            for seed in job.cfg.glue.seeds}
    if job.cfg.train.resume == "auto" and same_config and any(done.values()):
        return done
    if any(done.values()) and job.main:
        print(f"{job.run_dir} holds an interrupted or finished fine-tune"
              f"{'' if same_config else ' with another config'}: starting over")
    if job.main:
        (job.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        for seed in job.cfg.glue.seeds:
            (job.run_dir / f"seed{seed}" / "result.json").unlink(missing_ok=True)
            shutil.rmtree(job.run_dir / f"seed{seed}" / "checkpoints", ignore_errors=True)
    barrier("fine-tuning starts over")
    return dict.fromkeys(done, 0)


def run_seeds(job: Job, done: dict[int, int]) -> tuple[list[dict], Bert]:
    """Each seed's result (fine-tuned now, or read back when an earlier run finished it) and
    the best seed's best model (for the submission files)."""
    per_seed, best_model = [], None
    for i, seed in enumerate(job.cfg.glue.seeds):
        seed_dir = job.run_dir / f"seed{seed}"
        if done[seed] == job.steps.total:  # finished before an interruption
            result, seed_best = json.loads((seed_dir / "result.json").read_text()), None
            job.monitor.write(f"{job.cfg.glue.task} seed {seed}: done before, "
                              f"{seed_dir / 'result.json'}")
        else:
            result, seed_best = SeedRun(job, seed, i * job.steps.total).run()
            if job.main:
                write_atomic(seed_dir / "result.json", json.dumps(result, indent=2))
            barrier(f"seed {seed} done")  # then its checkpoint is no longer needed
            if job.main:
                shutil.rmtree(seed_dir / "checkpoints", ignore_errors=True)
        if not per_seed or result["best_score"] > max(r["best_score"] for r in per_seed):
            best_model = seed_best or load_bundle(seed_dir / "best").model
        per_seed.append(result)
    return per_seed, best_model


def same_inputs_on_every_process(tok: Tokenizer, train_enc, dev: dict) -> None:
    """Hosts without shared storage read their own GLUE files and tokenizer: refuse to train
    on batches that differ between processes (each would feed rows of another dataset)."""
    arrays = (getattr(enc, f.name) for enc in (train_enc, *(e for _, e in dev.values()))
              for f in dataclasses.fields(enc))
    parts = (np.ascontiguousarray(a).tobytes() for a in arrays if isinstance(a, np.ndarray))
    if not same_on_every_process(itertools.chain([tok.to_str().encode()], parts)):
        raise UserError("the processes read different GLUE data or tokenizers (glue.data_dir, "
                        "init.checkpoint): give every host the same files")


def steps_done(seed_dir: Path, total: int) -> int:
    """How far an earlier run of this seed got: `total` when it finished (result.json), else
    its newest checkpoint's step, else 0."""
    if (seed_dir / "result.json").is_file():
        return total
    if not (seed_dir / "checkpoints").is_dir():
        return 0
    checkpoints = Checkpoints(seed_dir)
    try:
        return checkpoints.latest_step() or 0
    finally:
        checkpoints.close()
