"""A run holds its run directory for as long as it runs: two runs on one `train.run_dir` would
overwrite each other's config, checkpoints and results and interleave their metrics.jsonl.

Process 0 takes the lock (`files.lock_dir`: an flock that dies with the process); every process
learns whether it got it, so a refused multi-host run stops everywhere with the same one line
instead of leaving the other processes waiting in a collective.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import jax

from bertjax.errors import UserError
from bertjax.files import LOCK_NAME, lock_dir
from bertjax.sharding import same_on_every_process


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir` inside the `with` block; a `UserError` (before anything is written) when
    another run holds it. A run that fails before writing anything into the directory (bad
    input found after the lock was taken) leaves no lock file, nor the directory it created."""
    run_dir = Path(run_dir)
    created, had_lock = not run_dir.exists(), (run_dir / LOCK_NAME).exists()
    lock, refused = None, None
    if jax.process_index() == 0:
        try:
            lock = lock_dir(run_dir)
        except UserError as e:
            refused = e
    agreed = same_on_every_process([b"refused" if refused else b"held"])
    try:
        if refused is not None:
            raise refused
        if not agreed:
            raise UserError(f"{run_dir} is in use by another run (process 0 could not lock it); "
                            "wait for it to end, or set train.run_dir to another directory")
        yield
    except BaseException:
        if lock is not None and not had_lock and \
                [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
            (run_dir / LOCK_NAME).unlink()
            if created:
                run_dir.rmdir()
        raise
    finally:
        if lock is not None:
            lock.close()
