"""Optimizer, learning-rate schedules and the gradient-accumulation batch ramp.

AdamW (Loshchilov & Hutter 2019) after global-norm clipping, with a structural weight-decay mask:
matrices and embeddings decay, biases and LayerNorm parameters do not (as in BERT's optimizer).
The batch ramp grows the number of accumulated micro-batches in at most `stages` steps, so the
train step compiles at most `stages + 1` times (one shape per accumulation count).
"""

import warnings
from dataclasses import dataclass

import equinox as eqx
import jax
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


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """one_cycle: linear warm-up to the peak then cosine anneal to `final_lr_fraction` (Smith
    2018); linear: warm-up then linear decay; constant: warm-up then flat."""
    warmup = int(cfg.warmup * total_steps)
    rest = max(total_steps - warmup, 1)
    final = cfg.lr * cfg.final_lr_fraction
    if cfg.schedule == "one_cycle":
        after = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.final_lr_fraction)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, final, rest)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def make_optimizer(cfg: OptimConfig, total_steps: int, params) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask(params))
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


def steps_for_tokens(cfg: TrainConfig, tokens: int, seq_len: int) -> int:
    """Smallest step count whose run reads `tokens` tokens, its ramp spanning train.batch_ramp
    of those very steps (a ramp sized for another count leaves the budget short: 70 % of it
    with batch_ramp=1). Every step reads at least micro_batch rows, which bounds the search."""
    def reads(steps: int) -> int:
        return BatchRamp.from_config(cfg, steps).sequences_before(steps) * seq_len

    lo, hi = 1, max(1, -(-tokens // (cfg.micro_batch * seq_len)))
    while lo < hi:
        mid = (lo + hi) // 2
        if reads(mid) >= tokens:
            hi = mid
        else:
            lo = mid + 1
    return lo
