"""The tests' in-memory compilation cache (compile_memo.py): a repeated program is not compiled
again, and a program that calls back into Python still calls its own callback."""

import compile_memo
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import compiler


@pytest.fixture
def backend_compiles(monkeypatch) -> list[str]:
    """The names of the programs XLA compiles while the test runs."""
    compiled = []
    real = compiler.backend_compile_and_load

    def counting(backend, module, *args, **kwargs):
        compiled.append(str(module.operation.attributes["sym_name"]))
        return real(backend, module, *args, **kwargs)

    monkeypatch.setattr(compiler, "backend_compile_and_load", counting)
    return compiled


def test_this_jax_is_hooked():
    # Not hooked, the suite still passes, only slower: say so here, once.
    assert compiler._cache_read is compile_memo._read, f"jax {jax.__version__}"
    assert compiler._cache_write is compile_memo._write, f"jax {jax.__version__}"


def test_the_same_program_from_another_function_is_compiled_once(backend_compiles):
    def make():  # a new function object each time: jax's own caches miss
        return jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.123456)

    x = np.arange(7.0, dtype=np.float32)
    first, second = make()(x), make()(x)
    np.testing.assert_array_equal(first, second)
    assert len(backend_compiles) == 1, backend_compiles
    make()(np.arange(8.0, dtype=np.float32))  # another shape is another program
    assert len(backend_compiles) == 2, backend_compiles


def test_a_program_with_a_host_callback_calls_its_own(backend_compiles):
    seen = []

    def make(tag):
        def f(x):
            jax.debug.callback(lambda v: seen.append((tag, float(v))), x.sum())
            return x + 1.0
        return jax.jit(f)

    x = np.arange(3.0, dtype=np.float32)
    make("a")(x).block_until_ready()
    make("b")(x).block_until_ready()
    jax.effects_barrier()
    assert seen == [("a", 3.0), ("b", 3.0)]
    assert len(backend_compiles) == 2, backend_compiles
