"""Divergence in pretraining: which steps are trouble, and the rollback that follows.

Trouble is a non-finite step (float16: `train.max_nonfinite` in a row, since its dynamic loss
scale overflows now and then by design; an overflow the scale's halving deals with, a finite
loss at a scale above 1, is skipped and counts for nothing, as torch.amp.GradScaler skips it) or
a loss spike: a finite loss above
`train.rollback_spike` times the running mean of the losses before it and, once the statistics
have seen `train.rollback_warmup` steps, also above that mean by `train.rollback_sigmas` running
standard deviations (exponential moving averages). The factor test counts from the second step:
a run whose lr is far too high explodes at once (bf16, lr=100: loss 9.1 -> 3,411 at step 3).

A rollback restores the newest checkpoint from before the trouble (`rollback_target`), or the
initial state when there is none: it is before any trouble by definition, needs no disk, and
early divergence (the common case: too high a learning rate) gets another try at a lower rate.
Newer checkpoints are deleted, the steps up to the bad one are skipped, the lr is lowered.

The watch's state (statistics, optimizer updates, rollbacks, the cumulative lr factor, the
skipped step ranges, the single non-finite steps not applied) is JSON in every checkpoint's
meta, so a resume makes the same decisions.
Steps count from 1 here: a checkpoint at s holds the state after step s, and step s's loss is
computed from the checkpoint-(s-1) state.
"""

import dataclasses
import math
from collections.abc import Callable

from bertjax.checkpoint import Checkpoints
from bertjax.config import TrainConfig
from bertjax.errors import RunDiverged
from bertjax.metrics import Monitor

ALPHA = 0.02  # weight of the newest loss in the running mean and variance (~50-step horizon)


@dataclasses.dataclass(frozen=True)
class Trouble:
    step: int  # the step whose loss showed it
    first: int  # its first step: a non-finite streak's start, else `step`
    reason: str


class Diverged(Exception):
    """Trouble in the metrics of a step already run: the loop rolls back."""

    def __init__(self, trouble: Trouble):
        super().__init__(trouble.reason)
        self.trouble = trouble


@dataclasses.dataclass
class Watch:
    cfg: TrainConfig
    nonfinite_limit: int  # non-finite steps in a row that are trouble
    mean: float = 0.0
    var: float = 0.0
    seen: int = 0  # finite losses in the statistics
    streak: int = 0  # non-finite steps in a row so far
    streak_start: int = 0
    updates: int = 0  # optimizer updates in the state (a non-finite step applies none)
    rollbacks: int = 0
    lr_factor: float = 1.0  # the schedule's multiplier: rollback_lr_factor ** rollbacks
    skipped: list = dataclasses.field(default_factory=list)  # [first, last] steps rolled back
    # Single non-finite steps not applied, and kept (float16: the loss scale's overflows).
    unapplied: list = dataclasses.field(default_factory=list)

    SAVED = ("mean", "var", "seen", "streak", "streak_start", "updates", "rollbacks",
             "lr_factor", "skipped", "unapplied")

    @classmethod
    def restore(cls, cfg: TrainConfig, nonfinite_limit: int, saved: dict | None,
                step: int = 0) -> "Watch":
        """From a checkpoint's meta["divergence"]; None (a fresh run, or a checkpoint written
        before the watch existed) starts empty with `step` updates."""
        watch = cls(cfg, nonfinite_limit, updates=step)
        for name in cls.SAVED if saved else ():
            if name in saved:  # `unapplied` is newer than the rest: older checkpoints lack it
                setattr(watch, name, saved[name])
        return watch

    def saved(self) -> dict:
        return {name: getattr(self, name) for name in self.SAVED}

    def see(self, step: int, finite: bool, loss: float, overflow: bool = False) -> Trouble | None:
        """Take step `step`'s outcome; trouble when it diverges. `overflow`: float16 skipped
        the step for its loss scale alone (which halved): not counted in a streak (one that
        follows starts at the first of them), not trouble. Counted,
        a scale set high (2**30) overflowed 10 steps in a row, and each rollback restored the
        scale that overflowed: 3 rollbacks, then "lower optim.lr", where GradScaler trains."""
        if not finite and not (self.unapplied and self.unapplied[-1] == step - 1):
            # The first of a run of non-finite steps, the scale's overflows included: a state
            # broken for good (gradients past float16 at every scale) overflows while the scale
            # halves to 1 before its steps count. Started at the first counted one, the rollback
            # went to a checkpoint written during the overflows, on the same broken weights.
            self.streak_start = step
        if not finite and overflow:
            self.unapplied = [*self.unapplied, step]
            return None
        if not finite:
            self.streak += 1
            if self.streak >= self.nonfinite_limit:
                return Trouble(step, self.streak_start,
                               f"{self.streak} non-finite step(s) in a row" if self.streak > 1
                               else "a non-finite loss or gradient")
            self.unapplied = [*self.unapplied, step]  # a rollback drops it with the range
            return None
        self.streak = 0
        if self.is_spike(loss):
            return Trouble(step, step, f"loss {loss:.4g} against a running mean of "
                                       f"{self.mean:.4g} (std {math.sqrt(self.var):.3g})")
        self.updates += 1
        if self.seen == 0:
            self.mean = loss
        else:
            delta = loss - self.mean
            self.mean += ALPHA * delta
            self.var = (1.0 - ALPHA) * (self.var + ALPHA * delta * delta)
        self.seen += 1
        return None

    def is_spike(self, loss: float) -> bool:
        cfg = self.cfg
        if cfg.rollback_spike <= 0 or self.seen == 0 or loss <= cfg.rollback_spike * self.mean:
            return False
        return self.seen < cfg.rollback_warmup or \
            loss > self.mean + cfg.rollback_sigmas * math.sqrt(self.var)

    @property
    def exhausted(self) -> bool:
        return self.rollbacks >= self.cfg.max_rollbacks

    def rolled_back(self, trouble: Trouble, target: int, target_saved: dict | None) -> None:
        """The state is back at checkpoint `target` (0: the initial state) whose meta held
        `target_saved`; training goes on after `trouble.step` with a lower learning rate."""
        restored = Watch.restore(self.cfg, self.nonfinite_limit, target_saved, target)
        for name in ("mean", "var", "seen", "updates", "unapplied"):
            setattr(self, name, getattr(restored, name))
        self.streak = 0
        self.skipped = [*restored.skipped, [target + 1, trouble.step]]
        self.rollbacks += 1
        self.lr_factor *= self.cfg.rollback_lr_factor


def rollback_target(steps: list[int], trouble: Trouble) -> int:
    """The newest checkpoint step from before the trouble, 0 (the initial state) when none is.
    Step `first`'s loss came from the checkpoint-(first-1) state, so that one is suspect too:
    the target is at most first - 2."""
    return max((s for s in steps if s <= trouble.first - 2), default=0)


def rotated_away(watch: Watch, trouble: Trouble) -> int:
    """The newest step from before `trouble` that the run checkpointed (a multiple of
    train.checkpoint_every at most `first - 2`, outside the steps rollbacks skipped, whose
    checkpoints went with them); 0 when there is none. Found in no kept checkpoint, it went to
    train.keep_checkpoints' rotation."""
    every = watch.cfg.checkpoint_every
    step = (trouble.first - 2) // every * every if every else 0
    while step > 0 and any(first <= step <= last for first, last in watch.skipped):
        step -= every
    return max(step, 0)


def roll_back(watch: Watch, trouble: Trouble, checkpoints: Checkpoints, restore: Callable,
              initial: Callable, monitor: Monitor):
    """The state to go on with after `trouble` (the step after it comes next): the target
    checkpoint as `restore(step)` gives it, with its meta, or `initial()`. The
    checkpoints after the target are deleted, written on a state that was already diverging.
    After train.max_rollbacks the run stops instead: RunDiverged (the CLI: exit 1, one line). So
    it does, deleting nothing, when the checkpoints from before the trouble were rotated away
    (keep_checkpoints=1): the initial state would throw the whole run away, with its only
    checkpoint."""
    target = rollback_target(checkpoints.all_steps(), trouble)
    if target == 0 and (gone := rotated_away(watch, trouble)):
        monitor.log(trouble.step, {"diverged": trouble.reason, "stopped": True})
        raise RunDiverged(f"training diverged at step {trouble.step} ({trouble.reason}); its "
                 f"checkpoints from before that (step {gone} and earlier) were rotated away "
                 f"(train.keep_checkpoints={watch.cfg.keep_checkpoints}), so a rollback would "
                 f"start over from the initial state: stopping instead, {checkpoints.directory} "
                 f"untouched (its checkpoints may hold the diverging state). Resume with a lower "
                 f"optim.lr, and keep 2 or more checkpoints so that a rollback finds one")
    for step in checkpoints.all_steps():
        if step > target:
            checkpoints.delete(step)
    if watch.exhausted:
        monitor.log(trouble.step, {"diverged": trouble.reason, "stopped": True})
        kept = f"step {target} is the newest checkpoint" if target else "no checkpoint is"
        raise RunDiverged(f"training diverged at step {trouble.step} ({trouble.reason}) after "
                 f"{watch.rollbacks} rollback(s); stopping. {kept} from before it, in "
                 f"{checkpoints.directory}. Lower optim.lr (the rollbacks took it to "
                 f"x{watch.lr_factor:g}) or raise train.max_rollbacks")
    if target:
        state, meta = restore(target)
        saved = meta.get("divergence")
    else:
        state, saved = initial(), None
    watch.rolled_back(trouble, target, saved)
    monitor.log(trouble.step, {"rollback": watch.rollbacks, "reason": trouble.reason,
                               "restored_step": target, "skipped_steps": [target + 1, trouble.step],
                               "lr_factor": watch.lr_factor})
    where = f"the checkpoint of step {target}" if target else "the initial state"
    monitor.write(f"step {trouble.step}: {trouble.reason}; rolled back to {where}, skipping steps "
                  f"{target + 1}-{trouble.step}, learning rate x{watch.lr_factor:g} from now on "
                  f"(rollback {watch.rollbacks} of {watch.cfg.max_rollbacks})")
    return state
