"""One GLUE leaderboard submission from the fine-tuning runs of its tasks: the zip that
gluebenchmark.com takes, its eleven TSV files at the top (CoLA.tsv ... WNLI.tsv, MNLI-m.tsv,
MNLI-mm.tsv and AX.tsv, which the MNLI run writes).

    python -m bertjax.glue_submission runs/cola runs/sst2 ... runs/mnli --out glue.zip

Each RUN is a finished GLUE run (the files its results.json lists: a file in its submission/
that this run did not write is an earlier run's) or a learning-rate sweep (its best rate's run,
as sweep.json names it). Each file is checked as the leaderboard would check it: its header, one
prediction for every test row (a run on a cut test file is refused), the task's labels or STS-B
scores, no index twice. The leaderboard scores only complete submissions, so a missing task is
refused too, unless --allow-missing. The zip is written whole or not at all, with fixed
timestamps: the same files give the same bytes.
"""

import errno
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bertjax import glue_tasks
from bertjax.errors import UserError, cli
from bertjax.files import (
    ArgParser,
    check_file,
    is_disk_full,
    path_argument,
    rate_runs,
    read_utf8,
    write_atomic,
)
from bertjax.runlock import runs_in
from bertjax.sweep_state import finished, read_sweep

USAGE = ("usage: python -m bertjax.glue_submission RUN [RUN ...] --out FILE.zip "
         "[--allow-missing] [--force]")
HEADER = "index\tprediction"
SCORE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_MISSING = object()
AX_SOURCE = "the MNLI run writes it, given GLUE's diagnostic/diagnostic.tsv"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no build time in the bytes
# Every file of a complete submission, in GLUE's order: (task, split) by file name.
FILES = {glue_tasks.get_task(task).split(split).submission: (task, split)
         for name in glue_tasks.TASKS if name != "ax"
         for task, split in glue_tasks.submissions(name)}  # MNLI's: MNLI-m, MNLI-mm and AX


@dataclass(frozen=True)
class Source:
    """Where one task's files come from: the run that wrote them and its dev score."""

    run_dir: Path
    files: list[Path]
    score: str  # the dev main score as the run's results.json summarises it


def read_source(path: Path) -> Source:
    """The finished GLUE run at `path`, or the best run of the sweep at `path`; a UserError
    naming what to do for anything else (an unfinished run or sweep, a pretraining run)."""
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; pass GLUE runs' train.run_dir")
    sweep = read_sweep(path)
    if sweep is not None:
        if sweep.problem:  # an interrupted sweep, or one whose runs changed since
            raise UserError(f"{path} is a learning-rate sweep, but {sweep.problem}")
        path = sweep.best_run  # found in this folder: a moved sweep's own
    elif rate_runs(path):
        raise UserError(f"{path} is a learning-rate sweep with no finished rate yet (no "
                        "sweep.json); rerun its command to finish it")
    kinds = runs_in(path)
    if "pretrain" in kinds and "glue" not in kinds:  # its results.json is the pretraining's
        raise UserError(f"{path} is a pretraining run ({kinds['pretrain']}); pass GLUE "
                        "fine-tuning runs, e.g. python -m bertjax.train configs/rte.yaml "
                        f"init.checkpoint={path}")
    results_file = path / "results.json"
    if not results_file.is_file():
        what = "a GLUE run with no finished seed yet" if any(path.glob("seed*")) else \
            "not a finished GLUE fine-tuning run"
        raise UserError(f"{path} is {what} (no results.json); pass the train.run_dir of a "
                        "finished one, or rerun its command to finish it")
    if not finished(path):  # a rerun, interrupted: results and files are an earlier run's
        raise UserError(f"{path} has not finished: its config.yaml is newer than its results.json "
                        "(a rerun was interrupted), so its submission files may be an earlier "
                        "run's; rerun its command to finish it")
    results = _read_json(results_file, "rerun the run's command to write it again")
    # by name, in the run's own submission/: the paths it wrote may be relative to another folder
    names = dict.fromkeys(Path(f).name for f in _field(results, results_file, "submissions",
                                                         kind=(list,), items=str))
    if not names:
        raise UserError(f"{path} wrote no submission files (its glue.data_dir had no test "
                        "split); give GLUE's test files and rerun its command")
    score = _field(results, results_file, "summary", "main_score", "median",
                   kind=(int, float, type(None)))
    return Source(path, [path / "submission" / n for n in names],
                  "n/a" if score is None else f"{score:.4f}")


def _read_json(path: Path, fix: str) -> object:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); {fix}") from None


def _field(data, path: Path, *keys: str, kind: tuple, items: type | None = None):
    """data[keys[0]][keys[1]]..., an instance of `kind` (a list: of `items`); one line naming the
    file where it is missing or of another type (an edited or foreign file)."""
    for key in keys:
        data = data.get(key, _MISSING) if isinstance(data, dict) else _MISSING
    if data is _MISSING or isinstance(data, bool) or not isinstance(data, kind) or (
            items is not None and not all(isinstance(x, items) for x in data)):
        what = "no " + ".".join(keys) if data is _MISSING else \
            f"{'.'.join(keys)} = {json.dumps(data)[:40]}, which bertjax never writes"
        raise UserError(f"{path} has {what}; it is not a file bertjax wrote: rerun the run's "
                        "command to write it again")
    return data


def check_submission_file(path: Path, task_name: str, split_name: str) -> int:
    """The number of predictions in submission file `path`, refused in one line where the
    leaderboard would refuse it. GLUE's test indices are 0 .. rows - 1."""
    task = glue_tasks.get_task(task_name)
    rows = task.split(split_name).rows
    fix = (f"rerun {'MNLI' if task_name == 'ax' else task_name}'s fine-tune with GLUE's own "
           f"{task.dir}/{task.split(split_name).file} to write it again")
    check_file(path, "submission file", f"its results.json lists it: {fix}")
    text = read_utf8(path, fix)
    if text.startswith("\ufeff"):
        raise UserError(f"{path} starts with a byte-order mark (an editor's UTF-8 BOM) before "
                        f"GLUE's header; {fix}")
    lines = text.split("\n")  # read_utf8 made every line end "\n"; not splitlines: a \x0c
    lines = lines[:-1] if lines[-1] == "" else lines  # inside a line is part of that line
    if not lines or lines[0] != HEADER:
        raise UserError(f"{path} does not start with GLUE's header {HEADER!r}; {fix}")
    seen = set()
    for number, line in enumerate(lines[1:], 2):
        index, _, value = line.partition("\t")
        number_ok = index.isascii() and index.isdigit() and (index == "0" or index[0] != "0")
        if not number_ok or int(index) >= rows or int(index) in seen or not _valid(task, value):
            what = (f"an index outside GLUE's test indices 0 to {rows - 1:,}"
                    if number_ok and int(index) >= rows else
                    "an index seen before" if number_ok and int(index) in seen else
                    "not an index and a " + ("label of " + "/".join(task.labels) if task.labels
                                             else "score in [0, 5]"))
            raise UserError(f"{path} line {number}: {line[:60]!r} is {what}; {fix}")
        seen.add(int(index))
    if len(seen) != rows:
        raise UserError(f"{path} has {len(seen):,} predictions but GLUE's {task_name} "
                        f"{split_name} split has {rows:,} rows, and the leaderboard refuses a "
                        f"file without all of them; {fix}")
    return rows


def _valid(task: glue_tasks.Task, value: str) -> bool:
    """A label of the task, or an STS-B score written as a plain decimal number in [0, 5]
    (float() would also take ' 3', '３' and '0_1')."""
    if task.labels:
        return value in task.labels
    return bool(SCORE.fullmatch(value)) and 0.0 <= float(value) <= glue_tasks.STSB_SCALE


def gather(run_dirs: list[Path], allow_missing: bool) -> tuple[dict[str, Path], list[str]]:
    """{file name in the zip: the file} from the runs, and a table of what came from where."""
    chosen: dict[str, tuple[Path, Source]] = {}
    table, seen = [], set()
    for source in map(read_source, run_dirs):
        if source.run_dir.resolve() in seen:  # named twice (a sweep and its best rate's run)
            continue
        seen.add(source.run_dir.resolve())
        for file in source.files:
            if file.name not in FILES:
                raise UserError(f"{file}: {file.name} is no file of GLUE's submission; delete "
                                "it, or rerun the run's command")
            if file.name in chosen:
                raise UserError(f"{file.name} comes from two runs, {chosen[file.name][1].run_dir}"
                                f" and {source.run_dir}; pass one of them")
            rows = check_submission_file(file, *FILES[file.name])
            chosen[file.name] = (file, source)
            table.append(f"  {file.name:<12} {rows:>8,} rows  dev {source.score:>6}  "
                         f"{source.run_dir}")
    missing = [f"{name} ({AX_SOURCE if task == 'ax' else task})"
               for name, (task, _) in FILES.items() if name not in chosen]
    if missing and not allow_missing:
        raise UserError(f"the leaderboard scores only complete submissions, and these runs have "
                        f"no {', '.join(missing)}; fine-tune those tasks too and pass their "
                        "runs, or --allow-missing to write the zip without them")
    return {name: file for name, (file, _) in chosen.items()}, table


def write_zip(files: dict[str, Path], out: Path) -> None:
    """The files at the zip's top level, in GLUE's order, written whole (atomically)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in (n for n in FILES if n in files):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name].read_bytes())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, buffer.getvalue())
    except OSError as e:  # (a full disk or a refused permission: errors.cli says those)
        if is_disk_full(e) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise UserError(f"cannot write --out {out} ({e.strerror or e}); give a path on a disk "
                        "you can write") from None


def main(argv: list[str]) -> None:
    parser = ArgParser(usage_line=USAGE, prog="python -m bertjax.glue_submission",
                       doc=__doc__)
    parser.add_argument("runs", metavar="RUN", nargs="+", type=path_argument,
                        help="a finished GLUE run's or learning-rate sweep's train.run_dir")
    parser.add_argument("--out", required=True, type=path_argument, help="the zip to write")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write the zip without the tasks no run gives")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--out {out} cannot be written: {above} is a file, not a directory; "
                        "give a zip's path in a directory")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name, e.g. {out}/glue.zip")
    if out.suffix != ".zip":  # (--force on a run's own file would replace it)
        like = out.parent / "glue.zip" if out.name.startswith(".") else out.with_suffix(".zip")
        raise UserError(f"--out {out} is not a .zip file name; the leaderboard takes a zip: "
                        f"e.g. --out {like}")
    if out.exists() and not args.force:
        raise UserError(f"--out {out} exists; add --force to replace it, or choose another name")
    files, table = gather([Path(r) for r in args.runs], args.allow_missing)
    write_zip(files, out)
    print("\n".join([f"{out}: {len(files)} of GLUE's {len(FILES)} submission files "
                     "(dev: the run's main score, median over seeds)", *table]))


if __name__ == "__main__":
    cli(main)
