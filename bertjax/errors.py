"""User-facing errors and the command-line wrapper that turns them into one line + exit code 2.

Anything a user can get wrong (config, path, data, checkpoint) raises `UserError` with a message
naming the thing and the fix; `cli` prints it without a traceback, and a full disk or a refused
permission too (wherever they strike: the writers that can leave temporaries behind catch them
themselves and clean up), and a device out of memory (`out_of_memory_is_said`).
"""

import contextlib
import errno
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import NoReturn

from bertjax import leaving


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""


class StoppedBySignal(Exception):
    """A training loop stopped on SIGTERM/SIGINT after saving its state (and saying so); the
    same command resumes it. `cli` exits with 128 + the signal's number, the code a shell reports
    for a process that signal ended, so `train && export` and a scheduler do not take the run for
    finished. A process stopped by another's signal (the processes vote to stop together) has
    none of its own and reports SIGTERM, what schedulers send."""

    def __init__(self, signal_name: str | None):
        super().__init__(f"stopped by {signal_name or 'a signal to another process'}")
        self.exit_code = 128 + signal.Signals[signal_name or "SIGTERM"].value


class LostProcess(Exception):
    """A multi-process run lost one of its processes (a collective failed): a fault, not bad
    input. `cli` prints it as one line and exits 1 (see `leaving`)."""


class RunDiverged(Exception):
    """A pretraining run diverged past what its rollbacks mend (train.max_rollbacks spent, or the
    checkpoints from before the trouble rotated away): `cli` prints it as one line and exits 1.
    An exception, not sys.exit: a script or notebook calling `pretrain` (a search over learning
    rates, say) catches it as it catches any other failure."""


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is XLA's RESOURCE_EXHAUSTED (a step, batch or model larger than the GPU's
    memory, or on CPU the host's) or numpy's MemoryError (a batch's host arrays). XLA's is told
    by the status its message starts with, so this file need not import jax."""
    return isinstance(e, MemoryError) or str(e).lstrip().startswith("RESOURCE_EXHAUSTED:")


def first_line(e: BaseException) -> str:
    """An exception's message's first line (its type's name when it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@contextlib.contextmanager
def out_of_memory_is_said(fix: str) -> Iterator[None]:
    """Inside the block, running out of memory (`out_of_memory`) becomes a UserError: the first
    line of the error, then `fix`, the keys that shrink what the step holds. It was a 30-line
    traceback, for the error a GPU user meets most."""
    try:
        yield
    except Exception as e:
        if not out_of_memory(e):
            raise
        raise UserError(f"out of memory ({first_line(e)[:200]}); {fix}") from None


def exit_now(message: str, code: int) -> NoReturn:
    """Print `error: message` and end the process at once, from any thread. Not sys.exit: in a
    multi-process run jax.distributed's shutdown at exit waits at a barrier for every process,
    for a lost one until its heartbeat times out (100 s), then aborts with a C++ stack trace."""
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    leaving.end_process(code)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where it lands so that writers' cleanups run, as for Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise _Terminated


def cli(main: Callable[[list[str]], None]) -> None:
    """Run `main(sys.argv[1:])`, turning a `UserError` into `error: ...` on stderr and exit 2
    (Ctrl-C or SIGTERM: one line and 128 + the signal's number, 130 or 143, the shell's code for
    it, as the loops exit after saving, see `StoppedBySignal`; a reader that closed the pipe:
    quietly, 141); warnings print as one `warning: ...` line (no source file and line). In a
    multi-process run, a process that fails (its error line, or a bug's traceback) ends every
    process within seconds (`leaving`)."""
    warnings.showwarning = _one_line_warning
    sys.excepthook = _traceback_then_exit
    # SIGTERM (kill, a scheduler's time limit) stops the same way as Ctrl-C: writers' cleanups
    # run (prepare removes its .tmp files) instead of the process vanishing. The training
    # loops replace this with their own handler (save a checkpoint, then stop) while they run.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        # The training commands name their own keys to lower (out_of_memory_is_said); this is
        # for the others (predict, export)
        with out_of_memory_is_said("the model or its batch is too large for this device: give a "
                                   "smaller --batch-size where the command takes one, or run "
                                   "where the device has more memory"):
            main(sys.argv[1:])
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        # The work is done and said. A SIGTERM in the ~0.5 s the interpreter then takes to exit
        # (jax's teardown) ended an export whose bundle was complete with 143 and no word:
        # Python restores the default action before that teardown, but keeps "ignore".
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except UserError as e:
        _fail(" ".join(str(e).split("\n")), 2)
    except StoppedBySignal as e:  # the loop has said where it saved
        sys.exit(e.exit_code)
    except (LostProcess, RunDiverged) as e:
        _fail(str(e), 1)
    except KeyboardInterrupt as e:  # where no loop catches it (prepare, export, predict)
        name = "SIGTERM" if isinstance(e, _Terminated) else "SIGINT"
        # a process of a multi-process run takes the others along (they wait for it)
        _fail(f"interrupted ({name}); outputs are renamed into place only when complete, so "
              "nothing half-written is taken as done: run the same command again",
              128 + signal.Signals[name].value)
    except BrokenPipeError:  # `predict ... | head`: the reader has all it wanted
        # quietly, with the code of a process SIGPIPE ended (Python ignores SIGPIPE), as `yes |
        # head` reports; stdout goes to /dev/null first, or flushing it at exit fails again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE.value)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            _fail(f"no space left on the disk holding {e.filename or 'the output'}; free space or "
                  "choose another directory, then run the same command again", 2)
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and e.filename:
            # e.g. a run directory made read-only after its first run: the writers write through
            # temporaries, so the refusal came before anything was replaced
            _fail(f"cannot access {e.filename} ({e.strerror}); give this user permission there "
                  "or choose another path, then run the same command again", 2)
        raise


def _fail(message: str, code: int) -> NoReturn:
    """Print `error: message` and exit with `code`; a process of a multi-process run takes the
    others along (`leaving`)."""
    line = f"error: {message}"
    if leaving.in_a_multi_process_run():
        leaving.leave_the_run(code, lambda stderr: print(line, file=stderr), message)
    print(line, file=sys.stderr)
    sys.exit(code)


def _traceback_then_exit(kind, value, tb) -> None:
    """sys.excepthook: a bug's traceback as Python prints it; a process of a multi-process run
    then takes the others along (`leaving`)."""
    if not leaving.in_a_multi_process_run():
        sys.__excepthook__(kind, value, tb)
        return
    first_line = (str(value).strip().splitlines() or [""])[0][:300]
    leaving.leave_the_run(1, lambda stderr: traceback.print_exception(kind, value, tb,
                                                                      file=stderr),
                          f"a bug, {kind.__name__}: {first_line} (its traceback is in that "
                          "process's log)")
