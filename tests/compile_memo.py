"""One XLA compilation per distinct program in each pytest process, kept in memory.

The tests build the same small programs again and again in one process (every in-process
pretraining or fine-tuning run makes its own jitted steps, and jax caches a compiled program
per function object): test_rollback's 18 tests compiled the same train step ~25 times. jax's
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
_lock = threading.Lock()
READ_ARGS = ["module_name", "cache_key", "compile_options", "backend", "executable_devices"]
WRITE_ARGS = ["cache_key", "compile_time_secs", "module_name", "backend", "executable",
              "host_callbacks"]


def _params(name: str) -> list[str] | None:
    fn = getattr(compiler, name, None)
    return None if fn is None else list(inspect.signature(fn).parameters)


def _read(module_name, cache_key, compile_options, backend, executable_devices):
    with _lock:
        return _executables.get(cache_key, (None, None))


def _write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks):
    if host_callbacks:  # baked into the program (jax.debug.print): jax does not cache these
        return
    with _lock:
        _executables[cache_key] = (executable, compile_time_secs)


def install() -> bool:
    """Route jax's compilation-cache read and write to this process's memory. Needs jax's
    compilation cache on (its keys are only computed then) and a cache directory set (none
    is read or written). False, and nothing changed, where jax's functions differ."""
    if _params("_cache_read") != READ_ARGS or _params("_cache_write") != WRITE_ARGS:
        return False
    compiler._cache_read, compiler._cache_write = _read, _write
    return True


def compiled_programs() -> int:
    """How many distinct programs this process has compiled since `install`."""
    with _lock:
        return len(_executables)
