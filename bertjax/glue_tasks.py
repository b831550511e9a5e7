"""GLUE's tasks as data: each task's files and hub names, columns, labels, metrics and splits
(with the size of each leaderboard test split), and `Examples`, one split read into columns.
The readers are in glue.py.

Label indices follow GLUE's own label lists (MNLI: contradiction, entailment, neutral); hub
labels are mapped through their names, so both sources give the same index for the same string.
"""

from dataclasses import dataclass, replace

import numpy as np
from jaxtyping import Float, Int

from bertjax.errors import UserError

STSB_SCALE = 5.0  # similarity scores run from 0 to 5


@dataclass(frozen=True)
class Split:
    name: str  # ours: train, dev, dev_matched, test, ...
    file: str  # GLUE TSV name inside the task directory
    hub: str  # split name in nyu-mll/glue
    submission: str | None = None  # GLUE leaderboard file written for this (test) split
    rows: int | None = None  # its size in GLUE: the leaderboard refuses a file with fewer rows


@dataclass(frozen=True)
class Task:
    name: str
    dir: str  # directory in GLUE's download layout
    columns: tuple[str, str | None]  # text column names in the TSV header
    hub_columns: tuple[str, str | None]
    label_column: str
    labels: tuple[str, ...]  # GLUE's label strings in GLUE's order; () = regression
    metrics: tuple[str, ...]  # the main score is their mean (GLUE convention)
    splits: tuple[Split, ...]
    hub_labels: tuple[str, ...] = ()  # hub ClassLabel names aligned with `labels`; () = same
    index_column: str = "index"
    headerless: tuple[int, int] | None = None  # (text, label) positions when there is no header
    skip_malformed: bool = False  # QQP: skip malformed rows and count them, as GLUE-era loaders did

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1  # STS-B: one regression output

    def split(self, name: str) -> Split:
        for s in self.splits:
            if s.name == name:
                return s
        raise UserError(f"{self.name} has no split {name!r}; use one of "
                        f"{[s.name for s in self.splits]}")

    @property
    def dev_splits(self) -> list[str]:
        return [s.name for s in self.splits if s.name.startswith("dev")]


def _std(sub: str, test_rows: int) -> tuple[Split, ...]:
    return Split("train", "train.tsv", "train"), Split("dev", "dev.tsv", "validation"), \
        Split("test", "test.tsv", "test", sub, test_rows)


_BIN, _NLI = ("0", "1"), ("entailment", "not_entailment")
_MNLI_LABELS = ("contradiction", "entailment", "neutral")
_MNLI_SPLITS = (Split("train", "train.tsv", "train"),
                Split("dev_matched", "dev_matched.tsv", "validation_matched"),
                Split("dev_mismatched", "dev_mismatched.tsv", "validation_mismatched"),
                Split("test_matched", "test_matched.tsv", "test_matched", "MNLI-m.tsv", 9796),
                Split("test_mismatched", "test_mismatched.tsv", "test_mismatched", "MNLI-mm.tsv",
                      9847))
_PAIR = ("sentence1", "sentence2")
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("cola", "CoLA", ("sentence", None), ("sentence", None), "label", _BIN, ("mcc",),
         _std("CoLA.tsv", 1063), ("unacceptable", "acceptable"), headerless=(3, 1)),
    Task("sst2", "SST-2", ("sentence", None), ("sentence", None), "label", _BIN, ("accuracy",),
         _std("SST-2.tsv", 1821), ("negative", "positive")),
    Task("mrpc", "MRPC", ("#1 String", "#2 String"), _PAIR, "Quality", _BIN,
         ("f1", "accuracy"), _std("MRPC.tsv", 1725), ("not_equivalent", "equivalent")),
    Task("stsb", "STS-B", _PAIR, _PAIR, "score", (), ("pearson", "spearman"),
         _std("STS-B.tsv", 1379)),
    Task("qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
         _BIN, ("f1", "accuracy"), _std("QQP.tsv", 390965), ("not_duplicate", "duplicate"),
         index_column="id", skip_malformed=True),
    Task("mnli", "MNLI", _PAIR, ("premise", "hypothesis"), "gold_label", _MNLI_LABELS,
         ("accuracy",), _MNLI_SPLITS),
    Task("qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI,
         ("accuracy",), _std("QNLI.tsv", 5463)),
    Task("rte", "RTE", _PAIR, _PAIR, "label", _NLI, ("accuracy",), _std("RTE.tsv", 3000)),
    Task("wnli", "WNLI", _PAIR, _PAIR, "label", _BIN, ("accuracy",), _std("WNLI.tsv", 146),
         ("not_entailment", "entailment")),
    # AX, GLUE's diagnostic set: test only, predicted with the MNLI model (GLUE scores it by R3,
    # the K-class Matthews correlation, against labels it keeps private).
    Task("ax", "diagnostic", _PAIR, ("premise", "hypothesis"), "label", _MNLI_LABELS, ("mcc",),
         (Split("test", "diagnostic.tsv", "test", "AX.tsv", 1104),)),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"glue.task={name!r} is unknown; use one of {', '.join(TASKS)}")
    return TASKS[name]


def submissions(task: str) -> list[tuple[str, str]]:
    """(task, split) pairs whose predictions make up the GLUE submission of `task`."""
    own = [(task, s.name) for s in get_task(task).splits if s.submission]
    return own + [("ax", "test")] if task == "mnli" else own


@dataclass(frozen=True)
class Examples:
    """One split, columnar. `labels` is None for unlabeled test splits."""

    task: str
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: Int[np.ndarray, " n"] | Float[np.ndarray, " n"] | None  # int32 index / f32 score
    index: Int[np.ndarray, " n"]  # GLUE's `index`/`id` column (row number where there is none)
    source: str  # file or hub id, for messages
    skipped: int = 0  # malformed rows left out (QQP)

    def __len__(self) -> int:
        return len(self.text_a)

    def head(self, n: int) -> "Examples":
        cut = lambda x: None if x is None else x[:n]  # noqa: E731
        return replace(self, text_a=self.text_a[:n], text_b=cut(self.text_b),
                       labels=cut(self.labels), index=self.index[:n])
