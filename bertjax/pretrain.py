"""Pretraining: resolve the run (prepared data, vocabulary, step count), hold its directory, build
the state (fresh, continued from init.checkpoint, or resumed), run the step loop
(bertjax.pretrain_loop), then write results, curves and fill-mask examples.

Everything a step does is a pure function of (config, step): the rows it reads, its masks and its
dropout. Resuming therefore restores the newest complete checkpoint and simply continues; the
result is bit-for-bit the same as an uninterrupted run on CPU. SIGTERM/SIGINT save and exit
(code 128 + the signal's number: not finished), every process after the same step. The run
holds its directory (a lock) while it runs.

A diverging run rolls back (bertjax.pretrain_loop, which holds the step loop); after
`train.max_rollbacks` the run stops (RunDiverged; exit 1).
"""

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import equinox as eqx
import jax

from bertjax import config as config_lib
from bertjax import plot, prepare, prepared
from bertjax import tokenizer as tokenizer_lib
from bertjax.checkpoint import Checkpoints, config_hash
from bertjax.config import Config
from bertjax.data import PretrainData
from bertjax.errors import StoppedBySignal, UserError, out_of_memory_is_said
from bertjax.files import check_dir_path, write_atomic
from bertjax.metrics import Monitor, drop_rows_after, wandb_session
from bertjax.model import Bert, attention_summary, flops_per_token, new_bert, param_count
from bertjax.optim import BatchRamp, make_optimizer, steps_for_tokens
from bertjax.precision import warn_if_slow_compute_dtype
from bertjax.predict import fill_mask
from bertjax.pretrain_loop import Loop
from bertjax.pretrain_run import (
    INIT,
    VALIDATION_SEED,
    Run,
    check_row_numbers,
    fit_budget_to_checkpoint,
    purpose_keys,
    restore_resumed,
    stream_shift,
    warn_if_other_data,
    what_changed,
)
from bertjax.pretrained import check_checkpoint_path, check_weights_fetched
from bertjax.processes import (
    StopSignal,
    join_the_run,
    losing_a_process_is_fatal,
    same_on_every_process,
    seen_alike_by_every_process,
)
from bertjax.runlock import check_run_dir_kind, hold_run_dir
from bertjax.sharding import full_copy, make_mesh, shard_params
from bertjax.starting_points import continue_from
from bertjax.step import init_state
from bertjax.step_trace import warn_if_past_the_end, warn_if_resumed_past
from bertjax.xla_options import compiler_options

# What a run too large for its GPU's memory can lower (the step's activations grow with each).
MEMORY_FIX = ("lower train.micro_batch (with train.batch_end at the batch you want: micro-batches "
              "accumulate to it), data.seq_len or the model's size, or turn on model.remat (off "
              "by default on a GPU); checkpoints already saved are kept")


def check_tokenizer(run_dir: Path, data_dir: Path) -> None:
    """A resume refuses a data directory whose tokenizer has changed since the run began:
    re-preparing from other text (or with another `tokenizers` release) retrains it, and every
    token id would silently mean something else."""
    source, kept = data_dir / "tokenizer.json", run_dir / "tokenizer.json"
    if kept.is_file() and kept.read_bytes() != source.read_bytes():
        raise UserError(f"{source} is not the tokenizer {run_dir} was trained with ({kept}): "
                        f"{data_dir} was prepared again since; prepare a data.dir with "
                        f"tokenizer.path={kept} to resume, or start a new train.run_dir")


def keep_tokenizer(run_dir: Path, data_dir: Path) -> None:
    """The run keeps a copy of its tokenizer: fine-tuning and export read it from there."""
    kept = run_dir / "tokenizer.json"
    if not kept.is_file():
        write_atomic(kept, (data_dir / "tokenizer.json").read_text())


def same_data_on_every_process(data_dir: Path, meta: dict) -> None:
    """Hosts without shared storage (TPU VMs, for one) each prepare their own copy of the data.
    From different text, or with different `tokenizers` releases, their token ids would differ
    silently: compare the tokenizer's sha256 and the token counts (of `meta`, its meta.json)
    across processes and refuse a mismatch."""
    counts = [meta["splits"][s]["tokens"] for s in sorted(meta["splits"])]
    if not same_on_every_process([meta["tokenizer_sha256"].encode(), repr(counts).encode()]):
        raise UserError(f"the processes' prepared data in {data_dir} differ (tokenizer or token "
                        "counts): prepare once and copy the directory to every host, or set "
                        "tokenizer.path to the same tokenizer.json everywhere")


def size_run(cfg: Config) -> tuple[int, BatchRamp]:
    """(steps, batch ramp): train.steps, or as many steps as train.tokens take on the ramp."""
    steps = cfg.train.steps
    if cfg.train.tokens is not None:
        steps = steps_for_tokens(cfg.train, cfg.train.tokens, cfg.data.seq_len)
        if cfg.train.steps is not None and cfg.train.steps != steps:
            # The budget wins (the key's doc): said, as `train.steps=100` on a config with a
            # token budget (pretrain_base.yaml's 30 B) otherwise started its 59,644 steps.
            warnings.warn(f"train.steps={cfg.train.steps} is not used: train.tokens="
                          f"{cfg.train.tokens:,} sets the run's length ({steps:,} steps); set "
                          "train.tokens=null to train for train.steps, or train.steps=null to "
                          "silence this", stacklevel=2)
    warn_if_past_the_end(cfg.train.profile, steps, "the run's")
    ramp = BatchRamp.from_config(cfg.train, steps)
    ramp.warn_if_end_unreached(steps)
    check_row_numbers(steps, ramp.sequences_before(steps))
    return steps, ramp


def resolve(cfg: Config) -> Run:
    """Prepare (or reuse) the data, fit the model's vocabulary to it, and size the run."""
    if cfg.data.seq_len > cfg.model.max_position_embeddings:
        raise UserError(f"data.seq_len={cfg.data.seq_len} is longer than the model's "
                        f"{cfg.model.max_position_embeddings} positions; lower data.seq_len or "
                        "raise model.max_position_embeddings")
    if cfg.train.micro_batch % jax.device_count():  # each device takes an equal share of rows
        raise UserError(f"train.micro_batch={cfg.train.micro_batch} must be a multiple of the "
                        f"{jax.device_count()} devices")
    warn_if_slow_compute_dtype(cfg.precision.compute)
    steps, ramp = size_run(cfg)
    data_dir = prepare.ensure_prepared(cfg)
    data_meta = prepared.read_meta(data_dir)
    same_data_on_every_process(data_dir, data_meta)
    tok = tokenizer_lib.load(data_dir / "tokenizer.json")
    if cfg.data.whole_word_mask:  # refused now, before the run directory is written to
        tokenizer_lib.continuing_prefix(tok)
    vocab = tokenizer_lib.vocab_size(tok)
    if cfg.model.vocab_size is None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    elif cfg.model.vocab_size < vocab:
        raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                        f"{vocab} tokens; set model.vocab_size=null to use the tokenizer's size")
    train = PretrainData(data_dir, "train", cfg.data.seq_len, cfg.data.objective, cfg.train.seed)
    # A fixed shuffle: the first train.eval_sequences are a sample of the whole split (its
    # documents come in corpus order: the first source's first), the same one for every seed.
    validation = PretrainData(data_dir, "validation", cfg.data.seq_len, cfg.data.objective,
                              VALIDATION_SEED, shuffle=True)
    if validation.num_sequences == 0:
        if cfg.data.validation_fraction > 0:  # said, or results.json's "validation": null is all
            warnings.warn(f"the validation split of {data_dir} is empty (data.validation_fraction"
                          f"={cfg.data.validation_fraction:g} of {len(train.lengths)} documents "
                          "picks none): this run trains without validation; use more documents "
                          "or a larger data.validation_fraction", stacklevel=2)
        validation = None
    return Run(cfg, train, validation, tok, ramp, steps, Path(cfg.train.run_dir),
               prepared.identity(data_meta))


def pretrain(cfg: Config) -> Path:
    """Pretrain (or resume) the run `cfg` describes; returns its run directory. Raises
    UserError for bad input, StoppedBySignal when SIGTERM/SIGINT stopped it after a checkpoint
    (not finished), RunDiverged when it diverged past its rollbacks (train.max_rollbacks)."""
    join_the_run(cfg)  # before the paths are checked: a bad one is then said by every host
    compiler_options(cfg.train.xla_flags)  # an option XLA refuses, before any file is written
    check_dir_path(cfg.train.run_dir, "train.run_dir")
    check_run_dir_kind(cfg.train.run_dir, cfg.train.task)
    if Path(cfg.data.dir).resolve() == Path(cfg.train.run_dir).resolve():
        raise UserError(f"data.dir and train.run_dir are the same directory ({cfg.data.dir}); "
                        "the prepared data needs a directory of its own (e.g. data/NAME)")
    with losing_a_process_is_fatal(), hold_run_dir(cfg.train.run_dir), \
            out_of_memory_is_said(MEMORY_FIX):
        return pretrain_holding_the_run_dir(cfg)


def pretrain_holding_the_run_dir(cfg: Config) -> Path:
    # A missing init.checkpoint (or one whose weights are LFS pointers) is said before the data
    # is prepared. Here, not before the processes join: one host without it would leave the
    # others waiting 5 minutes to join.
    if cfg.init.checkpoint is not None:
        check_weights_fetched(check_checkpoint_path(cfg.init.checkpoint))
    run = resolve(cfg)
    cfg = run.cfg
    check_tokenizer(run.run_dir, Path(cfg.data.dir))
    mesh = make_mesh()
    keys = purpose_keys(cfg.train.seed)
    checkpoints = Checkpoints(run.run_dir, cfg.train.keep_checkpoints)
    run = fit_budget_to_checkpoint(run, checkpoints)
    state, optimizer, start, meta = start_state(run, keys[INIT], mesh, checkpoints)
    if start == run.total_steps and results_of_the_end(run.run_dir, start):
        checkpoints.close()
        print(f"{run.run_dir} is trained to its last step ({start}) already: nothing to do; "
              "raise train.steps (or train.tokens) to train on, or set a new train.run_dir")
        return run.run_dir
    # size_run checked the ramp's rows from step 0; a resume reads on from its checkpoint's row.
    # Here, before the run directory is written to: refused in the loop, the resume had already
    # rewritten config.yaml and deleted the finished run's results.json.
    check_row_numbers(run.total_steps, run.ramp.sequences_before(run.total_steps)
                      + stream_shift(run.ramp, cfg.data.seq_len, start, meta))
    checkpoints.check_room(state)
    # Entered before anything below writes or deletes: a wandb that refuses to start (online
    # without an API key) leaves the run directory as it was.
    with wandb_session(cfg.wandb, run.run_dir, config_lib.to_dict(cfg),
                       resuming=cfg.train.resume == "auto") as wandb_run:
        if cfg.train.resume == "never":
            forget_earlier_run(run.run_dir, checkpoints)
        # Written only now that the start is known to work: a refused resume (another model shape,
        # a damaged checkpoint) leaves the run's config.yaml describing its checkpoints.
        if jax.process_index() == 0:
            keep_tokenizer(run.run_dir, Path(cfg.data.dir))
            write_atomic(run.run_dir / "config.yaml", run.config_yaml)
            drop_rows_after(run.run_dir, start)  # a killed run's rows past the checkpoint
            # Results of an earlier end (train.steps raised since, or train.resume=never)
            # describe another run: kept, a kill after the new last checkpoint left them to a
            # rerun as this run's ("nothing to do", 24 steps' tokens and validation for a 30-step
            # model) and in its export
            (run.run_dir / "results.json").unlink(missing_ok=True)
        fpt = flops_per_token(cfg.model, cfg.data.seq_len, cfg.data.predictions)
        monitor = Monitor(run.run_dir, run.total_steps, start, wandb_run, fpt,
                          cfg.precision.compute, work_before=run.ramp.sequences_before)
        stop = StopSignal(mesh)
        try:  # from here: a failure in-process (a notebook) leaves no file open, no handler
            monitor.write(f"bertjax: {param_count(state.model):,} parameters, "
                          f"{jax.device_count()} device(s) ({jax.devices()[0].device_kind}), "
                          f"{run.total_steps} steps, "
                          f"{run.data.num_sequences:,} train sequences/epoch, attention: "
                          f"{attention_summary(cfg.model, cfg.precision.compute)}")
            if start:  # as a GLUE seed says it; before, only a changed config's warning did
                monitor.write(f"resumed at step {start} ({checkpoints.directory / str(start)})")
                warn_if_resumed_past(cfg.train.profile, start, "the run resumes")
            loop = Loop(run, mesh, keys, optimizer, monitor, checkpoints, meta, start,
                        lambda: initial_state(run, keys[INIT], mesh, load_init=True)[0])
            state = loop.train(state, start, stop)
        finally:
            stop.restore()
            monitor.close()
            checkpoints.close()
        if stop.stopped:
            raise StoppedBySignal(stop.received)
        # Parameters may be split across hosts (FSDP): every process joins the gather, then process
        # 0 alone runs fill-mask on its full copy (alone on the global mesh it would wait forever).
        model = full_copy(state.model) if cfg.train.fill_mask else state.model
        if jax.process_index() == 0:
            loop.write_results()
            finish(run, model)
        return run.run_dir


def forget_earlier_run(run_dir: Path, checkpoints: Checkpoints) -> None:
    """train.resume=never starts over: the earlier run's checkpoints go (a later resume would
    else continue them; its metrics.jsonl rows and results.json go as every start's do)."""
    steps = checkpoints.all_steps()
    if steps:
        print(f"train.resume=never: deleting {run_dir}'s earlier checkpoints {steps} and its "
              "results.json", file=sys.stderr)
    for step in steps:
        checkpoints.delete(step)


def initial_state(run: Run, key: jax.Array, mesh, load_init: bool):
    """(train state on the mesh before any step, optimizer, tokens of earlier phases): fresh, or
    init.checkpoint's weights (continued pretraining) when `load_init`."""
    cfg = run.cfg
    model = new_bert(cfg.model, key=key, nsp=cfg.data.objective != "mlm")
    tokens_before = 0  # earlier phases' tokens (continued pretraining); None when unknown
    if load_init and cfg.init.checkpoint is not None:
        model, tokens_before = continue_from(model, cfg, run.tokenizer)
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    state = shard_params(init_state(model, optimizer, cfg.precision), mesh, cfg.mesh)
    return state, optimizer, tokens_before


def start_state(run: Run, key: jax.Array, mesh, checkpoints: Checkpoints):
    """(train state on the mesh, optimizer, first step, checkpoint meta): fresh, from
    init.checkpoint's weights (continued pretraining), or the newest checkpoint (resume)."""
    latest = checkpoints.latest_step() if run.cfg.train.resume == "auto" else None
    seen_alike_by_every_process(f"the newest checkpoint in {checkpoints.directory}",
                                "none" if latest is None else f"step {latest}")
    state, optimizer, tokens_before = initial_state(run, key, mesh, load_init=latest is None)
    if latest is None:
        return state, optimizer, 0, {"tokens_before": tokens_before}
    state, meta = restore_resumed(run, checkpoints, latest, state, mesh)
    if meta.get("config_hash") != config_hash(run.config_yaml) and (
            changed := what_changed(run, meta)) is not None:
        print(f"warning: resuming {run.run_dir} with a config that differs from the "
              f"checkpoint's{changed}", file=sys.stderr)
    warn_if_other_data(run, meta)
    return state, optimizer, meta["step"], meta


def finish(run: Run, model: Bert) -> None:
    """End of training: curves to PNG and fill-mask examples."""
    plot.plot_finished_run(run.run_dir)
    sentences = run.cfg.train.fill_mask
    if sentences:
        print("fill-mask predictions:")
        for text, top in zip(sentences, fill_mask(model, run.tokenizer, sentences, top_k=3),
                             strict=True):
            # A [MASK] past the model's positions was cut away with the text's end (as predict)
            guesses = (", ".join(f"{tok} ({p:.2f})" for tok, p in top[0]) if top else
                       "[MASK] lies beyond the model's positions (the input was cut)")
            print(f"  {text}  ->  {guesses}")


def results_of_the_end(run_dir: Path, last_step: int) -> bool:
    """Whether run_dir's results.json is that of the run's end at `last_step`. An earlier bertjax
    left a run trained on (train.steps raised) and killed after its new last checkpoint with the
    earlier end's results, and each rerun said "nothing to do" over them: such a run finishes
    now (its last validation and results)."""
    try:
        return json.loads((run_dir / "results.json").read_bytes())["steps"] == last_step
    except (OSError, ValueError, TypeError, KeyError):  # none, or damaged: not the end's
        return False
