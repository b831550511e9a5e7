"""GLUE fine-tuning: `python -m bertjax.train configs/mnli.yaml init.checkpoint=PATH`.

For each seed: a pretrained encoder (or a random one, the baseline) gets a fresh classifier or
regression head, trains with AdamW (warm-up + linear decay) on bucketed fixed-shape batches, is
evaluated on every dev split after each epoch, and the best epoch (GLUE's main score on the first
dev split) is kept as a release bundle. Then test predictions become GLUE submission files, and
`results.json` reports every seed with mean, median and spread. Progress goes to a bar,
`metrics.jsonl` and wandb (when enabled) through the same Monitor as pretraining.

On several processes (jax.distributed, as in pretraining) every process reads the GLUE files and
builds every batch, feeds its own rows, and sees all predictions; process 0 writes the files.
"""

import dataclasses
import itertools
import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bertjax import config as config_lib
from bertjax import glue, glue_batches
from bertjax.config import Config
from bertjax.errors import UserError
from bertjax.loss import classification_sums
from bertjax.metrics import Monitor
from bertjax.model import Bert
from bertjax.optim import make_optimizer, schedule
from bertjax.precision import Precision, all_finite
from bertjax.pretrain import write_atomic
from bertjax.sharding import (
    full_copy,
    global_batch,
    initialize_distributed,
    local_rows,
    make_mesh,
    replicated,
    same_on_every_process,
    shard_params,
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
    lr: object  # step -> learning rate, for the logs


def build_steps(cfg: Config, train_enc: glue_batches.Encoded, model: Bert) -> Steps:
    per_epoch = glue_batches.num_batches(train_enc, cfg.glue.batch_size)
    total = max(1, math.ceil(cfg.glue.epochs * per_epoch))
    optim_cfg = dataclasses.replace(cfg.optim, schedule="linear", final_lr_fraction=0.0)
    optimizer = make_optimizer(optim_cfg, total, eqx.filter(model, eqx.is_array))
    precision = Precision.from_names(cfg.precision.param, cfg.precision.compute)
    dropout = cfg.model.dropout > 0 or cfg.model.attention_dropout > 0 or \
        cfg.glue.classifier_dropout > 0
    return Steps(optimizer, *make_steps(optimizer, precision, dropout), total,
                 schedule(optim_cfg, total))


def initial_model(seed: int, start: Bert | None, cfg: Config) -> Bert:
    """The encoder under a fresh head; without a checkpoint a fresh random encoder per seed,
    so that the baseline's spread covers its initialisation too."""
    key = jax.random.key(seed)
    if start is None:
        start = Bert(cfg.model, key=jax.random.fold_in(key, 1), mlm=False)
    return with_task_head(start, cfg, glue.get_task(cfg.glue.task).num_labels,
                          jax.random.fold_in(key, 0))


def run_seed(seed: int, start: Bert | None, cfg: Config, steps: Steps, train_enc, dev: dict,
             mesh, run_dir: Path, save_best, monitor: Monitor,
             offset: int) -> tuple[dict, Bert]:
    """Fine-tune one seed; returns its per-epoch and best metrics, and its best model (whole on
    this process). Rows go to the run's monitor (metrics.jsonl, wandb) at global step
    offset + step, so seeds follow each other."""
    task = glue.get_task(cfg.glue.task)
    key = jax.random.key(seed)
    state = shard_params(init_state(initial_model(seed, start, cfg), steps.optimizer,
                                    cfg.precision), mesh, cfg.mesh)
    train_step, predict, total = steps.train_step, steps.predict, steps.total
    history, best, best_model = [], {"best_score": -math.inf}, None
    step, tokens, every = 0, 0, cfg.train.log_every
    for epoch in range(math.ceil(cfg.glue.epochs)):
        losses = []
        batches = glue_batches.iter_batches(train_enc, cfg.glue.batch_size, seed=seed, epoch=epoch)
        for batch in batches:
            if step == total:
                break
            state, sums = train_step(
                (device_batch(batch, mesh), jax.random.fold_in(key, step + 1)), state)
            losses.append(sums)
            step += 1
            tokens += int(batch["attention_mask"].sum())  # real tokens, not padding
            monitor.advance()
            if step % every == 0:
                loss = mean_loss(losses[-every:])
                row = {"seed": seed, "epoch": epoch + 1, "loss": loss,
                       "lr": float(steps.lr(step)), **monitor.throughput(tokens)}
                if "loss_scale" in sums:
                    row["loss_scale"] = float(sums["loss_scale"])
                monitor.log(offset + step, row, {"seed": seed, "loss": f"{loss:.4f}"})
        loss = mean_loss(losses)
        metrics = evaluate(predict, state.model, dev, cfg, mesh)
        score = glue.main_score(task.name, next(iter(metrics.values())))
        history.append({"epoch": epoch + 1, "step": step, "train_loss": loss, "dev": metrics,
                        "score": score})
        monitor.log(offset + step, {"seed": seed, "epoch": epoch + 1, "train_loss": loss,
                                    "dev_score": score,
                                    **{f"{split}/{name}": value for split, values
                                       in metrics.items() for name, value in values.items()}})
        monitor.write(f"{task.name} seed {seed} epoch {epoch + 1}: train loss {loss:.4f}, "
                      f"dev {json.dumps(metrics)}")
        # Every process scored the same gathered logits, so all take this branch together.
        if score > best["best_score"]:
            best = {"best_score": score, "best_epoch": epoch + 1, "best_metrics": metrics}
            # On the host: the train step donates (frees) the device buffers. full_copy is a
            # collective when parameters span processes.
            best_model = jax.device_get(full_copy(state.model))
            save_best(best_model, run_dir / f"seed{seed}" / "best", best)
    return {"seed": seed, "history": history, **best}, best_model


def mean_loss(sums: list[dict]) -> float:
    """Per-example mean over batches of (loss sum, weight) pairs (padding rows weigh 0)."""
    return sum(float(s["loss"]) for s in sums) / max(sum(float(s["weight"]) for s in sums), 1.0)


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
    if main:
        write_atomic(run_dir / "config.yaml", config_lib.to_yaml(cfg))
        print(f"{task.name}: {len(train)} training examples ({train_enc.truncated} truncated to "
              f"{cfg.glue.buckets[-1]} tokens), dev {[len(e) for e, _ in dev.values()]}, "
              f"seeds {cfg.glue.seeds}, {jax.process_count()} process(es)")
    mesh = make_mesh()

    def save_best(best_model, out_dir, best):
        if main:
            save_bundle(best_model, cfg, tok, out_dir, summary=best)

    steps = build_steps(cfg, train_enc, initial_model(cfg.glue.seeds[0], model, cfg))
    if main:  # a fine-tune starts over, never resumes
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    monitor = Monitor(run_dir, steps.total * len(cfg.glue.seeds), 0, cfg.wandb,
                      config_lib.to_dict(cfg), None, cfg.precision.compute)
    per_seed, best_model = [], None
    try:
        for i, seed in enumerate(cfg.glue.seeds):
            result, seed_best = run_seed(seed, model, cfg, steps, train_enc, dev, mesh, run_dir,
                                         save_best, monitor, i * steps.total)
            if not per_seed or result["best_score"] > max(r["best_score"] for r in per_seed):
                best_model = seed_best  # the best seed's best epoch, for the submission files
            per_seed.append(result)
    finally:
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
