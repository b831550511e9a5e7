"""Optimizer, learning-rate schedules and the gradient-accumulation batch ramp.

AdamW (Loshchilov & Hutter 2019) after global-norm clipping; matrices and embeddings decay, biases
and LayerNorm parameters do not (as in BERT's optimizer). The schedule's numbers are arguments of
the compiled step (`ScheduleArgs`). The batch ramp grows the accumulated micro-batches in at most
`stages` steps, so the train step compiles at most `stages + 1` times (one per accumulation count).
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax.config import OptimConfig, TrainConfig
from bertjax.layers import LayerNorm


def decay_mask(params):
    """True for leaves that get weight decay: every array except biases and LayerNorm's."""
    def mark(path, leaf):
        if isinstance(leaf, LayerNorm):
            return jax.tree.map(lambda _: False, leaf)
        name = getattr(path[-1], "name", "") if path else ""
        return leaf is not None and name != "bias"

    return jax.tree_util.tree_map_with_path(mark, params,
                                            is_leaf=lambda x: isinstance(x, LayerNorm))


class ScheduleArgs(NamedTuple):
    """The learning-rate schedule's numbers: arguments of the train step, not constants of its
    program, so a run with another optim.lr, warm-up or length (a learning-rate sweep, a
    rollback's lower rate) runs the program already compiled (or in JAX's persistent cache)."""

    peak: np.float32  # optim.lr, times a rollback's factor
    warmup: np.int32  # steps
    rest: np.int32  # steps after the warm-up (at least 1)
    final_fraction: np.float32  # of the peak, where one_cycle and linear end


def schedule_args(cfg: OptimConfig, total_steps: int, factor: float = 1.0) -> ScheduleArgs:
    warmup = int(cfg.warmup * total_steps)
    return ScheduleArgs(np.float32(cfg.lr * factor), np.int32(warmup),
                        np.int32(max(total_steps - warmup, 1)), np.float32(cfg.final_lr_fraction))


def learning_rate(kind: str, count, args: ScheduleArgs) -> jax.Array:
    """The rate after `count` updates. one_cycle: linear warm-up to the peak then cosine anneal
    to the final fraction (Smith 2018); linear: warm-up then linear decay; constant: warm-up
    then flat. optax's schedules' arithmetic (linear_schedule, cosine_decay_schedule,
    join_schedules), on arrays instead of Python numbers."""
    peak, final = jnp.asarray(args.peak), jnp.asarray(args.final_fraction)
    count, warmup, rest = (jnp.asarray(x, jnp.int32) for x in (count, args.warmup, args.rest))
    after = count - warmup
    if kind == "one_cycle":
        done = jnp.minimum(after, rest).astype(jnp.float32)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * done / rest.astype(jnp.float32)))
        rate = peak * ((1 - final) * cosine + final)
    elif kind == "linear":
        rate = (peak - peak * final) * (1 - jnp.clip(after, 0, rest) / rest) + peak * final
    else:
        rate = peak
    warming = (0.0 - peak) * (1 - jnp.clip(count, 0, warmup) / jnp.maximum(warmup, 1)) + peak
    return jnp.where(count < warmup, warming, rate)


def schedule(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The run's learning rate after `count` updates, on the host (for the logs)."""
    args = schedule_args(cfg, total_steps)
    return lambda count: float(learning_rate(cfg.schedule, count, args))


def scale_by_schedule_args(kind: str) -> optax.GradientTransformationExtraArgs:
    """optax.scale_by_learning_rate(schedule), whose numbers come with each update
    (`schedule=ScheduleArgs`). Its state is the one optax's keeps (ScaleByScheduleState: the
    count of updates), so checkpoints of either restore into the other."""
    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, schedule: ScheduleArgs, **extra_args):
        step_size = -learning_rate(kind, state.count, schedule)
        updates = jax.tree.map(lambda g: step_size.astype(g.dtype) * g, updates)
        # optax's +1 that stops at int32's largest value, written out so as not to depend on
        # which optax release names it (safe_increment; earlier, safe_int32_increment).
        count = jnp.where(state.count < jnp.iinfo(jnp.int32).max, state.count + 1, state.count)
        return updates, optax.ScaleByScheduleState(count=count)

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg: OptimConfig, params) -> optax.GradientTransformationExtraArgs:
    """AdamW (optax.adamw's three parts) after clipping; its update takes `schedule=`."""
    adamw = optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                        optax.add_decayed_weights(cfg.weight_decay, decay_mask(params)),
                        scale_by_schedule_args(cfg.schedule))
    if cfg.clip <= 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.clip), adamw)


def init_optimizer(optimizer: optax.GradientTransformation, model):
    return optimizer.init(eqx.filter(model, eqx.is_inexact_array))


@dataclass(frozen=True)
class BatchRamp:
    """Global batch per step: `start` -> `end` sequences, linearly over the first `ramp_steps`
    steps, quantised to `stages` increments of whole micro-batches."""

    micro: int
    start: int
    end: int
    ramp_steps: int
    stages: int

    @classmethod
    def from_config(cls, cfg: TrainConfig, total_steps: int) -> "BatchRamp":
        end = cfg.batch_end or cfg.micro_batch
        return cls(cfg.micro_batch, cfg.batch_start or end, end,
                   int(cfg.batch_ramp * total_steps), max(cfg.batch_ramp_stages, 1))

    def accum(self, step: int) -> int:
        """Micro-batches accumulated at `step` (integer arithmetic: no float boundary drift)."""
        first, last = self.start // self.micro, self.end // self.micro
        if step >= self.ramp_steps:
            return last
        stage = step * self.stages // self.ramp_steps
        return first + round(stage * (last - first) / self.stages)

    def batch(self, step: int) -> int:
        return self.accum(step) * self.micro

    def warn_if_end_unreached(self, steps: int) -> None:
        """A ramp over every step (train.batch_ramp=1.0) ends in its last stage, one increment
        short of train.batch_end, which comes only after the ramp: said, as the run never trains
        at it."""
        if self.ramp_steps >= steps and self.start != self.end:
            warnings.warn(f"the batch ramp spans all {steps:,} steps, so the last batch trained "
                          f"is {self.batch(steps - 1):,}, never train.batch_end={self.end:,} (it "
                          "comes after the ramp); lower train.batch_ramp below 1 to train at it",
                          stacklevel=2)

    def sequences_before(self, step: int) -> int:
        """Sequences consumed by steps [0, step): a sum over <= stages + 1 constant pieces, so
        resuming at any step is O(1) in the step."""
        starts = sorted({-(-k * self.ramp_steps // self.stages) for k in range(self.stages)}
                        | {self.ramp_steps})
        total = 0
        for lo, hi in zip(starts, [*starts[1:], step], strict=True):
            if lo >= step:
                break
            total += (min(hi, step) - lo) * self.batch(lo)
        return total


def steps_for_tokens(cfg: TrainConfig, tokens: int, seq_len: int,
                     read: tuple[int, int] = (0, 0)) -> int:
    """Smallest step count whose run reads `tokens` tokens, its ramp spanning train.batch_ramp
    of those very steps (a ramp sized for another count leaves the budget short: 70 % of it
    with batch_ramp=1). Every step reads at least micro_batch rows, which bounds the search.
    `read`: (step, tokens its first steps read), a resumed checkpoint's, counted as they were
    read (at an earlier seq_len or batch, say); the steps after it read at `seq_len`."""
    done, before = read

    def reads(steps: int) -> int:
        ramp = BatchRamp.from_config(cfg, steps)
        return before + (ramp.sequences_before(steps) - ramp.sequences_before(done)) * seq_len

    lo = max(1, done)
    hi = max(lo, done + -(-(tokens - before) // (cfg.micro_batch * seq_len)))
    while lo < hi:
        mid = (lo + hi) // 2
        if reads(mid) >= tokens:
            hi = mid
        else:
            lo = mid + 1
    return lo
