"""Divergence and rollback (bertjax.divergence, pretrain_loop.Loop): the watch's rule on its own,
then in-process pretraining runs on a tiny corpus with trouble injected at a chosen step through
the train step's learning-rate multiplier (NaN: the state itself turns non-finite; x1000: a loss
spike follows). Also the metrics file: strict JSON, one row per step after a resume."""

import json
import math
import os
import signal

import jax
import numpy as np
import pytest
from conftest import tiny_run_config

from bertjax import config as config_lib
from bertjax import pretrain_loop, pretrain_run
from bertjax.checkpoint import Checkpoints
from bertjax.divergence import Trouble, Watch, rollback_target
from bertjax.errors import RunDiverged, StoppedBySignal
from bertjax.files import json_text
from bertjax.metrics import drop_rows_after
from bertjax.optim import BatchRamp
from bertjax.pretrain import pretrain
from bertjax.step import abstract_state

STEPS = 12


# ---- the rule ----
def watch(**train) -> Watch:
    return Watch.restore(config_lib.load([], [f"train.{k}={v}" for k, v in train.items()]).train,
                         nonfinite_limit=1, saved=None)


def test_a_falling_noisy_loss_is_no_trouble():
    w, rng = watch(), np.random.default_rng(0)
    for step in range(1, 500):
        loss = 2.0 + 7.0 * math.exp(-step / 50) + 0.3 * rng.standard_normal()
        assert w.see(step, True, loss) is None, step
    assert w.updates == 499 and w.seen == 499


def test_an_explosion_at_the_start_is_a_spike():
    # bf16 with optim.lr=100 on the demo: 9.09, 9.06, then 3,411 at step 3.
    w = watch()
    assert w.see(1, True, 9.09) is None and w.see(2, True, 9.06) is None
    trouble = w.see(3, True, 3411.0)
    assert trouble == Trouble(3, 3, trouble.reason) and "3411" in trouble.reason


def test_after_the_warmup_a_spike_must_also_stand_out_of_the_noise():
    w = watch()
    for step, loss in enumerate([2.0, 3.0] * 100, 1):  # a mean of 2.5, std 0.5
        assert w.see(step, True, loss) is None
    assert w.see(201, True, 5.2) is None  # above 2 x the mean, but within 6 std of it
    assert w.see(202, True, 20.0) is not None


def test_non_finite_steps_are_trouble_at_once_or_after_a_streak_under_fp16():
    w = watch()
    w.see(1, True, 9.0)
    assert w.see(2, False, math.nan) == Trouble(2, 2, "a non-finite loss or gradient")
    fp16 = Watch.restore(w.cfg, nonfinite_limit=3, saved=None)
    assert [fp16.see(s, False, math.inf) for s in (1, 2)] == [None, None]
    assert fp16.see(3, True, 9.0) is None  # the loss scale found its level: streak over
    assert [fp16.see(s, False, math.nan) for s in (4, 5)] == [None, None]
    assert fp16.see(6, False, math.nan) == Trouble(6, 4, "3 non-finite step(s) in a row")


def test_the_target_is_from_before_the_state_that_made_the_bad_loss():
    # Step 7's loss came from the checkpoint-6 state, so 6 is suspect and 5 is the newest target.
    assert rollback_target([3, 5, 6, 9], Trouble(7, 7, "")) == 5
    assert rollback_target([3, 6, 9], Trouble(7, 7, "")) == 3
    assert rollback_target([6], Trouble(7, 7, "")) == 0  # the initial state


def test_a_rollback_keeps_the_targets_statistics_and_lowers_the_lr():
    w = watch(rollback_lr_factor=0.25)
    for step in range(1, 5):
        w.see(step, True, 9.0 - step)
    saved = w.saved()
    assert json.loads(json.dumps(saved)) == saved  # checkpoint meta is JSON
    for step in range(5, 9):
        w.see(step, True, 4.0)
    w.rolled_back(Trouble(9, 9, ""), 4, saved)
    assert (w.mean, w.seen, w.updates, w.rollbacks) == (saved["mean"], 4, 4, 1)
    assert w.lr_factor == 0.25 and w.skipped == [[5, 9]]
    w.rolled_back(Trouble(12, 12, ""), 0, None)  # back to the initial state
    assert (w.seen, w.updates, w.lr_factor, w.skipped) == (0, 0, 0.25**2, [[1, 12]])


def test_float16s_own_overflows_are_skipped_without_counting_toward_trouble():
    # A loss-scale overflow (finite loss, scale above 1) is the scale's business, as in
    # torch.amp.GradScaler: counted, 10 of them from a scale set at 2**30 rolled the run back to
    # a state with that same scale, three times, and stopped it saying "lower optim.lr".
    fp16 = Watch.restore(watch().cfg, nonfinite_limit=3, saved=None)
    assert [fp16.see(s, False, 9.0, overflow=True) for s in range(1, 21)] == [None] * 20
    assert fp16.unapplied == list(range(1, 21)) and fp16.updates == 0
    assert fp16.see(21, True, 9.0) is None and fp16.updates == 1
    # A non-finite loss, or an overflow at the floor of 1, still counts (overflows between them
    # neither count nor break the streak).
    assert fp16.see(22, False, math.nan) is None
    assert fp16.see(23, False, 9.0, overflow=True) is None
    assert fp16.see(24, False, 9.0) is None
    assert fp16.see(25, False, math.nan) == Trouble(25, 22, "3 non-finite step(s) in a row")


def test_a_streak_after_float16_overflows_starts_at_the_first_of_them():
    # Step 3's update broke the weights for good: step 4 on, the gradients pass float16 at every
    # scale while the loss stays finite. Overflows (steps 4-8) halve the scale to 1; then the
    # steps count (9-11). Started at step 9, the rollback went to checkpoint 5, written during
    # the overflows on the same broken weights; each rollback restored it, and the run stopped.
    fp16 = Watch.restore(watch().cfg, nonfinite_limit=3, saved=None)
    assert [fp16.see(s, True, 9.0) for s in (1, 2, 3)] == [None] * 3
    assert [fp16.see(s, False, 9.0, overflow=True) for s in range(4, 9)] == [None] * 5
    resumed = Watch.restore(fp16.cfg, 3, json.loads(json.dumps(fp16.saved())), 8)
    for w in (fp16, resumed):  # a checkpoint at step 8, resumed: the same decision
        assert [w.see(s, False, 9.0) for s in (9, 10)] == [None, None]
        trouble = w.see(11, False, 9.0)
        assert trouble == Trouble(11, 4, "3 non-finite step(s) in a row")
        assert rollback_target([2, 5, 8], trouble) == 2
    # A finite step ends the run: the overflows before it are the scale's alone.
    w = Watch.restore(fp16.cfg, nonfinite_limit=2, saved=None)
    assert [w.see(1, False, 9.0, overflow=True), w.see(2, True, 9.0), w.see(3, False, 9.0)] == \
        [None] * 3
    assert w.see(4, False, 9.0) == Trouble(4, 3, "2 non-finite step(s) in a row")


def test_float16s_single_non_finite_steps_stay_out_of_the_tokens_behind_the_weights():
    # A loss-scale overflow skips a step without trouble; its tokens were counted as trained on
    # (results.json, checkpoint meta and bundles: tokens_seen) though no update applied them.
    w = Watch.restore(watch().cfg, nonfinite_limit=3, saved=None)
    for step, finite in enumerate([True, False, True, True, False, False, True], start=1):
        assert w.see(step, finite, 9.0) is None
    assert w.unapplied == [2, 5, 6] and w.updates == 4
    saved = w.saved()
    assert json.loads(json.dumps(saved)) == saved
    ramp = BatchRamp(micro=4, start=4, end=12, ramp_steps=4, stages=2)  # 4, 4, 8, 8, 12, ...
    counts = pretrain_run.token_counts(ramp, 10, 7, 100, w)
    assert counts["tokens_this_run"] == (ramp.sequences_before(7) - 4 - 12 - 12) * 10
    assert counts["tokens_seen"] == 100 + counts["tokens_this_run"]
    assert pretrain_run.token_counts(ramp, 10, 4, None, w)["tokens_this_run"] == (24 - 4) * 10
    # A streak that becomes trouble: the rollback to checkpoint 4 keeps only its own skips.
    for step in (8, 9):
        w.see(step, False, math.nan)
    trouble = w.see(10, False, math.nan)
    target = Watch.restore(w.cfg, 3, None)
    for step in range(1, 5):
        target.see(step, step != 2, 9.0)
    w.rolled_back(trouble, 4, target.saved())
    assert w.unapplied == [2] and w.skipped == [[5, 10]]
    assert pretrain_run.token_counts(ramp, 10, 10, 0, w)["tokens_this_run"] == \
        (ramp.sequences_before(10) - 4 - (ramp.sequences_before(10) - ramp.sequences_before(4))) \
        * 10
    # A checkpoint from before the field resumes with none recorded.
    old = {k: v for k, v in saved.items() if k != "unapplied"}
    assert Watch.restore(w.cfg, 3, old, 7).unapplied == []


# ---- the metrics file ----
def test_metrics_rows_are_strict_json():
    line = json_text({"step": 3, "loss": math.nan, "grad_norm": math.inf, "lr": 1e-3}, indent=None)
    assert json.loads(line) == {"step": 3, "loss": None, "grad_norm": None, "lr": 1e-3}
    assert "NaN" not in line and "Infinity" not in line


def test_a_resume_drops_the_rows_past_its_checkpoint(tmp_path):
    # A run killed at step 15 after its checkpoint at 10, then resumed, wrote 45 rows for 40
    # steps; the resume now starts by dropping rows 11..15 (and a torn last line).
    rows = [{"step": s, "loss": 1.0} for s in range(1, 16)] + [{"step": 10, "val_loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                           + '{"step": 16, "lo')
    drop_rows_after(tmp_path, 10)
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [r for r in rows if r["step"] <= 10]
    drop_rows_after(tmp_path / "nowhere", 10)  # no file: nothing to do


# ---- in-process runs with injected trouble ----
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_run_config(tmp_path_factory.mktemp("rollback"), {
        "steps": STEPS, "micro_batch": 8, "log_every": 4, "eval_every": 0, "eval_sequences": 16,
        "checkpoint_every": 3, "keep_checkpoints": 5})


def config(base, run_dir, *overrides):
    return config_lib.load([base], [f"train.run_dir={run_dir}", *overrides])


def injected(multipliers: dict, stop_after: int | None):
    """make_train_step whose step s (1-based; 8 rows a step, so first_row = 8 (s - 1)) runs at
    `multipliers[s]` times the learning rate the loop gives it, and which sends SIGTERM to this
    process after step `stop_after` (the run saves and raises StoppedBySignal, as a signalled run
    does)."""
    make = pretrain_loop.make_train_step

    def make_injected(*args, **kwargs):
        train_step = make(*args, **kwargs)

        def step(state, batch, first_row, mask_key, dropout_key, schedule):
            s = int(first_row) // 8 + 1
            if s in multipliers:
                schedule = schedule._replace(peak=np.float32(schedule.peak * multipliers[s]))
            out = train_step(state, batch, first_row, mask_key, dropout_key, schedule)
            if s == stop_after:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return step

    return make_injected


def run(base, run_dir, multipliers: dict, *overrides, stop_after: int | None = None):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrain_loop, "make_train_step", injected(multipliers, stop_after))
        if stop_after is None:
            pretrain(config(base, run_dir, *overrides))
        else:
            with pytest.raises(StoppedBySignal):
                pretrain(config(base, run_dir, *overrides))
    return run_dir


def rows(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def training_steps(run_dir) -> list[int]:
    return [r["step"] for r in rows(run_dir) if "loss" in r]


def checkpoints(run_dir) -> dict:
    """{step: (state, meta)} of every checkpoint in the run directory."""
    found = Checkpoints(run_dir)
    try:
        out = {}
        for step in found.all_steps():
            cfg = config_lib.from_yaml_text(found.read_meta(step)["config_yaml"], "meta")
            out[step] = found.restore(step, abstract_state(cfg))
        return out
    finally:
        found.close()


def all_finite(tree) -> bool:
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(tree))


def final_state(run_dir) -> list[np.ndarray]:
    state, meta = checkpoints(run_dir)[STEPS]
    assert meta["step"] == STEPS
    return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope="module")
def nan_run(base, tmp_path_factory):
    """Step 6's update makes the parameters NaN after its own loss was read, so checkpoint 6
    is written on a NaN state; step 7's loss is NaN (read lazily, at the step-8 log): the run
    rolls back to checkpoint 3, deletes 6, and goes on at step 8."""
    return run(base, tmp_path_factory.mktemp("nan"), {6: math.nan})


@pytest.mark.slow
def test_a_nan_state_rolls_back_to_the_checkpoint_before_it(nan_run):
    (rollback,) = [r for r in rows(nan_run) if "rollback" in r]
    assert {k: rollback[k] for k in ("step", "rollback", "restored_step", "skipped_steps",
                                     "lr_factor")} == {
        "step": 7, "rollback": 1, "restored_step": 3, "skipped_steps": [4, 7], "lr_factor": 0.5}
    # one row each (3, 6, 9: checkpoints write theirs); 7: the steps up to the NaN
    assert training_steps(nan_run) == [3, 4, 6, 7, 8, 9, 12]
    last = [r for r in rows(nan_run) if "loss" in r][-1]
    assert math.isfinite(last["loss"]) and last["skipped"] == 0
    saved = checkpoints(nan_run)
    assert sorted(saved) == [3, 9, 12]  # 6 held the NaN state: deleted
    assert all(all_finite(state) for state, _ in saved.values())
    divergence = saved[12][1]["divergence"]
    assert (divergence["rollbacks"], divergence["lr_factor"], divergence["skipped"]) == \
        (1, 0.5, [[4, 7]])
    results = json.loads((nan_run / "results.json").read_text())
    assert math.isfinite(results["validation"]["val_loss"])
    assert (results["rollbacks"], results["lr_factor"], results["skipped_steps"]) == \
        (1, 0.5, [[4, 7]])
    assert results["nonfinite_steps"] == 0  # the rolled-back steps are counted apart
    # Tokens behind the weights leave the 4 thrown-away steps out (8 rows of 32 a step): all
    # 12 steps' were counted, and went on into a continued run's tokens_before and bundles.
    assert results["tokens_this_run"] == (STEPS - 4) * 8 * 32
    assert [saved[s][1]["tokens_this_run"] for s in (3, 9)] == [3 * 8 * 32, 5 * 8 * 32]


@pytest.mark.slow
def test_a_loss_spike_rolls_back(base, tmp_path):
    # x1000 on step 6's update: finite, but step 7's loss is far above its running mean.
    run(base, tmp_path, {6: 1000.0})
    (rollback,) = [r for r in rows(tmp_path) if "rollback" in r]
    assert rollback["step"] == 7 and rollback["restored_step"] == 3, rollback
    assert "running mean" in rollback["reason"]
    assert all(all_finite(state) for state, _ in checkpoints(tmp_path).values())
    assert math.isfinite([r for r in rows(tmp_path) if "loss" in r][-1]["loss"])


def test_a_float16_scale_set_too_high_settles_without_a_rollback(base, tmp_path):
    # 2**22 overflows the first 5 steps (this model trains at 2**17; one more overflow later
    # halves it again), more of them in a row than train.max_nonfinite: each rollback restored
    # the scale that overflowed, until the run stopped ("lower optim.lr"). GradScaler halves its
    # way down and trains; so now does this.
    run(base, tmp_path, {}, "precision.compute=float16", f"precision.loss_scale={2.0**22}",
        "train.max_nonfinite=2", "train.log_every=1")
    steps = [r for r in rows(tmp_path) if "loss" in r]
    assert not [r for r in rows(tmp_path) if "rollback" in r]
    skipped = [r["step"] for r in steps if r["skipped"]]
    assert skipped[:5] == [1, 2, 3, 4, 5] and steps[5]["skipped"] == 0
    assert [r["loss_scale"] for r in steps[:6]] == [2.0**k for k in (21, 20, 19, 18, 17, 17)]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["rollbacks"], results["nonfinite_steps"]) == (0, len(skipped))


@pytest.mark.slow
def test_a_run_whose_last_rollback_went_to_the_start_says_why_nothing_was_applied(base, tmp_path):
    # No checkpoint before it: step 12's spike (x1e6 on step 11's update, whose lr is near the
    # schedule's end) rolls back to the initial state, so none of the 12 steps is in the model.
    # The end warning said their gradients or loss were not finite.
    with pytest.warns(UserWarning) as warned:
        run(base, tmp_path, {STEPS - 1: 1e6}, "train.checkpoint_every=0")
    (message,) = [str(w.message) for w in warned if "none of the" in str(w.message)]
    assert message == f"none of the {STEPS} steps was applied ({STEPS} were rolled back after " \
                      "training diverged): the model did not train at all; lower optim.lr"
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["skipped_steps"], results["nonfinite_steps"]) == ([[1, STEPS]], 0)


@pytest.mark.slow
def test_when_the_rollbacks_run_out_the_run_stops(base, tmp_path):
    # Every update NaN: trouble at steps 2 and 4 roll back to the initial state, the third stops.
    with pytest.raises(RunDiverged) as stopped:
        run(base, tmp_path, dict.fromkeys(range(1, STEPS + 1), math.nan), "train.max_rollbacks=2")
    message = str(stopped.value)
    assert message.startswith("training diverged at step 6 (a non-finite loss")
    assert "after 2 rollback(s)" in message and "no checkpoint is from before it" in message
    assert [r["restored_step"] for r in rows(tmp_path) if "rollback" in r] == [0, 0]
    assert rows(tmp_path)[-1] == {**rows(tmp_path)[-1], "step": 6, "stopped": True}
    assert checkpoints(tmp_path) == {}
    # The directory is free again: the lock went with the run.
    with pytest.raises(RunDiverged):
        run(base, tmp_path, dict.fromkeys(range(1, STEPS + 1), math.nan), "train.max_rollbacks=0")


@pytest.mark.slow
def test_the_rollback_path_is_bit_reproducible(base, nan_run, tmp_path):
    run(base, tmp_path, {6: math.nan})
    for a, b in zip(final_state(tmp_path), final_state(nan_run), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [3, 9], ids=["before-the-trouble", "after-the-rollback"])
def test_a_resume_equals_the_uninterrupted_run(base, nan_run, tmp_path, stop_after):
    # Stopped at step 3 the resume meets the NaN again and rolls back the same way; stopped at
    # 9 it restores the rollback's lr factor and skipped steps from the checkpoint meta.
    run(base, tmp_path, {6: math.nan}, stop_after=stop_after)
    assert max(checkpoints(tmp_path)) == stop_after
    run(base, tmp_path, {6: math.nan})
    for a, b in zip(final_state(tmp_path), final_state(nan_run), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = training_steps(tmp_path)
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # one row per step
    assert [r["step"] for r in rows(tmp_path) if "rollback" in r] == [7]


@pytest.mark.slow
def test_a_resumed_run_logs_into_the_wandb_run_it_started(base, tmp_path, fake_wandb):
    # Preempted (SIGTERM) after step 3, resumed to the end, then started over: the resume
    # continues the preempted wandb run (one curve), train.resume=never starts a new one.
    run(base, tmp_path, {}, "wandb.mode=online", stop_after=3)
    run(base, tmp_path, {}, "wandb.mode=online")
    run(base, tmp_path, {}, "wandb.mode=online", "train.resume=never", "train.steps=4")
    preempted, resumed, fresh = fake_wandb.inits
    assert (preempted.preempting, preempted.exit_code, preempted.logged) == (True, 143, [3])
    assert resumed.id == preempted.id and resumed.logged == [4, 6, 8, 9, 12, 12]  # 12: validation
    assert (resumed.finished, resumed.exit_code, resumed.preempting) == (True, None, False)
    assert fresh.id != preempted.id and fresh.logged == [3, 4, 4] and fresh.finished


@pytest.mark.slow
def test_a_rollback_past_the_kept_checkpoints_stops_instead_of_starting_over(base, tmp_path):
    # keep_checkpoints=1: checkpoint 3 was rotated away when 6 was written, so the NaN of step 7
    # rolled back to the initial state (steps 1-7 gone, checkpoint 6 deleted), exit 0: at scale,
    # a day of training thrown away, its only checkpoint with it.
    with pytest.raises(RunDiverged) as stopped:
        run(base, tmp_path, {6: math.nan}, "train.keep_checkpoints=1")
    message = str(stopped.value)
    assert message.startswith("training diverged at step 7 (a non-finite loss"), message
    assert "(step 3 and earlier) were rotated away (train.keep_checkpoints=1)" in message
    assert sorted(checkpoints(tmp_path)) == [6]  # kept: the user's to resume or delete
    assert not [r for r in rows(tmp_path) if "rollback" in r]
    assert rows(tmp_path)[-1] == {**rows(tmp_path)[-1], "step": 7, "stopped": True}


def test_a_rollback_past_a_resume_that_changed_the_ramp_reads_on_from_the_bad_step(
        base, tmp_path, monkeypatch):
    # 4 steps of 8, resumed at batch 16; step 5's trouble rolls back to checkpoint 3, written
    # before the resume. The offsets were recomputed from it, as if batch 16 had run since step
    # 3: step 6 read rows 64-80, the 16 after step 5's never read, the epoch and `tokens` jumped.
    read = []
    rows_of = pretrain_loop.PretrainData.rows

    def recorded(self, start, count):
        if self.split == "train":
            read.append(start)
        return rows_of(self, start, count)

    see = Watch.see

    def non_finite_at_5(self, step, finite, loss, overflow=False):
        return see(self, step, finite and step != 5, loss, overflow)

    monkeypatch.setattr(pretrain_loop.PretrainData, "rows", recorded)
    monkeypatch.setattr(Watch, "see", non_finite_at_5)
    common = ["train.log_every=1", "train.batch_ramp=0", "train.batch_start=null"]
    pretrain(config(base, tmp_path, *common, "train.steps=4", "train.batch_end=8"))
    read.clear()
    pretrain(config(base, tmp_path, *common, "train.steps=7", "train.batch_end=16"))
    (rollback,) = [r for r in rows(tmp_path) if "rollback" in r]
    assert (rollback["step"], rollback["restored_step"]) == (5, 3)
    # Step 5 read 32-48 (the prefetcher read on to 64 and 80 before the trouble was seen).
    assert read[0] == 32 and read[-2:] == [48, 64], read
    tokens = {r["step"]: r["tokens"] for r in rows(tmp_path) if "loss" in r}
    assert [tokens[s] for s in (5, 6, 7)] == [48 * 32, 64 * 32, 80 * 32]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tokens_this_run"] == (3 * 8 + 2 * 16) * 32  # steps 1-3, 6-7
