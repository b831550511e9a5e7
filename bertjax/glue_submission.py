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

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bertjax import glue_tasks
from bertjax.errors import UserError, cli
from bertjax.files import (
    ArgParser,
    check_dir_path,
    path_argument,
    rate_runs,
    read_utf8,
    write_atomic,
)
from bertjax.runlock import runs_in

USAGE = ("usage: python -m bertjax.glue_submission RUN [RUN ...] --out FILE.zip "
         "[--allow-missing] [--force]")
HEADER = "index\tprediction"
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
    sweep = path / "sweep.json"
    if sweep.is_file():
        report = _read_json(sweep, "rerun the sweep's command to write it again")
        # (a sweep.json older than "to_run" is a finished sweep's)
        if isinstance(report, dict) and report.get("to_run"):
            raise UserError(f"{path} is a learning-rate sweep that has yet to run lr "
                            f"{', '.join(map(str, report['to_run']))}; rerun its command to "
                            "finish it")
        path = path / Path(_field(report, sweep, "best", "run_dir")).name  # moved folders too
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
    results = _read_json(results_file, "rerun the run's command to write it again")
    # by name, in the run's own submission/: the paths it wrote may be relative to another folder
    files = [path / "submission" / Path(f).name for f in _field(results, results_file,
                                                                "submissions")]
    if not files:
        raise UserError(f"{path} wrote no submission files (its glue.data_dir had no test "
                        "split); give GLUE's test files and rerun its command")
    score = _field(results, results_file, "summary", "main_score", "median")
    return Source(path, files, "n/a" if score is None else f"{score:.4f}")


def _read_json(path: Path, fix: str) -> object:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); {fix}") from None


def _field(data, path: Path, *keys: str):
    """data[keys[0]][keys[1]]...; one line naming the file where one is missing (an edited or
    foreign file)."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            raise UserError(f"{path} has no {'.'.join(keys)}; it is not a file bertjax wrote: "
                            "rerun the run's command to write it again")
        data = data[key]
    return data


def check_file(path: Path, task_name: str, split_name: str) -> int:
    """The number of predictions in submission file `path`, refused in one line where the
    leaderboard would refuse it."""
    task = glue_tasks.get_task(task_name)
    rows = task.split(split_name).rows
    fix = f"rerun {task_name}'s fine-tune with GLUE's own test file to write it again"
    if not path.is_file():
        raise UserError(f"{path} is missing (its results.json lists it); {fix}")
    lines = read_utf8(path, fix).splitlines()
    if not lines or lines[0] != HEADER:
        raise UserError(f"{path} does not start with GLUE's header {HEADER!r}; {fix}")
    seen = set()
    for number, line in enumerate(lines[1:], 2):
        index, _, value = line.partition("\t")
        if not index.isdigit() or index in seen or not _valid(task, value):
            what = "an index seen before" if index in seen else "not an index and a " + (
                "label of " + "/".join(task.labels) if task.labels else "score in [0, 5]")
            raise UserError(f"{path} line {number}: {line!r} is {what}; {fix}")
        seen.add(index)
    if len(seen) != rows:
        raise UserError(f"{path} has {len(seen):,} predictions but GLUE's {task_name} "
                        f"{split_name} split has {rows:,} rows, and the leaderboard refuses a "
                        f"file without all of them; {fix}")
    return rows


def _valid(task: glue_tasks.Task, value: str) -> bool:
    if task.labels:
        return value in task.labels
    try:
        return math.isfinite(score := float(value)) and 0.0 <= score <= glue_tasks.STSB_SCALE
    except ValueError:
        return False


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
            rows = check_file(file, *FILES[file.name])
            chosen[file.name] = (file, source)
            table.append(f"  {file.name:<12} {rows:>8,} rows  dev {source.score:>6}  "
                         f"{source.run_dir}")
    missing = [f"{name} ({task})" for name, (task, _) in FILES.items() if name not in chosen]
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
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, buffer.getvalue())


def main(argv: list[str]) -> None:
    parser = ArgParser(usage_line=USAGE, prog="python -m bertjax.glue_submission",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("runs", metavar="RUN", nargs="+", type=path_argument,
                        help="a finished GLUE run's or learning-rate sweep's train.run_dir")
    parser.add_argument("--out", required=True, type=path_argument, help="the zip to write")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write the zip without the tasks no run gives")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    check_dir_path(out.parent, "--out")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name, e.g. {out}/glue.zip")
    if out.suffix != ".zip":  # (--force on a run's own file would replace it)
        raise UserError(f"--out {out} is not a .zip file name; the leaderboard takes a zip: "
                        f"e.g. --out {out.with_suffix('.zip')}")
    if out.exists() and not args.force:
        raise UserError(f"--out {out} exists; add --force to replace it, or choose another name")
    files, table = gather([Path(r) for r in args.runs], args.allow_missing)
    write_zip(files, out)
    print("\n".join([f"{out}: {len(files)} of GLUE's {len(FILES)} submission files "
                     "(dev: the run's main score, median over seeds)", *table]))


if __name__ == "__main__":
    cli(main)
