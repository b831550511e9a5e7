"""`train.xla_flags`: XLA options for one run's compiled steps, written as XLA_FLAGS writes them
("--xla_gpu_enable_triton_gemm=false --xla_gpu_dot_merger_threshold_mb=0").

jax.jit hands them to the step's compile alone (`compiler_options`), so they belong to the run:
recorded in its config.yaml, the same on every process (a config key), and part of the
persistent compilation cache's key. XLA_FLAGS, by contrast, is read once per process and applies
to everything it compiles. An option only one backend reads (xla_gpu_...) is accepted and
ignored by the others. Which options pay off on a GPU, bench/gpu_suite.py measures.
"""

import functools
import re
from pathlib import Path

import jax

from bertjax.domains import XLA_FLAG
from bertjax.errors import UserError

Options = tuple[tuple[str, bool | str], ...]  # hashable: steps close over them


# XLA_FLAGS's spellings of a boolean value (tsl's flag parser); compiler_options takes a bool.
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_NOT_A_BOOL = re.compile(r"While setting option (\w+), '(.*)' is not a valid bool value")
# Options XLA reads once, when the backend starts (from XLA_FLAGS): given to one compile they
# are accepted and do nothing.
AT_START = {"xla_force_host_platform_device_count": "the number of CPU devices"}
# xla_dump_to's values that name no folder (XLA's dump.cc: stdout, the test runner's folder).
DUMP_ELSEWHERE = {"", "-", "sponge", "test_undeclared_outputs_dir"}


@functools.cache  # a run asks twice (its early check, then its steps): XLA checks once
def compiler_options(flags: str) -> Options:
    """`flags` as jax's compiler_options take them, checked by XLA on this backend: an option
    it does not know, or a value of the wrong type, is a UserError here rather than at the first
    step. Values go as text, which XLA parses for the option's type (a number for a float or a
    text option too: 1, 123), except booleans: XLA takes only a bool or "True"/"False" for
    those, so a value XLA refuses as a bool that XLA_FLAGS spells as one (true, 0, ...) is
    typed and tried again. The last of a repeated option wins, as in XLA_FLAGS."""
    options = dict(XLA_FLAG.fullmatch(flag).groups() for flag in flags.split())
    for name, what in AT_START.items():
        if name in options:
            raise UserError(f"train.xla_flags=--{name}={options[name]}: XLA reads {what} once, "
                            f"when JAX starts, not per compile; set it in the environment "
                            f"instead: XLA_FLAGS=--{name}={options[name]}")
    _make_dump_folder(options.get("xla_dump_to", ""))
    while options:
        try:
            jax.jit(lambda: 0, compiler_options=options).lower().compile()
            break
        except jax.errors.JaxRuntimeError as e:
            reason = str(e).splitlines()[0].removeprefix("INVALID_ARGUMENT: ").rstrip(".")
            bool_wanted = _NOT_A_BOOL.match(reason)
            value = options.get(bool_wanted[1]) if bool_wanted else None
            if not isinstance(value, str) or value.lower() not in BOOLEANS:
                raise UserError(f"train.xla_flags={flags}: {reason}; give options this jaxlib's "
                                "XLA knows (--xla_name=value, as in XLA_FLAGS)") from None
            options[bool_wanted[1]] = BOOLEANS[value.lower()]
    return tuple(options.items())


def _make_dump_folder(folder: str) -> None:
    """Create xla_dump_to's folder now: XLA, unable to, logs an error at every compile and the
    run goes on without its dumps (exit 0)."""
    if folder in DUMP_ELSEWHERE:
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"train.xla_flags=--xla_dump_to={folder}: cannot create that folder "
                        f"({e.strerror}); give a folder this process can write") from None


def jit_options(options: Options) -> dict:
    """jax.jit's keyword for `options`: none at all when empty, so a run without them compiles
    (and caches) the very programs it did before the key existed."""
    return {"compiler_options": dict(options)} if options else {}

