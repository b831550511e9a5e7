"""File helpers every layer shares: atomic writes, strict JSON, sha256, LFS pointers, paths and
text a user gives (and the commands' ArgParser), a learning-rate sweep's folder names, directory
locks.

Nothing a user keeps is ever half-written: a file is written under a temporary name and renamed
when complete (`write_atomic`; a whole directory: output_dirs.staged_dir). Git LFS pointers (a
checkout without `git lfs pull`) are named as such, and so are a directory where a file belongs,
text that is not UTF-8 and a full disk. A run holds its directory with an OS lock (`lock_dir`)
that dies with the process.
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
import socket
import warnings
from collections.abc import Callable
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
    except BaseException as e:  # a full disk, say: no partial temporary left behind
        with contextlib.suppress(OSError):  # a read-only place: keep the error that says so
            tmp.unlink(missing_ok=True)
        _raise_with_filename(e, tmp)
        raise
    os.replace(tmp, path)


def _raise_with_filename(e: BaseException, path: Path) -> None:
    """Re-raise an OSError from writing to an open file (it names no file: cli's "no space
    left on the disk holding the output" could not say which disk) with `path` in it."""
    if isinstance(e, OSError) and e.filename is None:
        raise OSError(e.errno, e.strerror, str(path)) from None


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


def not_a_dir(path: str | Path) -> str:
    """What is wrong with `path`, where a directory was expected and none is: "is a file", or
    "does not exist" with where a relative path was looked for."""
    return "is a file" if Path(path).exists() else f"does not exist{from_cwd(path)}"


class ArgParser(argparse.ArgumentParser):
    """argparse for the commands: a bad command line is one UserError line ending with `usage`
    (exit 2 through errors.cli), where argparse prints its usage block and exits itself.
    --help describes the command by its module docstring's first paragraph (`doc`), whole: its
    first line alone can stop mid-sentence."""

    def __init__(self, *args, usage_line: str, doc: str, **kwargs):
        super().__init__(*args, description=" ".join(doc.split("\n\n")[0].split()), **kwargs)
        self.usage_line = usage_line

    def error(self, message):
        raise UserError(f"{message}; {self.usage_line}")


def path_argument(text: str) -> str:
    """argparse `type` of a command-line path: an empty one (an unset shell variable) is
    refused, where Path("") would quietly read as the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?); give a path")
    return text


def check_file(path: str | Path, what: str, fix: str) -> Path:
    """`path` if it is a file; else a UserError saying whether it is missing, a directory, a
    broken symbolic link or something else."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file; {fix}")
    if path.exists() and not path.is_file():  # `--file <(cmd)`: was "does not exist"
        raise UserError(f"{what} {path} is not a regular file (a pipe or a device); {fix}")
    if path.is_symlink() and not path.exists():  # listed by ls, so "does not exist" misleads
        raise UserError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does "
                        "not exist; point the link at the file, or put the file in its place")
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


def rate_folder(lr: float) -> str:
    """The folder of a GLUE learning-rate sweep's run at `lr`: lr<repr of the rate>, unique per
    float (lr2e-05, lr0.0001)."""
    return f"lr{lr!r}"


def rate_of(folder: str | Path) -> float | None:
    """The rate a sweep's run folder is named for (`rate_folder`), or None for another name."""
    name = Path(folder).name
    if not re.fullmatch(r"lr[0-9.e+-]+", name):
        return None
    try:
        return float(name[2:])
    except ValueError:  # lr1.2.3
        return None


def rate_runs(run_dir: str | Path) -> list[Path]:
    """The runs of a GLUE learning-rate sweep in `run_dir` (folders named by `rate_folder`),
    those holding a config.yaml, by name."""
    return sorted(p.parent for p in Path(run_dir).glob("lr*/config.yaml")
                  if rate_of(p.parent) is not None)


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


def utf8_error(path: str | Path, fix: str, opener: Callable = open) -> UserError:
    """The first line of `path` (opened by `opener`: a decompressing one reads the text, whose
    offsets are then not the file's) that is not UTF-8, as an error naming the line, the column
    and the byte (slow path: call it after a decode error)."""
    offset = 0
    offsets = "file offset" if opener is open else "offset in the decompressed text"
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return UserError(f"{path} line {number}: not valid UTF-8 (byte "
                                 f"0x{raw[e.start]:02x} at column {e.start + 1}, {offsets} "
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
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
    except OSError as e:  # a full disk
        with contextlib.suppress(OSError):  # closing flushes the same unwritable bytes again
            f.close()
        _raise_with_filename(e, directory / LOCK_NAME)
        raise
    return f
