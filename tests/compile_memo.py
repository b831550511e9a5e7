"""One XLA compilation per distinct program in each pytest process, kept in memory.

The tests build the same small programs again and again in one process (every in-process
pretraining or fine-tuning run makes its own jitted steps, and jax caches a compiled program
per function object): each of test_rollback's 14 in-process runs compiled the same train step
again, up to three times (log.md, session 33). jax's
persistent compilation cache would serve the repeats, but it serialises each executable to
write it, and that write is where the pytest workers crashed (conftest.py); the CLI
subprocesses keep using it. Here jax's own cache keys (program, compile options, devices,
flags, jax version) index the live executables of this process instead: nothing is
serialised or written, and a repeat gets the very executable the first compile made.

This hooks two private functions of jax._src.compiler (the persistent cache's read and write);
where a jax release changed them, `install` leaves jax as it is and the tests only run slower.
"""

import inspect
import threading

from jax._src import compiler

_executables: dict = {}  # cache key -> (executable, compile seconds)
_with_callbacks: set = set()  # keys of programs that call back into Python: never kept
_lock = threading.Lock()
# The two signatures seen: jax 0.10 passes host callbacks to the write, 0.11-0.12 to the read.
READ_ARGS = ["module_name", "cache_key", "compile_options", "backend", "executable_devices"]
WRITE_ARGS = ["cache_key", "compile_time_secs", "module_name", "backend", "executable"]


def _params(name: str) -> list[str] | None:
    fn = getattr(compiler, name, None)
    return None if fn is None else list(inspect.signature(fn).parameters)


def _read(module_name, cache_key, compile_options, backend, executable_devices,
          host_callbacks=()):
    with _lock:
        if host_callbacks:  # bound into the executable: a kept one would call the old ones
            _with_callbacks.add(cache_key)
        return _executables.get(cache_key, (None, None))


def _write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks=()):
    with _lock:
        if not host_callbacks and cache_key not in _with_callbacks:
            _executables[cache_key] = (executable, compile_time_secs)


def install() -> bool:
    """Route jax's compilation-cache read and write to this process's memory. Needs jax's
    compilation cache on (its keys are only computed then); no cache directory is read or
    written. False, and nothing changed, where jax's functions are not the ones known."""
    read, write = _params("_cache_read"), _params("_cache_write")
    known = (read, write) in [(READ_ARGS, WRITE_ARGS + ["host_callbacks"]),  # jax 0.10
                              (READ_ARGS + ["host_callbacks"], WRITE_ARGS)]  # jax 0.11-0.12
    if known:
        compiler._cache_read, compiler._cache_write = _read, _write
    return known

