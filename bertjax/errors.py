"""User-facing errors and the command-line wrapper that turns them into one line + exit code 2.

Anything a user can get wrong (config, path, data, checkpoint) raises `UserError` with a message
naming the thing and the fix; `cli` prints it without a traceback, and a full disk too (wherever
it strikes: the writers that can leave temporaries behind catch it themselves and clean up).
"""

import errno
import signal
import sys
import warnings
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cli(main: Callable[[list[str]], None]) -> None:
    """Run `main(sys.argv[1:])`, turning a `UserError` into `error: ...` on stderr and exit 2
    (Ctrl-C: one line and 130, the shell's code for it); warnings print as one `warning: ...`
    line (no source file and line)."""
    warnings.showwarning = _one_line_warning
    # SIGTERM (kill, a scheduler's time limit) stops the same way as Ctrl-C: writers' cleanups
    # run (prepare removes its .tmp files) instead of the process vanishing. The training
    # loops replace this with their own handler (save a checkpoint, then stop) while they run.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main(sys.argv[1:])
    except UserError as e:
        message = " ".join(str(e).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C where no loop catches it (prepare, export, predict)
        print("error: interrupted; outputs are renamed into place only when complete, so "
              "nothing half-written is taken as done: run the same command again",
              file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: no space left on the disk holding {e.filename or 'the output'}; free "
              "space or choose another directory, then run the same command again",
              file=sys.stderr)
        sys.exit(2)
