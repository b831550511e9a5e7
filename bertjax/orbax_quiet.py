"""Orbax's noise after a failure, silenced: a failed save or restore is one UserError line.

When a checkpoint cannot be read or written, Orbax raises once, but the work it left pending is
reported later (unraisable coroutines, asyncio's "never retrieved" tasks, absl tracebacks from
its threads, temporary directories tensorstore keeps writing into). checkpoint.py says the
error; this module drops those leftovers, and only those, and removes the temporaries.
"""

import functools
import logging
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

from bertjax.files import disk_full_error, is_disk_full

# Orbax's coroutine that reads one array, and the package its reads run in (orbax-checkpoint 0.12).
ORBAX_READ = "_read_array_index_and_device_put"
ORBAX_READS = "orbax/checkpoint/_src/serialization"
# ...and the one that reads the arrays' metadata, also left unawaited now and then (1 in ~4 runs
# of test_checkpoint_read's abandoned-reads test after test_checkpoint_write).
ORBAX_METADATA_READ = "Store._get_array_metadatas"


def _is_closed_loop(unraisable) -> bool:
    return (isinstance(unraisable.exc_value, RuntimeError) and
            str(unraisable.exc_value) == "Event loop is closed")


def _is_abandoned_read(unraisable) -> bool:
    """Orbax's read of one array, closed unfinished after another read failed: it catches
    BaseException, so the GeneratorExit of the close comes back as an Exception, reported
    when the coroutine is collected (orbax serialization._read_array_index_and_device_put).
    Python 3.11-3.13 pass the coroutine as the report's object; 3.14 passes None and names it
    in the message ("Exception ignored while closing generator <coroutine object NAME at..>")."""
    code = getattr(unraisable.object, "cr_code", None)
    return ((getattr(code, "co_name", None) == ORBAX_READ or
             f"<coroutine object {ORBAX_READ} at " in (unraisable.err_msg or "")) and
            isinstance(unraisable.exc_value.__cause__, GeneratorExit) and
            str(unraisable.exc_value).startswith("Encountered error while reading array index"))


class _NoOrbaxLeftovers(logging.Filter):
    """Drops asyncio's 'Task (or _GatheringFuture, or Future) exception was never retrieved' for
    a read inside Orbax's deserialization that failed or was abandoned along with a failed
    restore. A tensorstore future's error has no Python frames to tell it by; its text names
    its tensorstore spec (after a damaged checkpoint's one-line error, 1 run in ~6 of
    test_faults' corrupt-checkpoint cases printed one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not record.getMessage().split("\n")[0].endswith(
                "exception was never retrieved"):
            return True
        frames = traceback.extract_tb(error.__traceback__)
        return not (any(ORBAX_READS in frame.filename for frame in frames) or
                    "tensorstore_spec=" in str(error))


NO_ORBAX_LEFTOVERS = _NoOrbaxLeftovers()


def quiet_orbax_leftovers() -> None:
    """When a save or restore fails, the work Orbax left pending is reported later, up to
    hundreds of traceback lines around the one-line error: tensorstore may finish a write or
    read after Orbax has closed its event loop (an unraisable 'Event loop is closed'), the
    reads of the other arrays are closed unfinished (unraisable, or 'never awaited'), and
    their tasks' errors are never retrieved (asyncio logs them). Those (and only those) are
    dropped."""
    # Every time: a caller's warnings.catch_warnings (pytest's around each test) restores the
    # filters it found when it ends; filterwarnings drops an equal filter before adding it.
    for coroutine in (ORBAX_READ, ORBAX_METADATA_READ):
        warnings.filterwarnings("ignore", f"coroutine '{coroutine}' was never awaited",
                                RuntimeWarning)
    logging.getLogger("asyncio").addFilter(NO_ORBAX_LEFTOVERS)  # added once: the same object
    previous = sys.unraisablehook
    if getattr(previous, "bertjax_quiet", False):
        return

    def hook(unraisable):
        if not (_is_closed_loop(unraisable) or _is_abandoned_read(unraisable)):
            previous(unraisable)

    hook.bertjax_quiet = True
    sys.unraisablehook = hook


class _NotDiskFull(logging.Filter):
    """Drops the tracebacks Orbax's threads log about a full disk (absl), and asyncio's
    'Future exception was never retrieved' for the same write at exit: the UserError says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (is_disk_full(Exception(record.getMessage())) or
                    record.exc_info and is_disk_full(record.exc_info[1]))


def _remove_temporaries(directory: Path, quiet_s: float = 1.0, limit_s: float = 60.0) -> None:
    """Remove Orbax's temporary directories until none reappears for `quiet_s`. Orbax raises at
    the first failed write while tensorstore still finishes the others: those re-create the
    directory milliseconds after a first removal (seen in about one save in six)."""
    start = quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() - start < limit_s:
        for tmp in directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
            quiet_since = time.monotonic()
        time.sleep(0.01)


def disk_full_is_user_error(save):
    """Wraps Checkpoints.save: a full disk becomes one UserError, and Orbax's temporary
    directories are removed (they would keep the space, so a rerun would fail the same way);
    the earlier checkpoints are untouched, since Orbax renames a checkpoint only when complete."""
    @functools.wraps(save)
    def wrapper(self, step: int, *args, **kwargs):
        quiet, loggers = _NotDiskFull(), [logging.getLogger(n) for n in ("absl", "asyncio")]
        for logger in loggers:
            logger.addFilter(quiet)
        quiet_orbax_leftovers()
        try:
            return save(self, step, *args, **kwargs)
        except Exception as e:
            if is_disk_full(e):
                _remove_temporaries(self.directory)
                loggers = []  # the filters stay: asyncio reports the failed writes again at exit
                # and the writes Orbax abandoned warn at exit, after the one-line error (CI)
                warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
                raise disk_full_error(self.directory, f"while writing checkpoint {step}") from None
            raise
        finally:
            for logger in loggers:
                logger.removeFilter(quiet)
    return wrapper


# Orbax logs this (a warning) at every read-only manager: a reader's, opened so on purpose.
class _NotReadOnlyNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_NotReadOnlyNotice())
