"""GLUE's official metrics in numpy (MCC, accuracy, F1, Pearson, Spearman), the main score that
picks the best checkpoint, and the leaderboard's submission files.
"""

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from bertjax.errors import UserError
from bertjax.files import write_atomic
from bertjax.glue_tasks import Task, get_task


def _classes(t: Task, predictions: ArrayLike) -> np.ndarray:
    """Class indices from indices [n] or logits [n, classes]; scores [n] or [n, 1] for STS-B."""
    p = np.asarray(predictions)
    if not t.labels:
        return p.reshape(len(p)).astype(np.float64)
    return p.argmax(-1) if p.ndim == 2 else p.astype(np.int64)


def matthews(pred: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation, K-class form (Gorodkin 2004; = binary MCC for two classes).

    Returns 0 when undefined (a constant prediction or label), as sklearn does.
    """
    k = int(max(pred.max(), labels.max())) + 1
    conf = np.zeros((k, k), np.float64)
    np.add.at(conf, (labels, pred), 1.0)
    t, p, s, c = conf.sum(1), conf.sum(0), conf.sum(), np.trace(conf)
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom > 0 else 0.0


def f1_positive(pred: np.ndarray, labels: np.ndarray) -> float:
    """F1 of class 1 (MRPC, QQP); 0 when there are no positives at all."""
    tp = float(np.sum((pred == 1) & (labels == 1)))
    wrong = float(np.sum(pred != labels))  # every error is a false positive or false negative
    return 2 * tp / (2 * tp + wrong) if tp + wrong > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; 0 when either side is constant (r is undefined there)."""
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom > 0 else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing the mean of their ranks (what Spearman's rho uses)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)]  # exclusive
    ranks = np.empty(len(x), np.float64)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho; 0 where a NaN makes it undefined, as pearson's r (NaN has no rank: argsort
    would put NaNs last and score a diverged model's predictions as if they were ordered)."""
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return 0.0
    return pearson(average_ranks(x), average_ranks(y))


def compute_metrics(task: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """GLUE metrics of `task` (names: mcc, accuracy, f1, pearson, spearman).

    predictions: class indices [n] or logits [n, classes]; STS-B scores [n] or [n, 1].
    MNLI-m / MNLI-mm are this on dev_matched / dev_mismatched.
    """
    t = get_task(task)
    pred = _classes(t, predictions)
    gold = np.asarray(labels).astype(pred.dtype)
    if len(pred) != len(gold) or len(gold) == 0:
        raise ValueError(f"{len(pred)} predictions for {len(gold)} labels")
    if t.labels and not np.isin(gold, np.arange(len(t.labels))).all():  # e.g. a test split's -1
        raise ValueError(f"{task} labels must be class indices 0..{len(t.labels) - 1}; got "
                         f"{sorted(set(gold.tolist()) - set(range(len(t.labels))))[:5]}")
    fns = {"mcc": matthews, "accuracy": lambda p, g: float(np.mean(p == g)),
           "f1": f1_positive, "pearson": pearson, "spearman": spearman}
    return {name: fns[name](pred, gold) for name in t.metrics}


def main_score(task: str, metrics: dict[str, float]) -> float:
    """The number that picks the best checkpoint: the mean of the task's GLUE metrics
    (CoLA mcc; MRPC/QQP (f1 + acc)/2; STS-B (pearson + spearman)/2; else accuracy)."""
    return float(np.mean([metrics[m] for m in get_task(task).metrics]))


# ---------------------------------------------------------------- submission files

def write_submission(task: str, split: str, index: ArrayLike, predictions: ArrayLike,
                     out_dir: str | Path) -> Path:
    """Write GLUE's `<Name>.tsv` (header `index\\tprediction`) for a test split; returns its path.

    Labels are GLUE's strings (0/1 for CoLA, SST-2, MRPC, QQP, WNLI); STS-B scores are clipped
    to [0, 5]. Written to a temporary name and renamed, so a file present is a complete one.
    """
    t = get_task(task)
    name = t.split(split).submission
    if name is None:
        raise UserError(f"{task} {split} is not a GLUE test split; submissions are for "
                        f"{[s.name for s in t.splits if s.submission]}")
    pred, idx = _classes(t, predictions), np.asarray(index).astype(np.int64)
    if len(pred) != len(idx):
        raise ValueError(f"{len(pred)} predictions for {len(idx)} indices")
    if t.labels:
        values = [t.labels[int(p)] for p in pred]
    else:
        values = [f"{v:.3f}" for v in np.clip(pred, 0.0, 5.0)]
    out = Path(out_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(zip(idx.tolist(), values, strict=True))
    write_atomic(out, "index\tprediction\n" + "".join(f"{i}\t{v}\n" for i, v in rows))
    return out
