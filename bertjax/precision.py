"""Mixed precision as a value: the compute dtype, casts, fp16 dynamic loss scaling; the
compute dtype a GPU would run without its tensor cores (bfloat16 before Ampere).

Parameters and optimizer state are always f32; the loss function casts the model to the
`compute` dtype, so gradients come back in f32. LayerNorm statistics, softmax and
the loss are computed in f32 regardless, and every head returns f32 logits (see ops.py,
attention.py, model.py and loss.py).
"""

import warnings
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Precision:
    compute: jnp.dtype = jnp.float32

    @classmethod
    def from_names(cls, compute: str = "float32") -> "Precision":
        return cls(jnp.dtype(compute))

    def cast_to_compute(self, tree):
        """Floating arrays of `tree` (e.g. the model) in compute dtype; integers untouched."""
        return cast_floating(tree, self.compute)


def nvidia_compute_capability(device) -> float | None:
    """An NVIDIA GPU's compute capability (7.5 for a T4, 9.0 for an H100), None for any other
    device. Neither the kind nor the platform version names NVIDIA every time (a V100 is "Tesla
    V100-SXM2-16GB"; an H100 compiled for without one, bench/gpu_aot.py, has no "cuda" in its
    version), so a GPU is NVIDIA's unless it is ROCm's, and then has a "major.minor" capability.
    """
    version = getattr(getattr(device, "client", None), "platform_version", "").lower()
    if device.platform != "gpu" or "rocm" in version or device.device_kind.startswith("AMD"):
        return None
    try:
        return float(device.compute_capability)  # "9.0"
    except (AttributeError, TypeError, ValueError):
        return None


def slow_compute_dtype(compute: str, device=None) -> str | None:
    """Why `compute` (precision.compute) wastes `device` (default: the first), or None.

    Tensor cores take bfloat16 from Ampere (compute capability 8.0) on; before it (V100, T4,
    RTX 20xx: the GPUs a budget most often buys) they take float16 only, so bfloat16 matmuls
    run without them (not measured here: no such GPU).
    """
    device = jax.devices()[0] if device is None else device
    capability = nvidia_compute_capability(device)
    if jnp.dtype(compute) != jnp.bfloat16 or capability is None or capability >= 8.0:
        return None
    return (f"precision.compute=bfloat16 on {device.device_kind} (compute capability "
            f"{capability}): its tensor cores take float16, not bfloat16, which runs without them; "
            "precision.compute=float16 uses them (with dynamic loss scaling)")


def warn_if_slow_compute_dtype(compute: str) -> None:
    """Say `slow_compute_dtype`'s reason as a warning (a run still starts: it is only slower)."""
    reason = slow_compute_dtype(compute)
    if reason:
        warnings.warn(reason, stacklevel=2)


def cast_floating(tree, dtype):
    def cast(x):
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


class LossScale(eqx.Module):
    """Dynamic loss scale (Micikevicius et al. 2018): grow after `period` finite steps, halve on
    overflow. Its fields are arrays so it lives in the train state and checkpoints.

    torch.amp.GradScaler's rule, with two differences kept: a halving stops at 1 (apex's and
    DeepSpeed's min_loss_scale: an overflow at scale 1 is not one scaling can cure), and a scale
    set below 1 stays there on an overflow instead of rising to it."""

    scale: jax.Array
    finite_steps: jax.Array
    period: int = eqx.field(static=True)

    @classmethod
    def create(cls, initial: float, period: int) -> "LossScale":
        return cls(jnp.asarray(initial, jnp.float32), jnp.asarray(0, jnp.int32), period)

    def unscale(self, grads):
        return jax.tree.map(lambda g: g / self.scale.astype(g.dtype), grads)

    def update(self, grads_finite: jax.Array) -> "LossScale":
        grow = self.finite_steps + 1 >= self.period
        # As GradScaler: a doubling to inf is not taken (every later step would overflow and
        # halve inf to inf: no update ever again); the counter restarts all the same.
        doubled = jnp.where(jnp.isfinite(self.scale * 2.0), self.scale * 2.0, self.scale)
        scale = jnp.where(
            grads_finite,
            jnp.where(grow, doubled, self.scale),
            jnp.minimum(self.scale, jnp.maximum(self.scale * 0.5, 1.0)),
        )
        steps = jnp.where(grads_finite & ~grow, self.finite_steps + 1, 0)
        return LossScale(scale, steps.astype(jnp.int32), self.period)


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)
