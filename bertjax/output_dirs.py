"""Output directories filled beside their target and swapped in whole (`staged_dir`): an
export or a release is never seen half-written. A replacement needs --force and, with a
marker file, only replaces its own kind; a symlinked target is replaced through the link. A
writer killed outright leaves its temporaries, which the next writer to the same place clears
(an flock tells a live writer's from a dead one's), putting back a previous output it had moved
aside.
"""

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from bertjax.errors import UserError
from bertjax.files import check_dir_path, disk_full_error, is_disk_full


@contextlib.contextmanager
def staged_dir(out_dir: str | Path, force: bool, *, key: str = "out_dir",
               marker: str | None = None, kind: str = "output"):
    """Yield a temporary sibling of `out_dir` (from argument or config key `key`) to fill; on
    success it replaces `out_dir` (see `check_output_dir`). On failure nothing is left behind,
    and a full disk is one UserError naming the `kind` being written. A writer killed outright
    (SIGKILL, a crash) leaves its temporaries: the next one to `out_dir` clears them first."""
    out_dir = _through_link(Path(out_dir))
    _clear_abandoned(out_dir)
    out_dir = check_output_dir(out_dir, force, key, marker, kind)
    with _disk_full_is_one_line(out_dir, kind):
        tmp = _temp_dir_beside(out_dir, key)
        try:
            with _held(tmp):
                yield tmp
                # mkdtemp makes the directory 0700 and safetensors writes its file 0600: a
                # release is meant to be read by others.
                tmp.chmod(0o755)
                for path in tmp.iterdir():
                    if path.is_file():
                        path.chmod(0o644)
                if not out_dir.exists():
                    tmp.rename(out_dir)
                    return
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old",
                                            dir=out_dir.parent))
                with _held(old):
                    out_dir.replace(old / "previous")
                    tmp.rename(out_dir)
                    shutil.rmtree(old)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _held(directory: Path):
    """An flock on `directory` inside the `with` block (or while the process lives): how
    `_clear_abandoned` tells a live writer's temporaries from a killed one's."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without locks: nothing is cleared
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def _clear_abandoned(out_dir: Path) -> None:
    """Remove the staging directories (`.NAME.xxxxxxxx.tmp`) a killed writer left beside
    `out_dir`, and put back a previous `out_dir` it had moved aside (`.NAME.xxxxxxxx.old/
    previous`) but not yet replaced. A directory is abandoned when nobody holds its flock (the
    kernel drops it with the process); a live writer's, or any on a file system without locks,
    is left alone. An empty one is too: a writer may not have locked its new directory yet."""
    pattern = re.compile(re.escape(f".{out_dir.name}.") + r"[a-z0-9_]{8}\.(tmp|old)")
    try:
        found = [p for p in out_dir.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:  # no such folder yet, or not readable: check_output_dir says what to do
        return
    # .old first: a killed replacement's previous output is put back before anything else.
    for path in sorted(found, key=lambda p: p.suffix != ".old"):
        try:
            _clear_if_abandoned(path, out_dir)
        except FileNotFoundError:  # its writer finished meanwhile
            pass


def _clear_if_abandoned(path: Path, out_dir: Path) -> None:
    if path.is_symlink() or not path.is_dir() or not any(path.iterdir()):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a live writer's (or no locks here)
        previous = path / "previous"
        if path.suffix == ".old" and previous.exists() and not out_dir.exists():
            previous.rename(out_dir)
            warnings.warn(f"put back {out_dir}, which a killed writer had moved aside to "
                          "replace it", stacklevel=4)
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _disk_full_is_one_line(out_dir: Path, kind: str):
    """A full disk while staging (safetensors raises its own error type for ENOSPC; a refused
    temporary directory is already a UserError naming it) as `disk_full_error`."""
    try:
        yield
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(out_dir.parent, f"while writing the {kind} {out_dir}") from None
        raise


def check_output_dir(out_dir: str | Path, force: bool, key: str, marker: str | None = None,
                     kind: str = "output") -> Path:
    """`out_dir` if a staged directory can go there: new, empty, or (with `force`) one to
    replace. With `marker`, the file every `kind` holds, only a previous `kind` is replaced: a
    mistyped path must not wipe a directory of something else."""
    out_dir = check_dir_path(_through_link(Path(out_dir)), key)
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        return out_dir
    if marker is not None and not (out_dir / marker).is_file():
        raise UserError(f"{key}={out_dir} holds other files and is not a previous {kind} (it "
                        f"has no {marker}); --force only replaces a previous {kind}: choose an "
                        f"empty or new directory, or a previous {kind}")
    if not force:
        raise UserError(f"{out_dir} exists and is not empty; pass --force (force=True) to "
                        "replace it, or choose another directory")
    return out_dir


def _through_link(out_dir: Path) -> Path:
    """A symlinked `out_dir` is its target: replacing the link itself left the target (a
    previous export, on another disk, say) unchanged and the link gone."""
    if not out_dir.is_symlink():
        return out_dir
    try:
        target = out_dir.resolve()
    except RuntimeError:  # a loop, up to Python 3.12; later ones return a path inside it
        target = out_dir
    if target.is_symlink():
        raise UserError(f"{out_dir} is a symlink that points back to itself (a loop); remove it "
                        "or choose another directory")
    return target


def _temp_dir_beside(out_dir: Path, key: str) -> Path:
    """A new temporary directory in `out_dir`'s parent (created when missing); a refusal by the
    OS (read-only, no permission, /proc or /sys) is a UserError."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp",
                                     dir=out_dir.parent))
    except OSError as e:
        raise UserError(f"cannot create {key}={out_dir} ({e.strerror}); set {key} to a "
                        "directory you can write") from None
