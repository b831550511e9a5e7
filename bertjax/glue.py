"""GLUE readers: one split of a task from a directory of GLUE TSVs or from the HF hub, as
`Examples`. The tasks themselves are in glue_tasks.py, the official metrics and submission files
in glue_metrics.py, batching in glue_batches.py.
"""

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bertjax.config import GlueConfig
from bertjax.errors import UserError
from bertjax.files import check_file, check_not_lfs_pointer, not_a_dir, utf8_error
from bertjax.glue_tasks import STSB_SCALE, Examples, Task, get_task, submissions
from bertjax.sources import quiet_hub

HUB_DATASET = "nyu-mll/glue"


# ---------------------------------------------------------------- readers: GLUE TSV directory

def _read_tsv(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of every non-empty line; text that is not UTF-8 is an
    error naming the file."""
    # GLUE's TSVs are unquoted: a '"' inside a sentence is a literal character (MNLI, QQP), so
    # nothing is unquoted here. A line ends at '\n' (a CRLF line loses its '\r' too), so a bare
    # '\r' inside a sentence stays text, on the line an editor shows, instead of ending the row
    # as csv and universal newlines do. utf-8-sig drops the byte-order mark MRPC's header carries.
    rows = []
    try:
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            for line_number, line in enumerate(f, 1):
                line = line.removesuffix("\n").removesuffix("\r")
                if line:
                    rows.append((line_number, line.split("\t")))
    except UnicodeDecodeError:
        raise utf8_error(path, "GLUE files are UTF-8: convert it (e.g. iconv -t utf-8) or "
                               "download it again") from None
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


class Naming(NamedTuple):
    """How the readers' messages name the data settings: the fine-tune's config keys
    (CONFIG_KEYS), or a command's own options (glue_score's --data-dir, --dev-files)."""

    data_dir: str  # followed by a value: "glue.data_dir=" | "--data-dir "
    set_data_dir: str  # the fix: "set glue.data_dir to" | "give --data-dir"
    or_hub: str  # the other fix: "or to null to use the hub"
    train_file: str  # "glue.train_file=NAME"
    dev_files: str  # the key alone, "glue.dev_files"; then its value: "=[NAME, ...]"
    dev_files_value: str


CONFIG_KEYS = Naming("glue.data_dir=", "set glue.data_dir to", "or to null to use the hub",
                     "glue.train_file=NAME", "glue.dev_files", "=[NAME, ...]")


def _missing_file_fix(t: Task, split: str, path: Path, naming: Naming) -> str:
    """How to read what glue.data_dir holds: its parent, when it is the task's own folder; the
    files a partial copy has (MNLI's matched dev set without the mismatched one, say)."""
    fix = (f"{naming.set_data_dir} a directory of GLUE TSVs ({t.dir}/{t.split(split).file}, "
           f"...) {naming.or_hub}")
    if not path.parent.is_dir():
        if (path.parent.parent / path.name).is_file():
            return (f"{naming.data_dir}{path.parent.parent} is the {t.dir} folder itself: set "
                    f"it to the folder holding {t.dir}/")
        return fix
    has = sorted(p.name for p in path.parent.glob("*.tsv"))
    has = f" ({path.parent} holds {', '.join(has[:6])}{', ...' * (len(has) > 6)})" if has else ""
    if split == "train":
        return f"{fix}; or name the training file it has: {naming.train_file}{has}"
    if split in t.dev_splits:
        return (f"{fix}; or name the dev files it has: {naming.dev_files}"
                f"{naming.dev_files_value} (read as {', '.join(t.dev_splits)}, in order; fewer "
                f"names evaluate fewer splits){has}")
    return fix


def read_tsv(task: str, split: str, path: str | Path, naming: Naming = CONFIG_KEYS) -> Examples:
    """Read one GLUE TSV (or a file with the same header names) into `Examples`."""
    t = get_task(task)
    path = check_file(path, f"GLUE {split} file", _missing_file_fix(t, split, Path(path), naming))
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

def read_hub(task: str, split: str, cache_dir: str | None = None,
             naming: Naming = CONFIG_KEYS) -> Examples:
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
                        f"({type(e).__name__}: {first}); {naming.set_data_dir} a directory of "
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


def _named_file(cfg: GlueConfig, t: Task, split: str, naming: Naming) -> str:
    dev = t.dev_splits
    if split == "train" and cfg.train_file:
        return cfg.train_file
    if split in dev and cfg.dev_files:
        if len(cfg.dev_files) > len(dev):
            raise UserError(f"{naming.dev_files} has {len(cfg.dev_files)} names but {t.name} has "
                            f"only the dev splits {dev}; name at most {len(dev)}")
        if dev.index(split) < len(cfg.dev_files):
            return cfg.dev_files[dev.index(split)]
    return t.split(split).file


def dev_splits(cfg: GlueConfig) -> list[str]:
    """Dev splits to evaluate: the task's, or the first len(glue.dev_files) of them."""
    dev = get_task(cfg.task).dev_splits
    return dev[: len(cfg.dev_files)] if cfg.dev_files else dev


def load_split(cfg: GlueConfig, split: str, task: str | None = None,
               naming: Naming = CONFIG_KEYS) -> Examples:
    """`split` of glue.task (or of `task`, e.g. 'ax' next to MNLI) from glue.data_dir or the hub.

    glue.train_file / glue.dev_files name files inside `<data_dir>/<TaskDir>/` (absolute paths
    work too); dev_files map in order onto the task's dev splits. glue.max_train_examples cuts
    the training split.
    """
    t = get_task(task or cfg.task)
    t.split(split)
    if cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise UserError(f"{naming.data_dir}{cfg.data_dir} {not_a_dir(cfg.data_dir)}; "
                        f"{naming.set_data_dir} a directory of GLUE TSVs (holding "
                        f"{t.dir}/{t.split(split).file}, ...) {naming.or_hub}")
    if cfg.data_dir is None:
        if cfg.train_file or cfg.dev_files:
            raise UserError("glue.train_file / glue.dev_files name files inside glue.data_dir; "
                            "set glue.data_dir too")
        ex = read_hub(t.name, split, naming=naming)
    else:
        path = Path(cfg.data_dir) / t.dir / _named_file(cfg, t, split, naming)
        ex = read_tsv(t.name, split, path, naming)
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
    """Whether load_split can be asked for `split` (the hub has every split; a dir needs a file).
    Anything at the file's name counts, so that a directory or a broken link there is refused
    by load_split rather than skipped as absent."""
    t = get_task(task or cfg.task)
    if cfg.data_dir is None:
        return True
    return os.path.lexists(Path(cfg.data_dir) / t.dir / _named_file(cfg, t, split, CONFIG_KEYS))
