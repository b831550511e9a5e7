"""GLUE evaluation on the mesh: logits in example order, dev metrics, the summary across seeds,
and the leaderboard's submission files from the best model.

Every process builds every batch and feeds its own rows; logits come back replicated, so every
process scores the same predictions and process 0 writes the files.
"""

import warnings
from pathlib import Path

import jax
import numpy as np
from tokenizers import Tokenizer

from bertjax import glue, glue_batches, glue_metrics, glue_tasks
from bertjax.config import Config
from bertjax.model import Bert
from bertjax.sharding import global_batch, local_rows, replicated, shard_params


def device_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """A batch every process built whole -> global arrays, each process feeding its rows."""
    return global_batch(local_rows({k: v for k, v in batch.items() if k != "example_index"}),
                        mesh)


def predict_split(predict, model: Bert, enc: glue_batches.Encoded, batch_size: int,
                  mesh) -> np.ndarray:
    """Logits [n, labels] in example order."""
    indices, outputs = [], []
    for batch in glue_batches.iter_batches(enc, batch_size):
        indices.append(batch["example_index"])
        # Read back after the loop: the host builds the next batch while the device runs this.
        outputs.append(predict(model, device_batch(batch, mesh), replicated(mesh)))
    return glue_batches.in_example_order(len(enc), indices, [np.asarray(o) for o in outputs])


def evaluate(predict, model: Bert, dev: dict, cfg: Config, mesh) -> dict[str, dict]:
    """{dev split: {metric: value}} for every (examples, encoded) dev split."""
    out = {}
    for split, (examples, enc) in dev.items():
        logits = predict_split(predict, model, enc, cfg.glue.batch_size, mesh)
        out[split] = glue_metrics.compute_metrics(cfg.glue.task, logits, examples.labels)
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


def best_seed(per_seed: list[dict]) -> dict:
    """The seed whose best model writes the submission files: the highest best_score, the first
    listed of equals."""
    return max(per_seed, key=lambda r: r["best_score"])


def best_model_dir(run_dir: Path, per_seed: list[dict]) -> Path:
    """That seed's best model (results.json's `best_model`, a sweep's best model per rate)."""
    return run_dir / f"seed{best_seed(per_seed)['seed']}" / "best"


def write_submissions(cfg: Config, tok: Tokenizer, run_dir: Path, best: Bert, mesh,
                      predict) -> list[str]:
    """GLUE test-set files from the best seed's best model, for the test splits that exist
    (process 0 writes them and returns their paths)."""
    written = []
    pairs = [(t, s) for t, s in glue_tasks.submissions(cfg.glue.task)
             if glue.split_available(cfg.glue, s, task=t)]
    if jax.process_index() == 0:
        warn_stale_submissions(cfg, run_dir, pairs)
    if not pairs:
        return written
    model = shard_params(best, mesh, cfg.mesh)
    for task, split in pairs:
        examples = glue.load_split(cfg.glue, split, task=task)
        enc = glue_batches.encode(tok, examples, cfg.glue.buckets)
        logits = predict_split(predict, model, enc, cfg.glue.batch_size, mesh)
        if jax.process_index() != 0:  # the others predicted along (rows span processes)
            continue
        if not np.isfinite(logits).all():
            warn_not_finite(run_dir, task, split)
            continue
        path = glue_metrics.write_submission(task, split, examples.index, logits,
                                             run_dir / "submission")
        warn_partial_submission(path, task, split, len(examples))
        written.append(str(path))
    return written


def warn_partial_submission(path: Path, task: str, split: str, rows: int,
                            data_key: str = "glue.data_dir") -> None:
    """GLUE's leaderboard scores a submission only with one prediction for each of its test
    examples. A file from a cut-down test TSV is still written (its predictions are the model's),
    with this warning that it cannot be submitted; `data_key`: how the command names its data."""
    expected = glue_tasks.get_task(task).split(split).rows
    if expected is not None and rows != expected:
        warnings.warn(f"{path} holds {rows:,} predictions, but GLUE's {task} {split} split has "
                      f"{expected:,} examples: the leaderboard will refuse it; to submit, give "
                      f"{data_key} the whole test file and run again", stacklevel=2)


def warn_not_finite(run_dir: Path, task: str, split: str) -> None:
    """A diverged model predicts NaN: as a submission that is rows of `nan` (STS-B), which the
    leaderboard rejects, or class 0 for every row (argmax of NaN); neither is written."""
    path = run_dir / "submission" / glue_tasks.get_task(task).split(split).submission
    kept = f"; {path} is an earlier run's, kept" if path.is_file() else ""
    warnings.warn(f"{task} {split}: the best model's predictions are not finite (NaN or inf: "
                  f"training diverged), so no submission file was written{kept}; lower "
                  "optim.lr (or, under float16, use bfloat16) and train again", stacklevel=2)


def warn_stale_submissions(cfg: Config, run_dir: Path, pairs: list[tuple[str, str]]) -> None:
    """Warn of each submission file this run does not rewrite (its test split is missing): an
    earlier run's predictions, maybe of another model. Kept, not deleted: without the test file
    this run cannot write it again, and the model it came from may be gone. Where this run
    writes some of the task's files, each one it cannot write is named too (MNLI's AX.tsv
    without diagnostic/diagnostic.tsv went unsaid, and the leaderboard wants all of them)."""
    ours = {glue_tasks.get_task(t).split(s).submission for t, s in
            glue_tasks.submissions(cfg.glue.task)}
    others = sorted(p.name for p in (run_dir / "submission").glob("*.tsv") if p.name not in ours)
    if others:  # a run of another task in this directory (it started over)
        warnings.warn(f"{run_dir / 'submission'} holds {', '.join(others)} of an earlier run "
                      f"(not {cfg.glue.task}): not this run's predictions; delete them before "
                      "submitting the folder", stacklevel=2)
    for task, split in glue_tasks.submissions(cfg.glue.task):
        t = glue_tasks.get_task(task)
        path = run_dir / "submission" / t.split(split).submission
        if (task, split) in pairs:
            continue
        if path.is_file():
            warnings.warn(f"{path} was not written by this run (no {task} {split} split in "
                          f"{cfg.glue.data_dir}): it holds an earlier run's predictions, maybe "
                          "of another model; delete it, or give the test file and run again",
                          stacklevel=2)
        elif pairs:
            warnings.warn(f"{path} was not written: {cfg.glue.data_dir} has no {t.dir}/"
                          f"{t.split(split).file} ({task} {split}), which GLUE's "
                          f"{cfg.glue.task} submission includes; add it and run again",
                          stacklevel=2)
