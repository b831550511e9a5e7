"""File helpers every layer shares: atomic writes, staged directories, sha256, LFS pointers,
directory locks.

Nothing a user keeps is ever half-written: a file is written under a temporary name and renamed
when complete (`write_atomic`), a directory is filled beside its target and swapped in whole
(`staged_dir`). Git LFS pointers (a checkout without `git lfs pull`) are named as such, and so are
a directory where a file belongs, text that is not UTF-8 and a full disk. A run holds its
directory with an OS lock (`lock_dir`) that dies with the process.
"""

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import IO

from bertjax.errors import UserError

LFS_HEADER = b"version https://git-lfs.github.com/spec/v1"


def json_text(obj, indent: int | None = 2) -> str:
    """`obj` as strict JSON (indented, or one line with indent=None): a NaN or infinite float (a
    diverged run's loss) becomes null, where json.dumps would write the bare word NaN that other
    JSON readers reject."""
    def strict(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: strict(v) for k, v in x.items()}
        return [strict(v) for v in x] if isinstance(x, list | tuple) else x
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary sibling and a rename: readers (and a crash)
    see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(data)
    except BaseException:  # a full disk, say: no partial temporary left behind
        with contextlib.suppress(OSError):  # a read-only place: keep the error that says so
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


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


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_not_lfs_pointer(path: str | Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(LFS_HEADER))
    if head == LFS_HEADER:
        raise UserError(f"{path} is a git LFS pointer, not the file itself; fetch the real "
                        "file with `git lfs install && git lfs pull`")


# ---- what a user can get wrong about files: one line naming the path and the fix ----
def from_cwd(path: str | Path) -> str:
    """For a relative path that is not there, where it was looked for: paths in configs and on
    the command line are read from the current directory, not from the config file (as
    include: is), so a command started elsewhere misses them."""
    return "" if Path(path).is_absolute() else f" (in the current directory, {Path.cwd()})"


def path_argument(text: str) -> str:
    """argparse `type` of a command-line path: an empty one (an unset shell variable) is
    refused, where Path("") would quietly read as the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?); give a path")
    return text


def check_file(path: str | Path, what: str, fix: str) -> Path:
    """`path` if it is a file; else a UserError saying whether it is missing or a directory."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file; {fix}")
    if path.exists() and not path.is_file():  # `--file <(cmd)`: was "does not exist"
        raise UserError(f"{what} {path} is not a regular file (a pipe or a device); {fix}")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist{from_cwd(path)}; {fix}")
    return path


def check_dir_path(path: str | Path, key: str) -> Path:
    """`path` (from config key `key`) may be a directory or not exist yet, but neither it nor
    the nearest existing folder above it may be a file (else creating it fails later)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={path} is a file, not a directory; set {key} to a directory "
                        "(it is created when missing)")
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{key}={path} cannot be created: {existing} is a file, not a "
                        f"directory; set {key} to a path under a directory")
    return path


def make_dir(path: Path, key: str) -> Path:
    """Create `path` (from config key `key`) with its parents; a refusal by the OS (read-only,
    no permission, a pseudo file system like /proc) is a UserError naming the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {key}={path} ({e.strerror}); set {key} to a directory "
                        "you can write") from None
    return path


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # how Windows editors' "Unicode" text begins


def utf16_error(path: str | Path, fix: str) -> UserError:
    path = Path(path)
    return UserError(f"{path} is UTF-16 text; {fix}: convert it, e.g. iconv -f utf-16 -t utf-8 "
                     f"{path} > {path.with_stem(path.stem + '-utf8')}")


def read_utf8(path: str | Path, fix: str) -> str:
    """A UTF-8 text file's text (newlines as read_text gives them); UTF-16 or bytes that are not
    UTF-8 are one UserError naming the file (and the line) with `fix`."""
    data = Path(path).read_bytes()
    if data.startswith(UTF16_BOMS):
        raise utf16_error(path, fix)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise utf8_error(path, fix) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def utf8_error(path: str | Path, fix: str) -> UserError:
    """The first line of `path` that is not UTF-8, as an error naming the line, the column and
    the byte (slow path: call it after a decode error)."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return UserError(f"{path} line {number}: not valid UTF-8 (byte "
                                 f"0x{raw[e.start]:02x} at column {e.start + 1}, file offset "
                                 f"{offset + e.start}); {fix}")
            offset += len(raw)
    return UserError(f"{path}: not valid UTF-8; {fix}")


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, as an OSError or as the message of a wrapped one (tensorstore, which Orbax
    writes through, raises ValueError('... No space left on device [os_error_code=28]'))."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text


def disk_full_error(where: str | Path, what: str,
                    outcome: str = "nothing was half-written (temporary files were removed)"
                    ) -> UserError:
    return UserError(f"no space left on the disk holding {where} {what}; {outcome}: free space "
                     "or choose another directory, then run the same command again")


LOCK_NAME = ".lock"


def open_lock_file(directory: Path, fix: str) -> IO:
    """`directory`'s lock file, opened for appending (the caller closes it); a refusal by the OS
    (a read-only directory or disk) is a UserError ending with `fix`."""
    try:
        return open(directory / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise UserError(f"cannot write the lock file {directory / LOCK_NAME} ({e.strerror}); "
                        f"{fix}") from None


def lock_dir(directory: str | Path) -> IO | None:
    """Hold `directory` (created if missing) with an exclusive `flock` on its `.lock` file until
    the returned file is closed or the process ends, however it ends (kill -9 included: the
    kernel drops the lock with the process, so a lock is never left stale). Refused with a
    `UserError` while another process holds it; nothing in the directory is written then.
    A file system without locks (some network ones) gets a warning and None: no lock."""
    directory = make_dir(Path(directory), "train.run_dir")
    f = open_lock_file(directory, "make train.run_dir writable or set it to another directory")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            warnings.warn(f"cannot lock {directory} ({e.strerror}); nothing stops a second run "
                          "from writing into it at the same time", stacklevel=2)
            return None
        raise UserError(f"{directory} is in use by another run ({holder or 'pid unknown'}); "
                        "wait for it to end, or set train.run_dir to another directory") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f
