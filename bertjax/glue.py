"""GLUE tasks as data: task specs and label maps, and readers (a GLUE TSV directory or the HF
hub). The official metrics and submission files are in glue_metrics.py, batching in
glue_batches.py.

Label indices follow GLUE's own label lists (MNLI: contradiction, entailment, neutral); hub
labels are mapped through their names, so both sources give the same index for the same string.
"""

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int

from bertjax.config import GlueConfig
from bertjax.errors import UserError
from bertjax.files import check_file, check_not_lfs_pointer, from_cwd, utf8_error
from bertjax.sources import quiet_hub

HUB_DATASET = "nyu-mll/glue"
STSB_SCALE = 5.0  # similarity scores run from 0 to 5


@dataclass(frozen=True)
class Split:
    name: str  # ours: train, dev, dev_matched, test, ...
    file: str  # GLUE TSV name inside the task directory
    hub: str  # split name in nyu-mll/glue
    submission: str | None = None  # GLUE leaderboard file written for this (test) split


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


def _std(sub: str) -> tuple[Split, ...]:
    return Split("train", "train.tsv", "train"), Split("dev", "dev.tsv", "validation"), \
        Split("test", "test.tsv", "test", sub)


_BIN, _NLI = ("0", "1"), ("entailment", "not_entailment")
_MNLI_LABELS = ("contradiction", "entailment", "neutral")
_MNLI_SPLITS = (Split("train", "train.tsv", "train"),
                Split("dev_matched", "dev_matched.tsv", "validation_matched"),
                Split("dev_mismatched", "dev_mismatched.tsv", "validation_mismatched"),
                Split("test_matched", "test_matched.tsv", "test_matched", "MNLI-m.tsv"),
                Split("test_mismatched", "test_mismatched.tsv", "test_mismatched", "MNLI-mm.tsv"))
_PAIR = ("sentence1", "sentence2")
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("cola", "CoLA", ("sentence", None), ("sentence", None), "label", _BIN, ("mcc",),
         _std("CoLA.tsv"), ("unacceptable", "acceptable"), headerless=(3, 1)),
    Task("sst2", "SST-2", ("sentence", None), ("sentence", None), "label", _BIN, ("accuracy",),
         _std("SST-2.tsv"), ("negative", "positive")),
    Task("mrpc", "MRPC", ("#1 String", "#2 String"), _PAIR, "Quality", _BIN,
         ("f1", "accuracy"), _std("MRPC.tsv"), ("not_equivalent", "equivalent")),
    Task("stsb", "STS-B", _PAIR, _PAIR, "score", (), ("pearson", "spearman"), _std("STS-B.tsv")),
    Task("qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
         _BIN, ("f1", "accuracy"), _std("QQP.tsv"), ("not_duplicate", "duplicate"),
         index_column="id", skip_malformed=True),
    Task("mnli", "MNLI", _PAIR, ("premise", "hypothesis"), "gold_label", _MNLI_LABELS,
         ("accuracy",), _MNLI_SPLITS),
    Task("qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI,
         ("accuracy",), _std("QNLI.tsv")),
    Task("rte", "RTE", _PAIR, _PAIR, "label", _NLI, ("accuracy",), _std("RTE.tsv")),
    Task("wnli", "WNLI", _PAIR, _PAIR, "label", _BIN, ("accuracy",), _std("WNLI.tsv"),
         ("not_entailment", "entailment")),
    # AX, GLUE's diagnostic set: test only, predicted with the MNLI model (GLUE scores it by R3,
    # the K-class Matthews correlation, against labels it keeps private).
    Task("ax", "diagnostic", _PAIR, ("premise", "hypothesis"), "label", _MNLI_LABELS, ("mcc",),
         (Split("test", "diagnostic.tsv", "test", "AX.tsv"),)),
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


# ---------------------------------------------------------------- readers: GLUE TSV directory

def _read_tsv(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty line; text that is not UTF-8 or that csv cannot
    split is an error naming the file and line."""
    # GLUE's TSVs are unquoted: a '"' inside a sentence is a literal character (MNLI, QQP), so
    # quoting is off. utf-8-sig drops the byte-order mark MRPC's header carries.
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                if row:
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError:
        raise utf8_error(path, "GLUE files are UTF-8: convert it (e.g. iconv -t utf-8) or "
                               "download it again") from None
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num + 1}: not a TSV line ({e}); is this a "
                        "GLUE file?") from None
    return rows


def _layout(t: Task, header: list[str], path: Path) -> tuple[bool, list[int | None]]:
    """(has header, positions of text_a, text_b, label, index) for this file."""
    if t.columns[0] not in header:
        if t.headerless is None:
            raise UserError(f"{path} has no column {t.columns[0]!r} in its header {header}; "
                            f"is it the {t.name} file?")
        return False, [t.headerless[0], None, t.headerless[1], None]
    if t.columns[1] and t.columns[1] not in header:
        raise UserError(f"{path} has no column {t.columns[1]!r} in its header {header}; "
                        f"{t.name} needs a sentence pair")
    find = lambda name: header.index(name) if name in header else None  # noqa: E731
    return True, [find(t.columns[0]), find(t.columns[1]) if t.columns[1] else None,
                  find(t.label_column), find(t.index_column)]


def _parse_label(t: Task, value: str, where: str) -> int | float:
    if not t.labels:
        return _parse_score(t, value, where)
    try:
        return t.labels.index(value)
    except ValueError:
        raise UserError(f"{where}: label {value!r} is not {list(t.labels)}; is this the "
                        f"{t.name} file?") from None


def _parse_score(t: Task, value: str, where: str) -> float:
    """A regression target on GLUE's STS-B scale, 0 to 5: a nan, inf or out-of-scale score
    would train on a loss of nan, inf or hundreds without a word."""
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= STSB_SCALE:  # False for nan too
        raise UserError(f"{where}: score {value!r} is not a number from 0 to {STSB_SCALE:g} "
                        f"(the {t.dir} scale); correct that row or remove it")
    return score


def _parse_index(value: str, where: str) -> int:
    try:
        index = int(value)
    except ValueError:
        raise UserError(f"{where}: index {value!r} is not a whole number; is the row missing a "
                        "field, or is this another task's file?") from None
    if not -2**63 <= index < 2**63:  # the indices are an int64 array (numpy's OverflowError)
        raise UserError(f"{where}: index {value} does not fit 64 bits; GLUE numbers its rows "
                        "from 0: correct that row's index")
    return index


def check_new_index(index: int, line: int, first_line: dict[int, int], where: str) -> None:
    """A test row's index is its id in the submission file: a repeat would hand the leaderboard
    two predictions for one example."""
    if index in first_line:
        raise UserError(f"{where}: index {index} repeats line {first_line[index]}'s; each test "
                        "example has its own index: remove the repeated row (or renumber it)")
    first_line[index] = line


def _row_problem(row: list[str], need: int, width: int | None, what: str) -> str | None:
    """What is wrong with a row that has fewer fields than the columns read or more than its
    file's header names (a tab inside a sentence would shift the label and index), or None."""
    if len(row) < need:
        return f"has {len(row)} tab-separated fields, expected at least {need}; is this {what}?"
    if width is not None and len(row) > width:
        return (f"has {len(row)} tab-separated fields but the header names {width} columns; "
                "a tab inside a text field splits it: replace that tab by a space")
    return None


def _missing_file_fix(t: Task, split: str, path: Path) -> str:
    """How to read what glue.data_dir holds: its parent, when it is the task's own folder; the
    files a partial copy has (MNLI's matched dev set without the mismatched one, say)."""
    fix = (f"set glue.data_dir to a directory of GLUE TSVs ({t.dir}/{t.split(split).file}, ...) "
           "or to null to use the hub")
    if not path.parent.is_dir():
        if (path.parent.parent / path.name).is_file():
            return (f"glue.data_dir={path.parent.parent} is the {t.dir} folder itself: set it to "
                    f"the folder holding {t.dir}/")
        return fix
    has = sorted(p.name for p in path.parent.glob("*.tsv"))
    has = f" ({path.parent} holds {', '.join(has[:6])}{', ...' * (len(has) > 6)})" if has else ""
    if split == "train":
        return f"{fix}; or name the training file it has: glue.train_file=NAME{has}"
    if split in t.dev_splits:
        return (f"{fix}; or name the dev files it has: glue.dev_files=[NAME, ...] (read as "
                f"{', '.join(t.dev_splits)}, in order; fewer names evaluate fewer splits){has}")
    return fix


def read_tsv(task: str, split: str, path: str | Path) -> Examples:
    """Read one GLUE TSV (or a file with the same header names) into `Examples`."""
    t = get_task(task)
    path = check_file(path, f"GLUE {split} file", _missing_file_fix(t, split, Path(path)))
    check_not_lfs_pointer(path)
    rows = _read_tsv(path)
    if not rows:
        raise UserError(f"{path} is empty; expected the {t.name} {split} TSV")
    has_header, pos = _layout(t, rows[0][1], path)
    if pos[2] is None and not split.startswith("test"):
        raise UserError(f"{path} has no {t.label_column!r} column; the {split} split needs labels")
    need = max(p for p in pos if p is not None) + 1
    width = len(rows[0][1]) if has_header else None  # a headerless file (CoLA) names no columns
    a, b, labels, index, skipped = [], [], [], [], 0
    first_line = {}  # index -> the line it first appeared on
    for n, (line, row) in enumerate(rows[1:] if has_header else rows):
        where = f"{path} line {line}"
        problem = _row_problem(row, need, width, f"the {t.name} {split} file")
        if problem and t.skip_malformed:
            skipped += 1
            continue
        if problem:
            raise UserError(f"{where} {problem}")
        a.append(row[pos[0]])
        if pos[1] is not None:
            b.append(row[pos[1]])
        if pos[2] is not None:
            labels.append(_parse_label(t, row[pos[2]], where))
        index.append(_parse_index(row[pos[3]], where) if pos[3] is not None else n)
        if split.startswith("test"):
            check_new_index(index[-1], line, first_line, where)
    if not a:
        raise UserError(f"{path} has no data rows{' besides its header' * has_header}; the "
                        f"{t.name} {split} split needs examples")
    dtype = np.float32 if not t.labels else np.int32
    return Examples(t.name, split, a, b if pos[1] is not None else None,
                    np.asarray(labels, dtype) if pos[2] is not None else None,
                    np.asarray(index, np.int64), str(path), skipped)


# ---------------------------------------------------------------- readers: Hugging Face hub

def read_hub(task: str, split: str, cache_dir: str | None = None) -> Examples:
    """One split from `nyu-mll/glue` on the hub (needs a network or a filled cache)."""
    t = get_task(task)
    s = t.split(split)
    try:
        import datasets  # heavy; only this path needs it

        with quiet_hub():
            ds = datasets.load_dataset(HUB_DATASET, t.name, split=s.hub, cache_dir=cache_dir)
    except Exception as e:  # offline, no cache, hub errors: all mean "use local files"
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"could not load {HUB_DATASET}/{t.name} split {s.hub} from the hub "
                        f"({type(e).__name__}: {first}); set glue.data_dir to a directory of "
                        "GLUE TSV files") from None
    raw = np.asarray(ds["label"])
    labels = None
    if (raw >= 0).any():  # the hub stores hidden test labels as -1
        if not t.labels:
            labels = raw.astype(np.float32)
        else:  # hub order differs (MNLI: entailment=0): go through the label names
            names = ds.features["label"].names
            ours = t.hub_labels or t.labels
            labels = np.asarray([ours.index(n) for n in names], np.int32)[raw]
    b = list(ds[t.hub_columns[1]]) if t.hub_columns[1] else None
    return Examples(t.name, split, list(ds[t.hub_columns[0]]), b, labels,
                    np.asarray(ds["idx"], np.int64), f"{HUB_DATASET}/{t.name}:{s.hub}")


def _named_file(cfg: GlueConfig, t: Task, split: str) -> str:
    dev = t.dev_splits
    if split == "train" and cfg.train_file:
        return cfg.train_file
    if split in dev and cfg.dev_files:
        if len(cfg.dev_files) > len(dev):
            raise UserError(f"glue.dev_files has {len(cfg.dev_files)} names but {t.name} has "
                            f"only the dev splits {dev}; name at most {len(dev)}")
        if dev.index(split) < len(cfg.dev_files):
            return cfg.dev_files[dev.index(split)]
    return t.split(split).file


def dev_splits(cfg: GlueConfig) -> list[str]:
    """Dev splits to evaluate: the task's, or the first len(glue.dev_files) of them."""
    dev = get_task(cfg.task).dev_splits
    return dev[: len(cfg.dev_files)] if cfg.dev_files else dev


def load_split(cfg: GlueConfig, split: str, task: str | None = None) -> Examples:
    """`split` of glue.task (or of `task`, e.g. 'ax' next to MNLI) from glue.data_dir or the hub.

    glue.train_file / glue.dev_files name files inside `<data_dir>/<TaskDir>/` (absolute paths
    work too); dev_files map in order onto the task's dev splits. glue.max_train_examples cuts
    the training split.
    """
    t = get_task(task or cfg.task)
    t.split(split)
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        state = "is a file" if Path(cfg.data_dir).exists() else \
            f"does not exist{from_cwd(cfg.data_dir)}"
        raise UserError(f"glue.data_dir={cfg.data_dir} {state}; set it to a directory of GLUE "
                        f"TSVs (holding {t.dir}/{t.split(split).file}, ...) or to null for the hub")
    if cfg.data_dir is None:
        if cfg.train_file or cfg.dev_files:
            raise UserError("glue.train_file / glue.dev_files name files inside glue.data_dir; "
                            "set glue.data_dir too")
        ex = read_hub(t.name, split)
    else:
        ex = read_tsv(t.name, split, Path(cfg.data_dir) / t.dir / _named_file(cfg, t, split))
    if split == "train" and cfg.max_train_examples is not None:
        ex = ex.head(cfg.max_train_examples)
    return ex


def check_submission_inputs(cfg: GlueConfig) -> None:
    """Read every test split the run's submission files will need, now: a malformed one then
    stops the run before training, not after it."""
    for task, split in submissions(cfg.task):
        if split_available(cfg, split, task):
            load_split(cfg, split, task)


def split_available(cfg: GlueConfig, split: str, task: str | None = None) -> bool:
    """Whether load_split can be asked for `split` (the hub has every split; a dir needs a file)."""
    t = get_task(task or cfg.task)
    if cfg.data_dir is None:
        return True
    return (Path(cfg.data_dir) / t.dir / _named_file(cfg, t, split)).is_file()
