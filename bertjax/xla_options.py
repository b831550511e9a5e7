"""`train.xla_flags`: XLA options for one run's compiled steps, written as XLA_FLAGS writes them
("--xla_gpu_enable_triton_gemm=false --xla_gpu_dot_merger_threshold_mb=0").

jax.jit hands them to the step's compile alone (`compiler_options`), so they belong to the run:
recorded in its config.yaml, the same on every process (a config key), and part of the
persistent compilation cache's key. XLA_FLAGS, by contrast, is read once per process and applies
to everything it compiles. An option only one backend reads (xla_gpu_...) is accepted and
ignored by the others. Which options pay off on a GPU, bench/gpu_suite.py measures.
"""

import jax

from bertjax.domains import XLA_FLAG
from bertjax.errors import UserError

Options = tuple[tuple[str, bool | int | str], ...]  # hashable: steps close over them


def compiler_options(flags: str) -> Options:
    """`flags` as jax's compiler_options take them (booleans and integers typed: XLA refuses
    "false" for a bool), checked by XLA on this backend: an option it does not know, or a value
    of the wrong type, is a UserError here rather than at the first step."""
    options = tuple(_typed(*XLA_FLAG.fullmatch(flag).groups()) for flag in flags.split())
    if options:
        try:
            jax.jit(lambda: 0, compiler_options=dict(options)).lower().compile()
        except jax.errors.JaxRuntimeError as e:
            reason = str(e).splitlines()[0].removeprefix("INVALID_ARGUMENT: ").rstrip(".")
            raise UserError(f"train.xla_flags={flags}: {reason}; give options this jaxlib's XLA "
                            "knows (--xla_name=value, as in XLA_FLAGS)") from None
    return options


def jit_options(options: Options) -> dict:
    """jax.jit's keyword for `options`: none at all when empty, so a run without them compiles
    (and caches) the very programs it did before the key existed."""
    return {"compiler_options": dict(options)} if options else {}


def _typed(name: str, value: str) -> tuple[str, bool | int | str]:
    if value in ("true", "false"):
        return name, value == "true"
    return name, int(value) if value.lstrip("-").isdigit() else value
