"""A run holds its run directory for as long as it runs: two runs on one `train.run_dir` would
overwrite each other's config, checkpoints and results and interleave their metrics.jsonl.

Process 0 takes the lock (`files.lock_dir`: an flock that dies with the process); every process
learns whether it got it, so a refused multi-host run stops everywhere with the same one line
instead of leaving the other processes waiting in a collective. Every process must also see the
directory process 0 holds (shared storage): checkpoints from all hosts meet there.

A run directory also belongs to one kind of job (`check_run_dir_kind`): a fine-tune started in a
pretraining run's directory, or either in a release bundle, would overwrite what is there.
"""

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils

from bertjax.errors import UserError
from bertjax.files import LOCK_NAME, lock_dir, rate_runs
from bertjax.processes import barrier, same_on_every_process


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir` inside the `with` block; a `UserError` (before anything is written) when
    another run holds it. A run that fails before writing a file into the directory (bad input
    found after the lock was taken: a missing init.checkpoint) leaves no lock file, nor the
    directories it created (the run directory, its parents, an empty checkpoints/)."""
    run_dir = Path(run_dir)
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # leaf first
    had_lock = (run_dir / LOCK_NAME).exists()
    lock, refused = None, None
    if jax.process_index() == 0:
        try:
            lock = lock_dir(run_dir)
        except UserError as e:
            refused = e
    try:
        # Inside the try: this collective fails when another process fails before it (its
        # post ends this one: leaving.py), and the lock just taken must go too.
        agreed = same_on_every_process([b"refused" if refused else b"held"])
        if refused is not None:
            raise refused
        if not agreed:
            raise UserError(f"{run_dir} is in use by another run (process 0 could not lock it); "
                            "wait for it to end, or set train.run_dir to another directory")
        _check_every_process_sees(run_dir)
        yield
    except BaseException:
        if lock is not None and not had_lock and _no_file_but_the_lock(run_dir):
            (run_dir / LOCK_NAME).unlink()
            if created:
                shutil.rmtree(run_dir)  # empty folders only
                for made in created[1:]:  # the parents it was created with
                    with contextlib.suppress(OSError):  # one that is no longer empty stays
                        made.rmdir()
        raise
    finally:
        if lock is not None:
            lock.close()


def _check_every_process_sees(run_dir: Path) -> None:
    """Refuse a run_dir that is not one directory for every host (each host's own disk, say):
    Orbax writes each process's share of a checkpoint where that process sees train.run_dir and
    process 0 alone completes it, so the checkpoints would lack the other hosts' shares (process
    1 ended in a FileNotFoundError traceback at its first look into checkpoints/, process 0 in a
    Gloo timeout). Process 0 creates a file under a fresh name, which no host can have cached or
    left over from another run, and every process looks for it."""
    if jax.process_count() == 1:
        return
    tokens = multihost_utils.process_allgather(np.frombuffer(os.urandom(16), np.uint8))
    probe = run_dir / f".seen-by-every-host-{bytes(np.asarray(tokens)[0]).hex()}"
    try:
        if jax.process_index() == 0:
            probe.touch()
        barrier("run_dir probe written")
        seen = np.asarray(multihost_utils.process_allgather(np.array([probe.is_file()]))).ravel()
    finally:
        if jax.process_index() == 0:
            probe.unlink(missing_ok=True)
    blind = [str(i) for i, sees in enumerate(seen) if not sees]
    if blind:
        who = f"process {blind[0]} does" if len(blind) == 1 else f"processes {', '.join(blind)} do"
        raise UserError(f"train.run_dir={run_dir} is not one directory shared by every host: "
                        f"{who} not see the file process 0 wrote there, and checkpoints must "
                        "gather every host's share in one place; put train.run_dir on storage "
                        "that every host mounts (NFS or another shared file system)")


def _no_file_but_the_lock(run_dir: Path) -> bool:
    return all(p.is_dir() or p == run_dir / LOCK_NAME for p in run_dir.rglob("*"))


# What a run does (train.task; "sweep": glue_sweep.py), as a subject and as what a folder holds
JOBS = {"pretrain": "pretraining", "glue": "fine-tuning", "sweep": "a learning-rate sweep"}
HELD = {"pretrain": "a pretraining run", "glue": "a fine-tuning run",
        "sweep": "a learning-rate sweep"}


def check_run_dir_kind(run_dir: str | Path, task: str, init_checkpoint: str | None = None) -> None:
    """Refuse, before anything is written, a train.run_dir holding a release bundle, a run of
    the other kind (`task` is train.task, or "sweep") or, for fine-tuning, init.checkpoint
    itself: the run would overwrite its config.yaml, metrics.jsonl and results.json (and break
    a bundle's sha256 check)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    held = _held_in(run_dir, task, init_checkpoint)
    if held:
        raise UserError(f"train.run_dir={run_dir} holds {held}; {JOBS[task]} there would "
                        "overwrite its files: set train.run_dir to another directory")


def _held_in(run_dir: Path, task: str, init_checkpoint: str | None) -> str | None:
    """What in `run_dir` a `task` run must not write over, in words; None when nothing."""
    if (run_dir / "manifest.json").is_file():
        return "a release bundle (manifest.json)"
    if task != "pretrain" and init_checkpoint and Path(init_checkpoint).exists():
        start, own = Path(init_checkpoint).resolve(), run_dir.resolve()
        if start == own or own in start.parents:
            return f"init.checkpoint={init_checkpoint}, the model this fine-tune starts from"
    for other, evidence in runs_in(run_dir).items():
        if other != task:
            return f"{HELD[other]} ({evidence})"
    return None


def runs_in(run_dir: Path) -> dict[str, str]:
    """{train.task or "sweep": what shows it} for the runs `run_dir` holds: its config.yaml's
    train.task, a pretraining run's checkpoints/, a sweep's sweep.json or lr<rate>/ runs, a
    fine-tune's seedN/ folders."""
    runs = {}
    saved = _saved_task(run_dir / "config.yaml")
    if saved in JOBS:
        runs[saved] = f"its config.yaml has train.task={saved}"
    if (run_dir / "checkpoints").is_dir():
        runs.setdefault("pretrain", "checkpoints/")
    rates = rate_runs(run_dir)
    if (run_dir / "sweep.json").is_file() or rates:  # each rate a fine-tune of its own
        runs["sweep"] = "sweep.json" if (run_dir / "sweep.json").is_file() else \
            f"{rates[0].name}/"
    seeds = sorted(p.name for p in run_dir.iterdir()
                   if p.is_dir() and re.fullmatch(r"seed\d+", p.name))
    if seeds:
        runs.setdefault("glue", f"{seeds[0]}/")
    return runs


def _saved_task(config_yaml: Path) -> str | None:
    """train.task in a run's saved config.yaml; None when it is missing or unreadable (the
    folders then tell what the run was)."""
    try:
        task = yaml.safe_load(config_yaml.read_bytes())["train"]["task"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return None
    return task if isinstance(task, str) else None
