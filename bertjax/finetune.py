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
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bertjax import config as config_lib
from bertjax import glue, glue_batches
from bertjax.checkpoint import Checkpoints
from bertjax.config import Config
from bertjax.errors import UserError
from bertjax.loss import classification_sums
from bertjax.metrics import Monitor
from bertjax.model import Bert
from bertjax.optim import make_optimizer, schedule
from bertjax.precision import Precision, all_finite
from bertjax.pretrain import StopSignal, write_atomic
from bertjax.pretrained import load_bundle
from bertjax.sharding import (
    barrier,
    full_copy,
    global_batch,
    initialize_distributed,
    local_rows,
    make_mesh,
    replicated,
    same_on_every_process,
    shard_params,
    with_mesh,
)
from bertjax.train import TrainState, init_state, select


def transplant(source, target):
    """`target`'s structure and static fields (dropout rates, scan, remat) with `source`'s
    arrays: how a checkpoint's weights meet the fine-tuning config."""
    leaves, structure = jax.tree.leaves(source), jax.tree.structure(target)
    if len(leaves) != structure.num_leaves:
        raise UserError("the checkpoint's encoder does not match the configured model")
    return jax.tree.unflatten(structure, leaves)


def with_task_head(start: Bert, cfg: Config, num_labels: int, key) -> Bert:
    """The pretrained encoder (and pooler, when the checkpoint has one: NSP or a GLUE model)
    under a fresh classifier or regression head."""
    fresh = Bert(cfg.model, key=key, mlm=False, num_labels=num_labels,
                 classifier_dropout=cfg.glue.classifier_dropout, pooling=cfg.glue.pooling)
    pooler = fresh.pooler if start.pooler is None else start.pooler
    return eqx.tree_at(lambda m: (m.encoder, m.pooler), fresh,
                       (transplant(start.encoder, fresh.encoder), pooler))


def make_steps(optimizer, precision: Precision, dropout: bool):
    def loss_fn(model, batch, key, scale):
        m = precision.cast_to_compute(model)
        k_enc, k_cls = (None, None) if key is None else jax.random.split(key)
        hidden = m(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                   key=k_enc)
        logits = m.classify(hidden, batch["attention_mask"], key=k_cls)
        sums = classification_sums(logits, batch["labels"], batch["valid"].astype(jnp.float32))
        return sums["loss"] / jnp.maximum(sums["weight"], 1.0) * scale, sums

    @eqx.filter_jit(donate="all-except-first")
    def train_step(inputs, state: TrainState):
        """One update; float16 scales the loss (dynamic loss scale, as in pretraining) and skips
        steps whose gradients overflow."""
        batch, key = inputs
        scale = jnp.asarray(1.0) if state.loss_scale is None else state.loss_scale.scale
        (_, sums), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            state.model, batch, key if dropout else None, scale)
        if state.loss_scale is not None:
            grads = state.loss_scale.unscale(grads)
        finite = all_finite(grads) & jnp.isfinite(sums["loss"])
        params = eqx.filter(state.model, eqx.is_inexact_array)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python ints and floats
            updates, new_opt = optimizer.update(grads, state.opt_state, params)
        loss_scale = None if state.loss_scale is None else state.loss_scale.update(finite)
        if loss_scale is not None:
            sums = dict(sums, loss_scale=loss_scale.scale)
        return TrainState(select(finite, eqx.apply_updates(state.model, updates), state.model),
                          select(finite, new_opt, state.opt_state), loss_scale), sums

    @eqx.filter_jit
    def predict(model, batch, everywhere):
        m = precision.cast_to_compute(model)
        hidden = m(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        # Logits replicated: each process reads all of them (the rows span processes).
        return jax.lax.with_sharding_constraint(m.classify(hidden, batch["attention_mask"]),
                                                everywhere)

    return train_step, predict


def device_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """A batch every process built whole -> global arrays, each process feeding its rows."""
    return global_batch(local_rows({k: v for k, v in batch.items() if k != "example_index"}),
                        mesh)


def predict_split(predict, model, enc: glue_batches.Encoded, batch_size: int,
                  mesh) -> np.ndarray:
    """Logits [n, labels] in example order."""
    indices, outputs = [], []
    for batch in glue_batches.iter_batches(enc, batch_size):
        indices.append(batch["example_index"])
        outputs.append(np.asarray(predict(model, device_batch(batch, mesh), replicated(mesh))))
    return glue_batches.in_example_order(len(enc), indices, outputs)


def evaluate(predict, model, dev: dict, cfg: Config, mesh) -> dict[str, dict]:
    out = {}
    for split, (examples, enc) in dev.items():
        logits = predict_split(predict, model, enc, cfg.glue.batch_size, mesh)
        out[split] = glue.compute_metrics(cfg.glue.task, logits, examples.labels)
    return out


def summarize(per_seed: list[dict]) -> dict:
    """Mean, median and spread of the main score and of every metric across seeds."""
    def stats(values):
        v = np.asarray(values, np.float64)
        return {"mean": float(v.mean()), "median": float(np.median(v)),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max())}

    summary = {"main_score": stats([r["best_score"] for r in per_seed])}
    for split in per_seed[0]["best_metrics"]:
        for name in per_seed[0]["best_metrics"][split]:
            summary[f"{split}/{name}"] = stats([r["best_metrics"][split][name]
                                               for r in per_seed])
    return summary


def batch_size_fits(cfg: Config) -> None:
    if cfg.glue.batch_size % jax.device_count():
        raise UserError(f"glue.batch_size={cfg.glue.batch_size} must be a multiple of the "
                        f"{jax.device_count()} devices")


@dataclasses.dataclass(frozen=True)
class Steps:
    """The optimizer and jitted steps, made once per process: every seed has the same shapes,
    so XLA compiles each bucket once rather than once per seed."""

    optimizer: object
    train_step: object
    predict: object
    total: int
    per_epoch: int
    lr: object  # step -> learning rate, for the logs


def build_steps(cfg: Config, train_enc: glue_batches.Encoded, model: Bert) -> Steps:
    per_epoch = glue_batches.num_batches(train_enc, cfg.glue.batch_size)
    total = max(1, math.ceil(cfg.glue.epochs * per_epoch))
    optim_cfg = dataclasses.replace(cfg.optim, schedule="linear", final_lr_fraction=0.0)
    optimizer = make_optimizer(optim_cfg, total, eqx.filter(model, eqx.is_array))
    precision = Precision.from_names(cfg.precision.param, cfg.precision.compute)
    dropout = cfg.model.dropout > 0 or cfg.model.attention_dropout > 0 or \
        cfg.glue.classifier_dropout > 0
    return Steps(optimizer, *make_steps(optimizer, precision, dropout), total, per_epoch,
                 schedule(optim_cfg, total))


def initial_model(seed: int, start: Bert | None, cfg: Config) -> Bert:
    """The encoder under a fresh head; without a checkpoint a fresh random encoder per seed,
    so that the baseline's spread covers its initialisation too."""
    key = jax.random.key(seed)
    if start is None:
        start = Bert(cfg.model, key=jax.random.fold_in(key, 1), mlm=False)
    return with_task_head(start, cfg, glue.get_task(cfg.glue.task).num_labels,
                          jax.random.fold_in(key, 0))


class Stopped(Exception):
    """A signal asked the run to stop; the seed's train state was saved at `step`."""

    def __init__(self, seed: int, step: int):
        super().__init__(f"seed {seed}, step {step}")
        self.seed, self.step = seed, step


def run_seed(seed: int, start: Bert | None, cfg: Config, steps: Steps, train_enc, dev: dict,
             mesh, run_dir: Path, save_best, monitor: Monitor, offset: int,
             stop: StopSignal) -> tuple[dict, Bert]:
    """Fine-tune one seed; returns its per-epoch and best metrics, and its best model (whole on
    this process). Rows go to the run's monitor (metrics.jsonl, wandb) at global step
    offset + step, so seeds follow each other.

    The train state is checkpointed (RUN/seedN/checkpoints) after every epoch and every
    train.checkpoint_every steps; a rerun resumes from there, and the result is the same as
    without the interruption (batches and dropout are functions of seed, epoch and step).
    SIGTERM/SIGINT save the state and raise Stopped (after an epoch's evaluation when the
    signal comes at its last step)."""
    task = glue.get_task(cfg.glue.task)
    key = jax.random.key(seed)
    seed_dir = run_dir / f"seed{seed}"
    state = shard_params(init_state(initial_model(seed, start, cfg), steps.optimizer,
                                    cfg.precision), mesh, cfg.mesh)
    checkpoints = Checkpoints(seed_dir, keep=1)
    latest = checkpoints.latest_step() if cfg.train.resume == "auto" else None
    # What the checkpoints carry besides the state: the epochs evaluated so far, the best one,
    # and the current epoch's running loss sums.
    progress = {"history": [], "best": {}, "loss": 0.0, "weight": 0.0}
    best_model = None
    if latest is not None:
        state, meta = checkpoints.restore(latest, state)
        progress = meta["progress"]
        if progress["best"]:  # the bundle written when that epoch was best
            best_model = load_bundle(seed_dir / "best").model
        monitor.write(f"{task.name} seed {seed}: resumed at step {latest}")

    def save(step):
        checkpoints.save(step, state, {"progress": progress})

    train_step, predict, total, every = steps.train_step, steps.predict, steps.total, \
        cfg.train.log_every
    step, tokens = (0 if latest is None else latest), 0
    window = []  # step sums not yet added to progress (device arrays: read when logged)
    try:
        for epoch in range(len(progress["history"]), math.ceil(cfg.glue.epochs)):
            first = step - epoch * steps.per_epoch  # > 0 when resuming inside this epoch
            for batch in glue_batches.iter_batches(train_enc, cfg.glue.batch_size, seed=seed,
                                                   epoch=epoch, start=first):
                if step == total:
                    break
                state, sums = train_step(
                    (device_batch(batch, mesh), jax.random.fold_in(key, step + 1)), state)
                window.append(sums)
                step += 1
                tokens += int(batch["attention_mask"].sum())  # real tokens, not padding
                monitor.advance()
                if step % every == 0:
                    loss = fold(progress, window)
                    row = {"seed": seed, "epoch": epoch + 1, "loss": loss,
                           "lr": float(steps.lr(step)), **monitor.throughput(tokens)}
                    if "loss_scale" in sums:
                        row["loss_scale"] = float(sums["loss_scale"])
                    monitor.log(offset + step, row, {"seed": seed, "loss": f"{loss:.4f}"})
                if step % steps.per_epoch == 0 or step == total:
                    continue  # an epoch's last step is saved after its evaluation, below
                stopping = stop.should_stop()
                if stopping or (cfg.train.checkpoint_every and
                                step % cfg.train.checkpoint_every == 0):
                    fold(progress, window)
                    save(step)
                if stopping:
                    raise Stopped(seed, step)
            fold(progress, window)
            loss = progress["loss"] / max(progress["weight"], 1.0)
            metrics = evaluate(predict, state.model, dev, cfg, mesh)
            score = glue.main_score(task.name, next(iter(metrics.values())))
            progress["history"].append({"epoch": epoch + 1, "step": step, "train_loss": loss,
                                        "dev": metrics, "score": score})
            progress["loss"] = progress["weight"] = 0.0
            monitor.log(offset + step, {"seed": seed, "epoch": epoch + 1, "train_loss": loss,
                                        "dev_score": score,
                                        **{f"{split}/{name}": value for split, values
                                           in metrics.items() for name, value in values.items()}})
            monitor.write(f"{task.name} seed {seed} epoch {epoch + 1}: train loss {loss:.4f}, "
                          f"dev {json.dumps(metrics)}")
            # Every process scored the same gathered logits, so all take this branch together.
            if not progress["best"] or score > progress["best"]["best_score"]:
                progress["best"] = {"best_score": score, "best_epoch": epoch + 1,
                                    "best_metrics": metrics}
                # On the host: the train step donates (frees) the device buffers. full_copy is a
                # collective when parameters span processes.
                best_model = jax.device_get(full_copy(state.model))
                save_best(best_model, seed_dir / "best", progress["best"])
            save(step)
            if stop.should_stop():
                raise Stopped(seed, step)
    finally:
        checkpoints.close()
    return {"seed": seed, "history": progress["history"], **progress["best"]}, best_model


def fold(progress: dict, window: list[dict]) -> float:
    """Add the step sums in `window` to the epoch's running loss sums and empty it; returns the
    window's per-example mean loss (padding rows weigh 0)."""
    loss, weight = (sum(float(s[k]) for s in window) for k in ("loss", "weight"))
    progress["loss"] += loss
    progress["weight"] += weight
    window.clear()
    return loss / max(weight, 1.0)


def load_start(cfg: Config):
    """(encoder source model, model config, tokenizer) from init.checkpoint, or (None, the
    configured model, the tokenizer named by the config) for the no-pretraining baseline."""
    from bertjax import tokenizer as tokenizer_lib

    if cfg.init.checkpoint is not None:
        from bertjax.pretrained import load_pretrained

        pretrained = load_pretrained(cfg.init.checkpoint)
        tok_path = pretrained.tokenizer_path or (Path(cfg.tokenizer.path)
                                                 if cfg.tokenizer.path else None)
        model, model_cfg = pretrained.model, pretrained.model_cfg
    else:
        tok_path = Path(cfg.tokenizer.path) if cfg.tokenizer.path else \
            Path(cfg.data.dir) / "tokenizer.json"
        model, model_cfg = None, None
    if tok_path is None or not Path(tok_path).is_file():
        if cfg.init.checkpoint is None:  # most often the front door run without a checkpoint
            raise UserError(f"no init.checkpoint given and no tokenizer at {tok_path}: pass "
                            "init.checkpoint=PATH (a pretraining run, checkpoint, release bundle "
                            "or Hugging Face BERT directory) to fine-tune it, or tokenizer.path="
                            "TOKENIZER.json to train the random-init baseline")
        raise UserError(f"no tokenizer found (looked for {tok_path}); set tokenizer.path to a "
                        "tokenizer.json or init.checkpoint to a checkpoint that carries one")
    tok = tokenizer_lib.load(tok_path)
    vocab = tokenizer_lib.vocab_size(tok)
    if model_cfg is None:
        model_cfg = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or vocab)
    if vocab > model_cfg.vocab_size:
        raise UserError(f"the tokenizer {tok_path} has {vocab} tokens but the checkpoint's "
                        f"vocabulary has {model_cfg.vocab_size}: they do not belong together; "
                        "use the tokenizer saved with the checkpoint")
    return model, model_cfg, tok


def same_inputs_on_every_process(tok, train_enc, dev: dict) -> None:
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


def finetune(cfg: Config) -> Path:
    from bertjax.export import save_bundle

    initialize_distributed(cfg.mesh)
    main = jax.process_index() == 0  # the process that writes files
    model, model_cfg, tok = load_start(cfg)
    # The checkpoint decides the architecture; dropout and the like still come from the config.
    model_cfg = dataclasses.replace(model_cfg, dropout=cfg.model.dropout,
                                    attention_dropout=cfg.model.attention_dropout,
                                    scan_layers=cfg.model.scan_layers, remat=cfg.model.remat)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    batch_size_fits(cfg)
    if cfg.glue.buckets[-1] > model_cfg.max_position_embeddings:
        raise UserError(f"glue.buckets={list(cfg.glue.buckets)} go up to {cfg.glue.buckets[-1]} "
                        f"tokens but the model has {model_cfg.max_position_embeddings} positions; "
                        "use buckets of at most that length")
    task = glue.get_task(cfg.glue.task)
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
    if main:
        write_atomic(run_dir / "config.yaml", config_yaml)
        print(f"{task.name}: {len(train)} training examples ({train_enc.truncated} truncated to "
              f"{cfg.glue.buckets[-1]} tokens), dev {[len(e) for e, _ in dev.values()]}, "
              f"seeds {cfg.glue.seeds}, {jax.process_count()} process(es)")
    mesh = make_mesh()

    def save_best(best_model, out_dir, best):
        if main:
            save_bundle(best_model, cfg, tok, out_dir, summary=best)

    steps = build_steps(cfg, train_enc, initial_model(cfg.glue.seeds[0], model, cfg))
    steps = dataclasses.replace(steps, train_step=with_mesh(steps.train_step, mesh),
                                predict=with_mesh(steps.predict, mesh))
    done = {seed: steps_done(run_dir / f"seed{seed}", steps.total) for seed in cfg.glue.seeds}
    if cfg.train.resume == "never" or not same_config or not any(done.values()):
        if any(done.values()) and main:
            print(f"{run_dir} holds an interrupted or finished fine-tune"
                  f"{'' if same_config else ' with another config'}: starting over")
        done = dict.fromkeys(done, 0)
        if main:  # start over: drop what an earlier run of this directory left
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            for seed in cfg.glue.seeds:
                (run_dir / f"seed{seed}" / "result.json").unlink(missing_ok=True)
                shutil.rmtree(run_dir / f"seed{seed}" / "checkpoints", ignore_errors=True)
        barrier("fine-tuning starts over")
    monitor = Monitor(run_dir, steps.total * len(cfg.glue.seeds), sum(done.values()), cfg.wandb,
                      config_lib.to_dict(cfg), None, cfg.precision.compute)
    per_seed, best_model, stop = [], None, StopSignal(mesh)
    try:
        for i, seed in enumerate(cfg.glue.seeds):
            seed_dir = run_dir / f"seed{seed}"
            if done[seed] == steps.total:  # finished before an interruption
                result, seed_best = json.loads((seed_dir / "result.json").read_text()), None
                monitor.write(f"{task.name} seed {seed}: done before, {seed_dir / 'result.json'}")
            else:
                result, seed_best = run_seed(seed, model, cfg, steps, train_enc, dev, mesh,
                                             run_dir, save_best, monitor, i * steps.total, stop)
                if main:
                    write_atomic(seed_dir / "result.json", json.dumps(result, indent=2))
                barrier(f"seed {seed} done")  # then its checkpoint is no longer needed
                if main:
                    shutil.rmtree(seed_dir / "checkpoints", ignore_errors=True)
            if not per_seed or result["best_score"] > max(r["best_score"] for r in per_seed):
                # The best seed's best epoch, for the submission files.
                best_model = seed_best or load_bundle(seed_dir / "best").model
            per_seed.append(result)
    except Stopped as stopped:
        monitor.write(f"{stop.name}: saved seed {stopped.seed} at step {stopped.step}; run the "
                      "same command again to resume")
        return run_dir
    finally:
        stop.restore()
        monitor.close()
    results = {"task": task.name, "init": cfg.init.checkpoint, "seeds": per_seed,
               "summary": summarize(per_seed)}
    results["submissions"] = write_submissions(cfg, tok, run_dir, best_model, mesh,
                                               steps.predict)
    if main:
        write_atomic(run_dir / "results.json", json.dumps(results, indent=2))
        s = results["summary"]["main_score"]
        print(f"{task.name}: main score mean {s['mean']:.4f}, median {s['median']:.4f}, "
              f"std {s['std']:.4f} over {len(per_seed)} seed(s); {run_dir / 'results.json'}")
    return run_dir


def write_submissions(cfg: Config, tok, run_dir: Path, best: Bert, mesh, predict) -> list[str]:
    """GLUE test-set files from the best seed's best model, for the test splits that exist
    (process 0 writes them and returns their paths)."""
    written = []
    pairs = [(t, s) for t, s in glue.submissions(cfg.glue.task)
             if glue.split_available(cfg.glue, s, task=t)]
    if not pairs:
        return written
    model = shard_params(best, mesh, cfg.mesh)
    for task, split in pairs:
        examples = glue.load_split(cfg.glue, split, task=task)
        enc = glue_batches.encode(tok, examples, cfg.glue.buckets)
        logits = predict_split(predict, model, enc, cfg.glue.batch_size, mesh)
        if jax.process_index() == 0:  # the others predicted along (rows span processes)
            written.append(str(glue.write_submission(task, split, examples.index, logits,
                                                     run_dir / "submission")))
    return written
