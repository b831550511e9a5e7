"""A pretraining run as resolved (`Run`) and as resumed: its purpose keys, the tokens its steps
read (also across a resume that changed data.seq_len or the batch ramp), and what a resume
checks, says and restores (another model shape refused; a changed config, learning rate or data
position said in one warning; the state at this run's precision; the length by train.tokens as
the checkpoint read them). bertjax.pretrain builds the run; bertjax.pretrain_loop steps it.
"""

import dataclasses
import math
import warnings
from pathlib import Path

import equinox as eqx
import jax
from jax.sharding import NamedSharding, PartitionSpec
from tokenizers import Tokenizer

from bertjax import config as config_lib
from bertjax import prepared
from bertjax.checkpoint import Checkpoints, restore_target
from bertjax.config import Config
from bertjax.config_changes import describe_changes
from bertjax.data import PretrainData
from bertjax.divergence import Watch
from bertjax.errors import UserError
from bertjax.optim import BatchRamp, schedule, steps_for_tokens
from bertjax.precision import LossScale
from bertjax.starting_points import ARCHITECTURE

# Purposes of the root key; each gets its own stream (fold_in), so adding one never shifts another.
INIT, MASK, DROPOUT, EVAL = range(4)
# Validation scores the same sequences, masked the same way, whatever train.seed: its sample
# (a fixed shuffle of the split) and its masks come from this seed, so two runs' validation
# losses score the same predictions, a paired comparison rather than each run's own draw.
VALIDATION_SEED = 0


def purpose_keys(seed: int) -> dict:
    """The run's key for each purpose, from train.seed; validation's from VALIDATION_SEED."""
    root = jax.random.key(seed)
    keys = {p: jax.random.fold_in(root, p) for p in (INIT, MASK, DROPOUT)}
    return keys | {EVAL: jax.random.fold_in(jax.random.key(VALIDATION_SEED), EVAL)}


@dataclasses.dataclass
class Run:
    """What the loop needs, resolved from the config and the prepared data."""

    cfg: Config
    data: PretrainData  # the train split
    validation: PretrainData | None
    tokenizer: Tokenizer
    ramp: BatchRamp
    total_steps: int
    run_dir: Path
    prepared_data: dict  # what identifies the token stream (prepared.identity), for checkpoints

    @property
    def config_yaml(self) -> str:
        return config_lib.to_yaml(self.cfg)


def check_row_numbers(steps: int, end: int) -> None:
    """Refuse a run whose `steps` end at data row `end` (the stream's position after them) past
    2**31: the step numbers each sequence's masking key by its global row, an int32 on device."""
    if end >= 2**31:
        raise UserError(f"{steps:,} steps of this batch ramp read up to row {end:,} of the data "
                        "stream, more than the masking's int32 row numbers reach (2**31); "
                        "lower train.steps or train.tokens, or continue in a second run "
                        "(init.checkpoint)")


def token_counts(ramp: BatchRamp, seq_len: int, steps_done: int, tokens_before: int | None,
                 watch: Watch, offset: int = 0) -> dict:
    """Training tokens behind the weights: this run's, earlier phases' (continued pretraining;
    None when the starting checkpoint does not say) and their sum (None when unknown), as
    sequences x seq_len: positions computed on, an NSP/SOP row's padding too (data/README.md).
    The steps that applied no update are not behind the weights and are left out: those
    rollbacks threw away (Watch.skipped, [first, last] ranges) and float16's single non-finite
    steps (Watch.unapplied). `offset`: tokens this formula miscounts before a resume that changed
    seq_len or the batch ramp (TokenOffsets). metrics.jsonl's `tokens` is the stream's position."""
    sequences = ramp.sequences_before(steps_done) - sum(
        ramp.sequences_before(min(last, steps_done)) - ramp.sequences_before(first - 1)
        for first, last in watch.skipped if first <= steps_done) - sum(
        ramp.batch(step - 1) for step in watch.unapplied if step <= steps_done)
    this_run = sequences * seq_len + offset
    return {"tokens_seen": None if tokens_before is None else tokens_before + this_run,
            "tokens_this_run": this_run, "tokens_before": tokens_before}


@dataclasses.dataclass(frozen=True)
class TokenOffsets:
    """What a checkpoint counted less what this run's seq_len and batch ramp count for the same
    steps: tokens of the stream read (metrics.jsonl's `tokens`), tokens behind the weights
    (`tokens_this_run`) and the data position (`sequences`, in the stream's rows). All are 0
    unless a resume changed data.seq_len, train.micro_batch or the ramp: counted from step 0 with
    the new values, results.json, the bundle's manifest and the curves' token axis were wrong
    (512 x 8 from step 0 where steps 1-10 read 128 x 8), and the stream skipped sequences or
    read them again (with the masks they had: masks follow the position)."""

    stream: int = 0
    seen: int = 0
    sequences: int = 0

    @classmethod
    def at(cls, ramp: BatchRamp, seq_len: int, step: int, meta: dict,
           watch: Watch) -> "TokenOffsets":
        """For the state of checkpoint `step` (its `meta`; `watch` restored from it)."""
        if step == 0 or "tokens_this_run" not in meta:  # fresh, or older than the count
            return cls()
        seen = meta["tokens_this_run"] - token_counts(ramp, seq_len, step, 0,
                                                      watch)["tokens_this_run"]
        # Checkpoints from before `tokens_stream` was saved: without rollbacks the same offset.
        here = ramp.sequences_before(step) * seq_len
        stream = meta["tokens_stream"] - here if "tokens_stream" in meta else seen
        return cls(stream, seen, stream_shift(ramp, seq_len, step, meta))


def stream_shift(ramp: BatchRamp, seq_len: int, step: int, meta: dict) -> int:
    """Rows the data stream is ahead of `ramp`'s count at checkpoint `step` (its `meta`; 0 for a
    fresh run): TokenOffsets.sequences."""
    if step == 0 or "tokens_this_run" not in meta:
        return 0
    position = data_position(meta, step, seq_len)
    return 0 if position is None else position - ramp.sequences_before(step)


def data_position(meta: dict, step: int, seq_len: int) -> int | None:
    """The row of the data stream checkpoint `step` (its `meta`) stopped at, in sequences of
    `seq_len`; None where the checkpoint read sequences of another length (their positions do not
    compare: a new seq_len reads its own stream from the ramp's position) or does not say. Older
    checkpoints lack `data_position`: their run read where its own ramp put it."""
    if "config_yaml" not in meta:
        return None
    theirs = config_lib.from_yaml_text(meta["config_yaml"], f"checkpoint {step}'s config")
    if theirs.data.seq_len != seq_len:
        return None
    if "data_position" in meta:
        return int(meta["data_position"])
    total = meta.get("total_steps")
    return None if total is None else \
        BatchRamp.from_config(theirs.train, total).sequences_before(step)


def restore_state(checkpoints: Checkpoints, step: int, target, cfg: Config, mesh):
    """(state, meta) of checkpoint `step` restored into `target` (a state or its
    restore_target), holding the loss scale this run computes with: float16's dynamic scale is
    part of the state, so a checkpoint written at another precision.compute (its config says)
    did not fit the target, and Orbax's tree mismatch was called a damaged checkpoint, to be
    deleted. float16 -> bfloat16 drops the scale; a switch to float16 starts a fresh one."""
    meta = checkpoints.read_meta(step)
    theirs = (config_lib.from_yaml_text(meta["config_yaml"], f"checkpoint {step}'s config")
              .precision if "config_yaml" in meta else cfg.precision)
    saved, wanted = theirs.compute == "float16", cfg.precision.compute == "float16"
    if saved == wanted:
        return checkpoints.restore(step, target)

    def scale(precision):  # replicated, as shard_params places a loss scale
        return jax.device_put(LossScale.create(precision.loss_scale, precision.loss_scale_period),
                              NamedSharding(mesh, PartitionSpec()))

    state, meta = checkpoints.restore(step, with_loss_scale(
        target, restore_target(scale(theirs)) if saved else None))
    return with_loss_scale(state, scale(cfg.precision) if wanted else None), meta


def with_loss_scale(state, scale):
    """`state` (a TrainState, or its restore target) with `scale` (None: no loss scale)."""
    return eqx.tree_at(lambda s: s.loss_scale, state, scale, is_leaf=lambda x: x is None)


def fit_budget_to_checkpoint(run: Run, checkpoints: Checkpoints) -> Run:
    """`run` sized by train.tokens as its resumed checkpoint read them: counted at this run's
    seq_len and batch ramp from step 0 (size_run), a phase 2 at a longer seq_len in the same run
    directory ended half-way through the budget, or was refused as past its last step."""
    step = checkpoints.latest_step() if run.cfg.train.resume == "auto" else None
    if run.cfg.train.tokens is None or step is None:
        return run
    read = checkpoints.read_meta(step).get("tokens_stream")  # older checkpoints lack it
    if read is None or read == run.ramp.sequences_before(step) * run.cfg.data.seq_len:
        return run  # read as this run would have: its length stands
    steps = steps_for_tokens(run.cfg.train, run.cfg.train.tokens, run.cfg.data.seq_len,
                             (step, read))
    return dataclasses.replace(run, total_steps=steps,
                               ramp=BatchRamp.from_config(run.cfg.train, steps))


def warn_if_other_data(run: Run, meta: dict) -> None:
    """A resume on prepared data other than its checkpoint's (data.dir prepared again since, say
    from a file added under a data.sources glob, with the same tokenizer.path) is said: the data
    order and validation split are functions of (seed, step) on one token stream only. A
    warning, not a refusal: adding data mid-run can be meant. Older checkpoints lack the record:
    nothing is said for them."""
    theirs, step = meta.get("prepared_data"), meta["step"]
    if not isinstance(theirs, dict):
        return
    changed = prepared.describe_change(theirs, run.prepared_data)
    if changed is not None:
        warnings.warn(f"resuming {run.run_dir} at step {step} on other prepared data: "
                      f"{run.cfg.data.dir} is not what checkpoint {step} was trained on "
                      f"({changed}); the run continues on another token stream: its data order "
                      "and validation split are not the checkpoint's", stacklevel=2)


def what_changed(run: Run, meta: dict) -> str | None:
    """': KEY: OLD -> NEW, ...' of a resume's config change, and the learning rate and data
    position it moves (a longer run stretches the schedule: its lr rises again mid-decay); ''
    for checkpoints older than the config in their meta; None when only how the processes were
    launched changed."""
    if "config_yaml" not in meta:
        return ""
    # Through today's schema: a key added since that checkpoint is its default, no change.
    theirs = config_lib.from_yaml_text(meta["config_yaml"], f"checkpoint {meta['step']}'s config")
    keys = describe_changes(config_lib.to_yaml(theirs), run.config_yaml)
    if not keys:
        return None
    said = f": {keys}"
    step, total = meta["step"], meta.get("total_steps", run.total_steps)
    if theirs.init.checkpoint != run.cfg.init.checkpoint:  # `--help`: "when the run is new"
        said += (f"; init.checkpoint is not used: a resume continues checkpoint {step} (for a "
                 "phase that starts from init.checkpoint's weights, with a fresh optimizer and "
                 "schedule, set a new train.run_dir)")
    if theirs.precision.loss_scale != run.cfg.precision.loss_scale and \
            theirs.precision.compute == run.cfg.precision.compute == "float16":
        said += (f"; precision.loss_scale is not used: the loss scale goes on from checkpoint "
                 f"{step}'s (the key sets a new run's first scale; the scale halves by itself "
                 "on overflow)")
    was, now = (float(schedule(theirs.optim, total)(step)),
                float(schedule(run.cfg.optim, run.total_steps)(step)))
    if not math.isclose(was, now, rel_tol=1e-6):
        stretched = (f": the schedule spans {run.total_steps} steps (was {total})"
                     if total != run.total_steps else "")
        said += f"; the learning rate at step {step} is now {now:.3g} (was {was:.3g}){stretched}"
    # A new micro_batch or ramp reads on from the checkpoint's data position (TokenOffsets);
    # other sequences are another stream, read from the ramp's position in it.
    if theirs.data.seq_len != run.cfg.data.seq_len:
        said += (f"; the data are cut into sequences of {run.cfg.data.seq_len} tokens (was "
                 f"{theirs.data.seq_len}) in a new order, read from its sequence "
                 f"{run.ramp.sequences_before(step):,}: text the first {step} steps read may "
                 "come again")
    elif theirs.train.seed != run.cfg.train.seed:
        said += reshuffled(run, data_position(meta, step, run.cfg.data.seq_len))
    return said


def reshuffled(run: Run, position: int | None) -> str:
    """What a new train.seed does to the epoch a resume is in: its order is a function of the
    seed, so the rest of it is drawn from another order than its first `done` rows were. Of
    the `left` rows still to come, about done * left / n were read already, and as many of the
    epoch's sequences are never read in it."""
    if position is None:
        return ""
    n = run.data.num_sequences
    epoch, done = divmod(position, n)
    if not done:  # at an epoch's start: nothing of it read yet
        return ""
    return (f"; train.seed orders the data: the rest of epoch {epoch + 1} comes in another order "
            f"than its first {done:,} of {n:,} sequences, so about {done * (n - done) // n:,} "
            "of them are read again in it and as many not at all")


def restore_resumed(run: Run, checkpoints: Checkpoints, step: int, state, mesh):
    """(state, meta) of checkpoint `step`, refusing a resume that cannot continue it: a model of
    another shape (named, instead of Orbax's shape error read as a damaged checkpoint) or a
    checkpoint past the run's last step."""
    meta = checkpoints.read_meta(step)
    fix = ("undo that change, or set a new train.run_dir (train.resume=never starts this one "
           "over, replacing its checkpoints)")
    if "config_yaml" in meta:
        theirs = config_lib.from_yaml_text(meta["config_yaml"], f"checkpoint {step}'s config")
        shape_keys = [("model", name) for name in ARCHITECTURE] + [("data", "objective")]
        changed = [f"{section}.{name}: {getattr(getattr(theirs, section), name)} -> "
                   f"{getattr(getattr(run.cfg, section), name)}" for section, name in shape_keys
                   if getattr(getattr(theirs, section), name) !=
                   getattr(getattr(run.cfg, section), name)]
        if changed:
            # NSP -> SOP keeps every shape: its head's two classes would mean other things.
            kind = ("another pretraining objective" if changed[-1].startswith("data.") and
                    len(changed) == 1 else "another model shape")
            raise UserError(f"{run.run_dir} holds checkpoint {step} of {kind} "
                            f"({', '.join(changed)}); {fix}")
    if step > run.total_steps:
        raise UserError(f"{run.run_dir} holds checkpoint {step}, past this run's last step "
                        f"{run.total_steps}; raise train.steps (or train.tokens), or {fix}")
    return restore_state(checkpoints, step, state, run.cfg, mesh)
