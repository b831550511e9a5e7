"""A run holds its run directory (files.lock_dir, runlock.hold_run_dir): a second run on the same
train.run_dir, pretraining or fine-tuning, is refused with one line before it writes anything,
and the lock dies with its process, kill -9 included."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GLUE_FIXTURES, bert_style_tokenizer, write_corpus

from bertjax import config as config_lib
from bertjax.errors import UserError
from bertjax.files import LOCK_NAME, lock_dir
from bertjax.finetune import finetune
from bertjax.pretrain import pretrain
from bertjax.runlock import check_run_dir_kind, hold_run_dir

ROOT = Path(__file__).resolve().parents[1]


def test_a_held_directory_is_refused_until_its_holder_lets_go(tmp_path):
    run_dir = tmp_path / "run"
    first = lock_dir(run_dir)  # creates the directory
    held = (run_dir / LOCK_NAME).read_text()
    assert f"pid {os.getpid()}" in held
    with pytest.raises(UserError, match=f"{run_dir} is in use by another run .*pid {os.getpid()}"
                                        ".*set train.run_dir to another directory"):
        lock_dir(run_dir)
    assert (run_dir / LOCK_NAME).read_text() == held  # the refused one wrote nothing
    first.close()
    lock_dir(run_dir).close()


def test_pretraining_and_fine_tuning_are_refused_before_they_write(tmp_path):
    run_dir = tmp_path / "run"
    with hold_run_dir(run_dir):
        for task in ("pretrain", "glue"):
            cfg = config_lib.load([], [f"train.run_dir={run_dir}", f"train.task={task}",
                                       f"data.dir={tmp_path / 'data'}",  # (inputs are checked
                                       f"glue.data_dir={GLUE_FIXTURES}"])  # before the lock)
            with pytest.raises(UserError, match="is in use by another run"):
                (pretrain if task == "pretrain" else finetune)(cfg)
    assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME]
    assert not (tmp_path / "data").exists()
    with hold_run_dir(run_dir):  # and free again after the block
        pass


def test_a_run_that_fails_before_writing_a_file_leaves_no_directory_it_made(tmp_path):
    """A pretraining run whose init.checkpoint is missing (found after the lock, and after
    Orbax made checkpoints/) left runs/x holding .lock and an empty checkpoints/."""
    run_dir = tmp_path / "runs" / "x"
    with pytest.raises(UserError, match="missing"), hold_run_dir(run_dir):
        (run_dir / "checkpoints").mkdir()
        raise UserError("init.checkpoint is missing")
    assert list(tmp_path.iterdir()) == []  # runs/ too
    (tmp_path / "mine").mkdir()  # a run directory that was there stays, lock gone
    with pytest.raises(UserError), hold_run_dir(tmp_path / "mine"):
        (tmp_path / "mine" / "checkpoints").mkdir()
        raise UserError("init.checkpoint is missing")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["checkpoints"]
    with pytest.raises(UserError), hold_run_dir(tmp_path / "new"):  # a file written: kept
        (tmp_path / "new" / "config.yaml").write_text("train: {}")
        raise UserError("later")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [LOCK_NAME, "config.yaml"]


HOLD = """
import sys, time
from bertjax.files import lock_dir
lock = lock_dir(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_lock_dies_with_a_killed_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=f"pid {proc.pid} "):
            lock_dir(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock_dir(tmp_path).close()  # no stale lock


def train(config_file, run_dir, *extra):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.Popen([sys.executable, "-m", "bertjax.train", str(config_file),
                             f"train.run_dir={run_dir}", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_second_run_on_a_directory_in_use_is_refused(tmp_path):
    write_corpus(tmp_path / "corpus.txt", 60)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(json.dumps({
        "model": {"size": "tiny", "num_layers": 1, "hidden_size": 32, "num_heads": 2},
        "tokenizer": {"vocab_size": 200},
        "data": {"dir": str(tmp_path / "prepared"), "sources": [str(tmp_path / "corpus.txt")],
                 "seq_len": 16, "validation_fraction": 0.1},
        "train": {"steps": 100000, "micro_batch": 4, "log_every": 1, "eval_every": 0,
                  "checkpoint_every": 0}}))
    run_dir = tmp_path / "run"
    first = train(config_file, run_dir)
    deadline = time.time() + 300
    while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text():
        assert first.poll() is None and time.time() < deadline, first.stdout.read()
        time.sleep(0.2)
    config_yaml = (run_dir / "config.yaml").read_text()
    second = train(config_file, run_dir, "train.seed=1")
    out = second.communicate(timeout=300)[0]
    first.send_signal(signal.SIGTERM)  # the first one saves and stops as usual
    first_out = first.communicate(timeout=300)[0]
    assert second.returncode == 2, out
    assert out.strip().splitlines()[-1] == (
        f"error: {run_dir} is in use by another run (pid {first.pid} on {socket.gethostname()}); "
        "wait for it to end, or set train.run_dir to another directory")
    assert "Traceback" not in out
    assert first.returncode == 128 + signal.SIGTERM, first_out
    assert "SIGTERM: saved a checkpoint" in first_out, first_out
    assert (run_dir / "config.yaml").read_text() == config_yaml  # seed 0's, not the second's
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # the first run's rows alone


# ---------------------------------------------------------------- one kind of job per directory

def pretraining_run(run_dir: Path) -> Path:
    """What a pretraining run leaves: its config.yaml, checkpoints/, its curve and results."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_lib.to_yaml(config_lib.load([], [])))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    (run_dir / "results.json").write_text("{}")
    return run_dir


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"dir"
            for p in sorted(directory.rglob("*"))}


def test_a_run_directory_belongs_to_one_kind_of_job(tmp_path):
    pre = pretraining_run(tmp_path / "pre")
    with pytest.raises(UserError, match=rf"^train.run_dir={pre} holds a pretraining run \(its "
                                        r"config.yaml has train.task=pretrain\); fine-tuning "
                                        "there would overwrite its files: set train.run_dir to "
                                        "another directory$"):
        check_run_dir_kind(pre, "glue")
    (pre / "config.yaml").unlink()  # the folders tell too
    with pytest.raises(UserError, match=r"holds a pretraining run \(checkpoints/\)"):
        check_run_dir_kind(pre, "glue")
    check_run_dir_kind(pre, "pretrain")  # its own kind resumes as before
    glue_run = tmp_path / "glue"
    (glue_run / "seed3" / "best").mkdir(parents=True)
    with pytest.raises(UserError, match=r"holds a fine-tuning run \(seed3/\); pretraining there"):
        check_run_dir_kind(glue_run, "pretrain")
    check_run_dir_kind(glue_run, "glue")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    for task in ("pretrain", "glue"):
        with pytest.raises(UserError, match=r"holds a release bundle \(manifest.json\)"):
            check_run_dir_kind(bundle, task)
    for start in (glue_run, glue_run / "seed3" / "best"):  # init.checkpoint itself or inside
        with pytest.raises(UserError, match=rf"holds init.checkpoint={start}, the model this "
                                            "fine-tune starts from"):
            check_run_dir_kind(glue_run, "glue", str(start))
    check_run_dir_kind(glue_run / "next", "glue", str(glue_run / "seed3" / "best"))
    check_run_dir_kind(tmp_path / "new", "glue", "bert-base-uncased")  # a name, not a path


def test_both_loops_refuse_another_kind_of_run_before_they_write(tmp_path):
    bert_style_tokenizer(tmp_path / "tokenizer.json")
    pre = pretraining_run(tmp_path / "pre")
    glue_run = tmp_path / "glue"
    (glue_run / "seed0").mkdir(parents=True)
    before = {d: contents(d) for d in (pre, glue_run)}
    # Inputs a fine-tune would otherwise run to the end on (the random-init baseline on RTE).
    fine_tune = ["train.task=glue", "glue.task=rte", f"glue.data_dir={GLUE_FIXTURES}",
                 f"tokenizer.path={tmp_path / 'tokenizer.json'}", "model.num_layers=1",
                 "model.hidden_size=32", "model.num_heads=2", "glue.epochs=1", "glue.seeds=[0]",
                 "glue.batch_size=8", "glue.buckets=[64]"]
    cases = [(finetune, pre, fine_tune), (finetune, pre, [*fine_tune, f"init.checkpoint={pre}"]),
             (pretrain, glue_run, ["train.task=pretrain", f"data.dir={tmp_path / 'data'}"])]
    for loop, run_dir, overrides in cases:
        cfg = config_lib.load([], [f"train.run_dir={run_dir}", *overrides])
        with pytest.raises(UserError, match=f"train.run_dir={run_dir} holds"):
            loop(cfg)
    assert {d: contents(d) for d in (pre, glue_run)} == before
