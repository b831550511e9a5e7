"""`python -m bertjax.glue_submission`: the leaderboard's zip from GLUE runs and sweeps, each
file checked as the leaderboard checks it; bad input is one line, exit 2, nothing written."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bertjax import glue_metrics, glue_tasks
from bertjax.errors import UserError
from bertjax.glue_submission import FILES, main

ROOT = Path(__file__).resolve().parents[1]


def glue_run(run_dir: Path, task: str, rows: dict[str, int] | None = None,
             score: float = 0.8) -> Path:
    """What a finished fine-tune of `task` leaves that the submission reads: its submission files
    (random predictions, `rows` per split where given, else GLUE's test sizes) and results.json."""
    rng = np.random.default_rng(len(task))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():  # written first by every run
        (run_dir / "config.yaml").write_text(f"glue: {{task: {task}}}\n")
    written = []
    for name, split in glue_tasks.submissions(task):
        t = glue_tasks.get_task(name)
        n = (rows or {}).get(split, t.split(split).rows)
        predictions = rng.uniform(0, 5, n) if not t.labels else rng.normal(
            size=(n, len(t.labels)))
        written.append(str(glue_metrics.write_submission(name, split, np.arange(n), predictions,
                                                         run_dir / "submission")))
    results = {"task": task, "submissions": written, "summary": {"main_score": {
        "median": score}}}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def sweep_of(parent: Path, task: str, to_run: list[float] = ()) -> Path:
    """A learning-rate sweep (as glue_sweep.py writes it, then moved) whose best rate's run is
    lr3e-05/."""
    (parent / "lr3e-05" / "seed0" / "best").mkdir(parents=True)
    (parent / "lr3e-05" / "seed0" / "best" / "manifest.json").write_text("{}")
    (parent / "lr3e-05" / "config.yaml").write_text("optim: {lr: 3.0e-05}\n")  # first, as a run
    run = glue_run(parent / "lr3e-05", task)
    score = json.loads((run / "results.json").read_text())["summary"]["main_score"]
    (parent / "sweep.json").write_text(json.dumps(
        {"rates": [{"lr": 3e-5, "main_score": score}], "to_run": list(to_run),
         "best": {"best_model": "elsewhere/lr3e-05/seed0/best"}}))
    return parent


@pytest.fixture(scope="module")
def every_task(tmp_path_factory) -> list[Path]:
    """A run of each of GLUE's nine tasks (MNLI's writes AX.tsv too); RTE's is a sweep."""
    base = tmp_path_factory.mktemp("runs")
    return [sweep_of(base / t, t) if t == "rte" else glue_run(base / t, t)
            for t in glue_tasks.TASKS if t != "ax"]


def test_every_task_gives_the_leaderboards_zip_the_same_bytes_each_time(
        every_task, tmp_path, capsys):
    out = tmp_path / "glue.zip"
    main([*map(str, every_task), "--out", str(out)])
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == list(FILES)  # GLUE's order, at the top level
        for run in every_task:
            run = run / "lr3e-05" if run.name == "rte" else run
            for file in (run / "submission").iterdir():
                assert archive.read(file.name) == file.read_bytes()
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: 11 of GLUE's 11 submission files")
    assert f"AX.tsv          1,104 rows  dev 0.8000  {every_task[5]}\n" in printed
    assert "RTE.tsv" in printed and str(every_task[7] / "lr3e-05") in printed
    first = out.read_bytes()
    with pytest.raises(UserError, match=rf"^--out {out} exists; add --force to replace it"):
        main([*map(str, every_task), "--out", str(out)])
    main([*map(str, every_task), "--out", str(out), "--force"])
    assert out.read_bytes() == first


def test_a_missing_task_is_named_unless_allowed(every_task, tmp_path):
    out = tmp_path / "partial.zip"
    with pytest.raises(UserError, match=r"scores only complete submissions, and these runs have "
                                        r"no CoLA.tsv \(cola\), .*AX.tsv \(the MNLI run writes "
                                        r"it, given GLUE's diagnostic/diagnostic.tsv\), .*WNLI.tsv "
                                        r"\(wnli\); fine-tune"):
        main([str(every_task[1]), "--out", str(out)])
    assert not out.exists()
    main([str(every_task[1]), str(every_task[5]), str(every_task[1]), "--out", str(out),
          "--allow-missing"])  # a run named twice is read once
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["SST-2.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]


def test_only_the_files_a_run_wrote_are_taken(tmp_path):
    """A file in submission/ that results.json does not list is an earlier run's (its test
    split was not given this time): left out, so the task is missing."""
    run = glue_run(tmp_path / "sst2", "sst2")
    glue_run(tmp_path / "cola", "cola")
    (tmp_path / "cola" / "submission" / "CoLA.tsv").rename(run / "submission" / "CoLA.tsv")
    with pytest.raises(UserError, match=r"have no CoLA.tsv \(cola\), MRPC"):
        main([str(run), "--out", str(tmp_path / "x.zip")])


@pytest.mark.parametrize(("damage", "error"), [
    (lambda f: f.write_text(f.read_text().replace("index\t", "id\t", 1)),
     r"SST-2.tsv does not start with GLUE's header 'index\\tprediction'"),
    (lambda f: f.write_text(f.read_text().replace("\n3\t0\n", "\n3\tpositive\n").replace(
        "\n3\t1\n", "\n3\tpositive\n")),  # GLUE's SST-2 labels are 0 and 1
     r"SST-2.tsv line 5: '3\\tpositive' is not an index and a label of 0/1; "
     r"rerun sst2's fine-tune with GLUE's own SST-2/test.tsv to write it again$"),
    (lambda f: f.write_text("\n".join(f.read_text().splitlines()[:-5]) + "\n"),
     r"SST-2.tsv has 1,816 predictions but GLUE's sst2 test split has 1,821 rows, and the "
     r"leaderboard refuses a file without all of them"),
    (lambda f: f.unlink(), r"SST-2.tsv does not exist; its results.json lists it: rerun"),
    (lambda f: (f.unlink(), f.mkdir()), r"SST-2.tsv is a directory, not a file; its results"),
    # GLUE's test indices are 0 .. rows - 1, each once: shifted, out of range, spelt otherwise
    (lambda f: f.write_text(f.read_text().replace("\n0\t", "\n1821\t", 1)),
     r"line 2: '1821\\t\d' is an index outside GLUE's test indices 0 to 1,820; rerun"),
    (lambda f: f.write_text(f.read_text().replace("\n3\t", "\n03\t", 1)),
     r"line 5: '03\\t\d' is not an index and a label of 0/1"),
    (lambda f: f.write_text(f.read_text().replace("\n3\t", "\n\u00b2\t", 1)),
     r"line 5: '\u00b2\\t\d' is not an index"),
    (lambda f: f.write_text(f.read_text().replace("\n3\t", "\n2\t", 1)),
     r"SST-2.tsv line 5: '2\\t\d' is an index seen before"),
    (lambda f: f.write_text("\ufeff" + f.read_text()),
     r"SST-2.tsv starts with a byte-order mark \(an editor's UTF-8 BOM\) before GLUE's header"),
    (lambda f: f.write_text(f.read_text().replace("\n4\t", "\n4\x0c\t", 1)),
     r"line 6: '4\\x0c\\t\d' is not an index"),  # the line's own number: not splitlines'
])
def test_a_file_the_leaderboard_would_refuse_is_refused(tmp_path, damage, error):
    run = glue_run(tmp_path / "sst2", "sst2")
    damage(run / "submission" / "SST-2.tsv")
    with pytest.raises(UserError, match=error):
        main([str(run), "--out", str(tmp_path / "x.zip"), "--allow-missing"])
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize(("score", "kept"), [
    ("5.000", True), ("-0.0", True), ("1e0", True), ("3", True), (".5", True), ("5.5", False),
    ("nan", False), ("-1e-9", False), (" 3.0", False), ("\uff13", False), ("0_1", False)])
def test_an_sts_b_score_is_a_plain_number_in_0_to_5(tmp_path, score, kept):
    run = glue_run(tmp_path / "stsb", "stsb")
    file = run / "submission" / "STS-B.tsv"
    lines = file.read_text().splitlines()
    lines[1] = f"0\t{score}"
    file.write_text("\n".join(lines) + "\n")
    args = [str(run), "--out", str(tmp_path / "x.zip"), "--allow-missing"]
    if kept:
        main(args)
    else:
        with pytest.raises(UserError, match=r"line 2: .* is not an index and a score in \[0, 5\]"):
            main(args)


def test_runs_that_are_not_finished_or_overlap_are_refused(tmp_path):
    out = ["--out", str(tmp_path / "x.zip"), "--allow-missing"]
    sst2 = glue_run(tmp_path / "sst2", "sst2")
    with pytest.raises(UserError, match=r"SST-2.tsv comes from two runs, .*/sst2 and .*/again; "
                                        "pass one of them"):
        main([str(sst2), str(glue_run(tmp_path / "again", "sst2")), *out])
    sweep = sweep_of(tmp_path / "rte", "rte", to_run=[2e-5])
    with pytest.raises(UserError, match=r"rte is a learning-rate sweep, but the sweep has yet to "
                                        "run lr 2e-05; rerun its command to finish it"):
        main([str(sweep), *out])
    (sst2 / "config.yaml").write_text("glue: {task: sst2}\n")  # a rerun began, after results
    later = (sst2 / "results.json").stat().st_mtime_ns + 10**9  # (a file system's clock ticks)
    os.utime(sst2 / "config.yaml", ns=(later, later))
    with pytest.raises(UserError, match=r"sst2 has not finished: its config.yaml is newer than its "
                                        r"results.json \(a rerun was interrupted\)"):
        main([str(sst2), *out])
    os.utime(sst2 / "config.yaml", ns=(0, 0))  # finished again
    (tmp_path / "unfinished" / "seed0").mkdir(parents=True)
    with pytest.raises(UserError, match=r"unfinished is a GLUE run with no finished seed yet "
                                        r"\(no results.json\)"):
        main([str(tmp_path / "unfinished"), *out])
    (sst2 / "results.json").write_text('{"task": "sst2"}')
    with pytest.raises(UserError, match=r"results.json has no submissions; it is not a file "
                                        "bertjax wrote"):
        main([str(sst2), *out])
    for submissions, median, said in [
            (["a/SST-2.tsv"], "0.8", 'summary.main_score.median = "0.8", which bertjax never'),
            ([3], 0.8, r"submissions = \[3\], which bertjax never writes")]:
        (sst2 / "results.json").write_text(json.dumps({"task": "sst2", "submissions": submissions,
                                                       "summary": {"main_score": {"median":
                                                                                  median}}}))
        with pytest.raises(UserError, match=rf"results.json has {said}"):
            main([str(sst2), *out])
    (sst2 / "results.json").write_text('{"task": "sst2", ')
    with pytest.raises(UserError, match=r"results.json is not valid JSON"):
        main([str(sst2), *out])
    (tmp_path / "pretrained" / "checkpoints").mkdir(parents=True)
    (tmp_path / "pretrained" / "results.json").write_text('{"steps": 150}')
    with pytest.raises(UserError, match=r"pretrained is a pretraining run \(checkpoints/\); pass "
                                        "GLUE fine-tuning runs, e.g. python -m bertjax.train "):
        main([str(tmp_path / "pretrained"), *out])
    with pytest.raises(UserError, match=r"missing is not a directory"):
        main([str(tmp_path / "missing"), *out])
    assert not (tmp_path / "x.zip").exists()


def test_the_command_line_says_a_bad_input_in_one_line(tmp_path):
    run = glue_run(tmp_path / "sst2", "sst2")
    (tmp_path / "taken").mkdir()
    for args, error in [
        ([str(run)], "the following arguments are required: --out; usage: python -m "
                     "bertjax.glue_submission RUN [RUN ...] --out FILE.zip"),
        ([str(run), "--out", str(tmp_path / "taken")], f"--out {tmp_path / 'taken'} is a "
                                                       "directory; give a file name"),
        ([str(tmp_path), "--out", str(tmp_path / "x.zip")], f"{tmp_path} is not a finished "
                                                            "GLUE fine-tuning run"),
        ([str(run), "--out", str(run / "results.json"), "--force"],
         f"--out {run / 'results.json'} is not a .zip file name; the leaderboard takes a zip"),
        ([str(run), "--out", str(run / "results.json" / "x.zip")],
         f"--out {run / 'results.json' / 'x.zip'} cannot be written: {run / 'results.json'} is a "
         "file, not a directory"),
        ([str(run), "--out", "/proc/x.zip", "--allow-missing"], "cannot write --out /proc/x.zip"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "bertjax.glue_submission", *args],
                              capture_output=True, text=True, cwd=ROOT)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr.startswith(f"error: {error}") and proc.stderr.count("\n") == 1
