"""How a process of a multi-process run leaves it when it fails, and takes the others along.

A process blocked in a collective cannot hear that another failed: it waited for the failed one
until its connections closed, and when that one was process 0 (it serves the run's coordination)
JAX aborted it with a C++ stack trace before it could say a word. So a failing process posts
why in the coordination service's key-value store (the store Orbax syncs through), and every
process watches that key from a thread: on it, each says which process failed and why, and
leaves. They all meet at jax.distributed's shutdown barrier and end within seconds, each in one
line, with the failed process's exit code.
"""

import atexit
import multiprocessing.util
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, TextIO

# Long enough for processes that met the same error a moment apart (a slower host) to meet at
# jax.distributed's shutdown barrier; short next to the 5 minutes that barrier waits by default.
LEAVE_WAIT_S = 10
FAILED_KEY = "bertjax/failed"  # its value: "<exit code> <process index> <why>"
# How long each of the watcher's waits lasts before it checks whether to stop: what a normal exit
# waits for it at most, and one request per process per interval at the coordinator.
WATCH_POLL_MS = 1000

# How long the watcher, leaving on another's post, waits for the main thread to unwind: its
# collective fails once the others are gone, and on the way out its cleanups run (a run
# directory it created and left empty was left behind with its lock file).
UNWIND_WAIT_S = 3

_claim = threading.Lock()  # held by the first thread to leave (the main one or the watcher)
_stop_watching = threading.Event()
_main_thread_unwound = threading.Event()


def in_a_multi_process_run() -> bool:
    """Whether this process joined a multi-process run, or is leaving one (its shutdown then has
    begun: a failure the leaving thread causes on the other, such as a collective cut short,
    must not be said as well)."""
    jax = sys.modules.get("jax")  # not imported: no run joined
    return _claim.locked() or (jax is not None and jax.distributed.is_initialized())


def leave_the_run(code: int, say: Callable[[TextIO], None], why: str | None) -> NoReturn:
    """Say this process's line (`say` writes it to the stream given), post `why` for the others
    (None: the watcher leaves on another's post), and end within LEAVE_WAIT_S (process 0: 5 s
    more, see below): at jax.distributed's shutdown barrier if every process comes to it by
    then, else alone.

    Not sys.exit: its shutdown waits at that barrier for 5 minutes, then aborts with a C++ stack
    trace. Not at once either: process 0 serves the run's coordination, and a process still
    connected to it when it vanishes is aborted before it can say its own line."""
    if not _claim.acquire(blocking=False):  # the other thread is leaving: it ends the process
        _main_thread_unwound.set()
        threading.Event().wait()
    import jax  # imported already: a run was joined

    # The error line is the last word: what the main thread, still at work while the watcher
    # leaves, would print from here on (a progress line) is dropped. It starts a line of its
    # own: the main thread may be halfway through one (a progress bar; print's text written,
    # its newline not yet), and "<that line>error: ..." hid the error from a reader's eye and
    # from grep (a CI failure).
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - open until os._exit
    stdout, stderr = (s.end_for_good() if isinstance(s, _LineEnds) else s
                      for s in (stdout, stderr))
    stdout.flush()
    say(stderr)
    stderr.flush()
    if why is not None:
        _post(code, jax.process_index(), why)
    leaving = threading.Thread(target=_shut_down_quietly, args=(jax,), daemon=True)
    leaving.start()
    # When the barrier is not met (a process is lost), process 0 leaves last, for that reason.
    leaving.join(LEAVE_WAIT_S + (5 if jax.process_index() == 0 else 0))
    if threading.current_thread() is not threading.main_thread():
        _main_thread_unwound.wait(UNWIND_WAIT_S)
    end_process(code)


def end_process(code: int) -> NoReturn:
    """os._exit(code), after multiprocessing's exit finalizers, which unlink its named semaphores
    (tqdm's write lock is one). Python 3.14 starts processes by forkserver, under which it tracks
    them, and one that os._exit left linked made its resource tracker report "leaked semaphore
    objects" (two lines) below the one-line error. A normal exit runs the same finalizers."""
    multiprocessing.util._run_finalizers(0)
    os._exit(code)


def _coordination_client():
    """JAX's client of the run's coordination service (private; Orbax uses it too), or None."""
    from jax._src import distributed

    return distributed.global_state.client


def _post(code: int, process: int, why: str) -> None:
    client = _coordination_client()
    if client is None:
        return
    try:  # the first process to fail posts; the others' posts are refused (the key is set)
        client.key_value_set(FAILED_KEY, f"{code} {process} {why[:2000]}")
    except Exception:  # noqa: BLE001 - already posted, or the coordinator is gone: nothing to add
        pass


def _shut_down_quietly(jax) -> None:
    try:
        jax.distributed.shutdown()
    except Exception:  # noqa: BLE001 - a peer already gone: nothing left to leave in order
        pass


class _LineEnds:
    """A text stream (sys.stdout, sys.stderr) that knows whether its last write ended a line."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._mid_line = False
        self._ended = False

    def write(self, text: str) -> int:
        if self._ended:
            return len(text)
        if text:  # a progress bar rewinds with "\r": what comes next overwrites it
            self._mid_line = not text.endswith(("\n", "\r"))
        return self._stream.write(text)

    def end_for_good(self) -> TextIO:
        """End the line written last, drop what is written here from now on (the rest of a
        print the main thread began: its newline), and return the stream below."""
        self._ended = True
        if self._mid_line:
            self._stream.write("\n")
        return self._stream

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def watch_for_failed_processes() -> None:
    """Start the watcher of a joined run; it stops before the interpreter exits (a thread still
    inside JAX's client then aborts the process). sys.stdout and sys.stderr learn where their
    lines end, so that the line it may say starts a line of its own."""
    import jax

    if not isinstance(sys.stderr, _LineEnds):
        sys.stdout, sys.stderr = _LineEnds(sys.stdout), _LineEnds(sys.stderr)
    watcher = threading.Thread(target=_watch, args=(jax,), name="bertjax-failure-watcher",
                               daemon=True)
    watcher.start()

    def stop() -> None:  # registered after jax's own exit handler, so it runs before it
        _stop_watching.set()
        watcher.join()

    atexit.register(stop)


def _watch(jax) -> None:
    client = _coordination_client()
    while not _stop_watching.is_set():
        try:
            posted = client.blocking_key_value_get(FAILED_KEY, WATCH_POLL_MS)
            break
        except jax.errors.JaxRuntimeError as e:
            if "DEADLINE_EXCEEDED" not in str(e):  # else nothing is posted yet
                return  # the client shut down or the coordinator is gone: collectives say so
    else:
        return
    code, process, why = posted.split(" ", 2)
    if int(process) == jax.process_index():
        return  # this process's own post: its main thread is leaving
    line = (f"error: process {process} of this {jax.process_count()}-process run failed, so "
            f"every process stops: {why}")
    leave_the_run(int(code), lambda stderr: print(line, file=stderr), None)
