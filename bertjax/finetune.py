"""GLUE fine-tuning: `python -m bertjax.train configs/mnli.yaml init.checkpoint=PATH`.

For each seed: a pretrained encoder (or a random one, the baseline) gets a fresh classifier or
regression head, trains with AdamW (warm-up + linear decay) on bucketed fixed-shape batches, is
evaluated on every dev split after each epoch, and the best epoch (GLUE's main score on the first
dev split) is kept as a release bundle. Then test predictions become GLUE submission files, and
`results.json` reports every seed with mean, median and spread. Progress goes to a bar,
`metrics.jsonl` and wandb (when enabled) through the same Monitor as pretraining.

Each seed's train state is checkpointed after every epoch and every train.checkpoint_every
steps, and a finished seed leaves `seedN/result.json`: rerunning the same command resumes an
interrupted fine-tune to the same result, and keeps finished seeds. A config that changes a key
deciding the result starts over; one that changes only RESULT_INDEPENDENT keys (logging, where
checkpoints fall, the seed list, ...) does not.

On several processes (jax.distributed, as in pretraining) every process reads the GLUE files and
builds every batch, feeds its own rows, and sees all predictions; process 0 writes the files.
"""

import dataclasses
import json
import re
import shutil
import warnings
from pathlib import Path

import jax
import yaml
from tokenizers import Tokenizer

from bertjax import config as config_lib
from bertjax import glue, glue_batches, glue_tasks, plot
from bertjax.checkpoint import latest_step
from bertjax.config import Config
from bertjax.config_changes import PRETRAINING_ONLY, changed_keys, listed
from bertjax.errors import StoppedBySignal, UserError, out_of_memory_is_said
from bertjax.files import check_dir_path, json_text, write_atomic
from bertjax.glue_eval import best_model_dir, best_seed, summarize, write_submissions
from bertjax.metrics import Monitor, wandb_session
from bertjax.model import Bert
from bertjax.precision import warn_if_slow_compute_dtype
from bertjax.processes import (
    StopSignal,
    barrier,
    join_the_run,
    losing_a_process_is_fatal,
    same_on_every_process,
    seen_alike_by_every_process,
)
from bertjax.runlock import check_run_dir_kind, hold_run_dir
from bertjax.seed_run import (
    INPUTS,
    Job,
    SeedRun,
    Stopped,
    build_steps,
    check_same_inputs,
    damaged_seed,
    encoded_parts,
    input_digests,
    load_best,
)
from bertjax.sharding import make_mesh, with_mesh
from bertjax.starting_points import RUN_KEYS, initial_model, load_start
from bertjax.step_trace import StepTrace, warn_if_past_the_end, warn_if_resumed_past
from bertjax.sweep_state import check_rate_folder
from bertjax.xla_options import compiler_options

# What a fine-tune too large for its GPU's memory can lower (batches are padded to a bucket).
MEMORY_FIX = ("lower glue.batch_size or the largest of glue.buckets, or turn on model.remat (off "
              "by default on a GPU); finished seeds and checkpoints already saved are kept")

# Config keys (or whole sections) that cannot change a seed's result, so a rerun that changes
# only these keeps the finished and interrupted seeds; every other change starts over.
RESULT_INDEPENDENT = {
    "wandb": "monitoring only",
    "train.log_every": "how often progress is logged, not what trains",
    "train.checkpoint_every": "resuming is exact, so where the saves fall does not matter",
    "train.keep_checkpoints": "fine-tuning keeps one checkpoint per seed whatever it says",
    "train.run_dir": "where the run lives (a moved directory), not what it computes",
    "train.profile": "which steps are traced, not what they compute",
    "train.resume": "whether to resume at all, decided on its own (never: start over)",
    "glue.seeds": "each seed's result depends on its own seed only; results report the listed",
    "mesh.coordinator_address": "how the processes find each other",
    "mesh.process_id": "differs between the processes of one run by design",
    "mesh.join_timeout": "how long the processes wait for each other to start",
    # ... and every key a fine-tune never reads: optim.schedule, for one, is always linear decay
    # to 0, but a config.yaml saved before 2026-12-01 (f821808) said one_cycle / 0.01, and a
    # rerun of such a run started its finished seeds over for a change that was none.
    **PRETRAINING_ONLY,
}


def finetune(cfg: Config) -> Path:
    """Fine-tune every seed of `cfg` (resuming an interrupted run); returns the run directory.
    Raises StoppedBySignal when SIGTERM/SIGINT stopped it after saving (not finished)."""
    join_the_run(cfg)  # before the paths are checked: a bad one is then said by every host
    compiler_options(cfg.train.xla_flags)  # an option XLA refuses, before any file is written
    check_dir_path(cfg.train.run_dir, "train.run_dir")
    check_run_dir_kind(cfg.train.run_dir, cfg.train.task, cfg.init.checkpoint)
    check_rate_folder(cfg.train.run_dir, cfg.optim.lr)
    glue.check_submission_inputs(cfg.glue)  # the test splits too: a bad one fails now, not after
    # One run at a time in a run directory.
    with losing_a_process_is_fatal(), hold_run_dir(cfg.train.run_dir), \
            out_of_memory_is_said(MEMORY_FIX):
        return finetune_holding_the_run_dir(cfg)


def finetune_holding_the_run_dir(cfg: Config) -> Path:
    job, change = setup(cfg)
    digests = input_digests(job.start, job.tok, job.train_enc, job.dev)
    if change is None and cfg.train.resume == "auto" and earlier_seed_dirs(job.run_dir):
        check_same_inputs(job.run_dir, cfg.init.checkpoint, digests)  # before anything is written
    # Entered before config.yaml and seeds_done's clearing: a wandb that refuses to start (online
    # without an API key) leaves the run directory as it was.
    with wandb_session(job.cfg.wandb, job.run_dir, config_lib.to_dict(job.cfg),
                       resuming=job.cfg.train.resume == "auto" and change is None) as wandb_run:
        return train_seeds(job, change, wandb_run, digests)


def train_seeds(job: Job, change: str | None, wandb_run, digests: dict) -> Path:
    """Write config.yaml and inputs.json, train (or resume, or keep) every seed, then the
    results and the submission files."""
    if job.main:
        write_atomic(job.run_dir / "config.yaml", config_lib.to_yaml(job.cfg))
        write_atomic(job.run_dir / INPUTS, json.dumps(digests))
    done = seeds_done(job, change)
    warn_unlisted_seeds(job)
    # Read back now: a damaged result stops the rerun before it writes metrics or results.
    finished = {seed: read_result(job.run_dir / f"seed{seed}") for seed, steps in done.items()
                if steps == job.steps.total}
    job.monitor = Monitor(job.run_dir, job.steps.total * len(job.cfg.glue.seeds),
                          sum(done.values()), wandb_run, None, job.cfg.precision.compute)
    job.stop = StopSignal(job.mesh)
    job.trace = StepTrace(job.cfg.train.profile, job.run_dir, job.monitor.write)
    warn_if_resumed_past(job.cfg.train.profile, min(done.values()),
                         "every seed resumes (or is done)")
    try:
        per_seed, best_model = run_seeds(job, done, finished)
    except Stopped as stopped:
        job.monitor.write(f"{job.stop.name}: saved seed {stopped.seed} at step {stopped.step}; "
                          "run the same command again to resume")
        raise StoppedBySignal(job.stop.received) from None
    finally:
        job.stop.restore()
        job.monitor.close()
    task = glue_tasks.get_task(job.cfg.glue.task).name
    results = {"task": task, "init": job.cfg.init.checkpoint, "seeds": per_seed,
               "summary": summarize(per_seed),
               "best_model": str(best_model_dir(job.run_dir, per_seed))}
    results["submissions"] = write_submissions(job.cfg, job.tok, job.run_dir, best_model,
                                               job.mesh, job.steps.predict)
    if job.main:
        write_atomic(job.run_dir / "results.json", json_text(results))
        plot.plot_finished_run(job.run_dir)
        s = results["summary"]["main_score"]
        print(f"{task}: main score mean {s['mean']:.4f}, median {s['median']:.4f}, "
              f"std {s['std']:.4f} over {len(per_seed)} seed(s); {job.run_dir / 'results.json'}")
    return job.run_dir


def with_glue_schedule(cfg: Config) -> Config:
    """Fine-tuning's schedule is warm-up + linear decay to 0 (BERT's), whatever optim.schedule
    says; the run's saved config.yaml records it so. A schedule other than the default asked
    for is said (it was replaced without a word)."""
    if cfg.optim.schedule == "constant":
        warnings.warn("optim.schedule=constant does not apply to GLUE fine-tuning, which uses "
                      "BERT's warm-up + linear decay to 0; drop it (optim.warmup and optim.lr "
                      "apply)", stacklevel=2)
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, schedule="linear",
                                                              final_lr_fraction=0.0))


def resolve(cfg: Config) -> tuple[Config, Bert | None, Tokenizer]:
    """The run's config as it will be used and saved (the checkpoint decides the architecture;
    dropout and how the encoder runs still come from the config), the start model and the
    tokenizer."""
    model, model_cfg, tok = load_start(cfg)
    model_cfg = dataclasses.replace(model_cfg, **{k: getattr(cfg.model, k) for k in RUN_KEYS})
    cfg = with_glue_schedule(dataclasses.replace(cfg, model=model_cfg))
    warn_if_slow_compute_dtype(cfg.precision.compute)
    if cfg.glue.batch_size % jax.device_count():
        raise UserError(f"glue.batch_size={cfg.glue.batch_size} must be a multiple of the "
                        f"{jax.device_count()} devices")
    if cfg.glue.buckets[-1] > model_cfg.max_position_embeddings:
        raise UserError(f"glue.buckets={list(cfg.glue.buckets)} go up to {cfg.glue.buckets[-1]} "
                        f"tokens but the model has {model_cfg.max_position_embeddings} positions; "
                        "use buckets of at most that length")
    return cfg, model, tok


def setup(cfg: Config) -> tuple[Job, str | None]:
    """Load the start model and the GLUE data and build the steps, writing no file; also
    returns how the run directory's earlier config.yaml differs in a result-deciding key
    (`config_change`), None when it does not (then the run may resume)."""
    cfg, model, tok = resolve(cfg)
    train = glue.load_split(cfg.glue, "train")
    train_enc = glue_batches.encode(tok, train, cfg.glue.buckets)
    dev = {}
    for split in glue.dev_splits(cfg.glue):
        examples = glue.load_split(cfg.glue, split)
        dev[split] = (examples, glue_batches.encode(tok, examples, cfg.glue.buckets))
    same_inputs_on_every_process(tok, train_enc, dev)
    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = config_lib.to_yaml(cfg)
    change = config_change(run_dir / "config.yaml", config_yaml)
    barrier("config compared")  # before process 0 writes the new one
    mesh = make_mesh()
    steps = build_steps(cfg, train_enc, initial_model(cfg.glue.seeds[0], model, cfg))
    warn_if_past_the_end(cfg.train.profile, steps.total, "a seed's")
    # The model's sharding hints (FSDP: gather weights, keep activations split by rows) act
    # under the mesh only.
    steps = dataclasses.replace(steps, train_step=with_mesh(steps.train_step, mesh),
                                predict=with_mesh(steps.predict, mesh))
    job = Job(cfg, tok, model, train_enc, dev, mesh, run_dir, steps)
    if job.main:
        print(f"{glue_tasks.get_task(cfg.glue.task).name}: {len(train)} training examples "
              f"({train_enc.truncated} truncated to {cfg.glue.buckets[-1]} tokens), dev "
              f"{[len(e) for e, _ in dev.values()]}, seeds {cfg.glue.seeds}, "
              f"{jax.process_count()} process(es), {jax.device_count()} device(s) "
              f"({jax.devices()[0].device_kind})")  # as pretraining says it: which GPU a log is of
    return job, change


def config_change(saved: Path, config_yaml: str) -> str | None:
    """How the run directory's earlier config.yaml differs from `config_yaml` in keys that
    decide a seed's result (the first few), or None. A missing or unreadable one (damaged, not
    UTF-8 even) differs: what it trained cannot be told. The old one is read through today's
    schema: a key added since then takes its default, which computes what the run computed
    (compared as written, every new key read as a change and started the seeds over)."""
    try:
        old = yaml.safe_load(config_lib.to_yaml(config_lib.from_yaml_text(
            saved.read_text(encoding="utf-8"), str(saved))))
    except (OSError, ValueError, UserError):
        return "its config.yaml is missing or unreadable"
    changed = [key for key in changed_keys(old, yaml.safe_load(config_yaml))
               if not any(key == k or key.startswith(f"{k}.") for k in RESULT_INDEPENDENT)]
    return f"{listed(changed, 3)} changed" if changed else None


def seeds_done(job: Job, change: str | None) -> dict[int, int]:
    """{seed: steps already done}; a result-deciding config change (or train.resume=never)
    starts over and removes what an earlier run of this directory left."""
    done = {seed: steps_done(job.run_dir / f"seed{seed}", job.steps.total)
            for seed in job.cfg.glue.seeds}
    seen_alike_by_every_process(f"the seeds done in {job.run_dir}", ", ".join(
        f"seed {seed} at step {step}" for seed, step in done.items()))
    if job.cfg.train.resume == "auto" and change is None:
        say_seeds_trained_again(job, done)
        return done
    # A listed seed's best/ alone is an earlier run's too (a bertjax before 2026-12-01 left no
    # more): its start-over went unsaid.
    if job.main and (earlier_seed_dirs(job.run_dir) or
                     any((job.run_dir / f"seed{seed}" / "best").is_dir() for seed in done)):
        print(f"{job.run_dir} holds an interrupted or finished fine-tune"
              f"{f' with another config ({change})' if change else ''}: starting over")
    if job.main:
        (job.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        # The earlier seeds' summary: read while this run trains (or after it was interrupted),
        # it was taken for this config's results
        (job.run_dir / "results.json").unlink(missing_ok=True)
        # Every seed, listed or not: the seed list decides nothing, so an unlisted seed left
        # here would later be taken for one this config finished.
        listed = {f"seed{seed}" for seed in job.cfg.glue.seeds}
        orphans = []
        for seed_dir in earlier_seed_dirs(job.run_dir):
            (seed_dir / "result.json").unlink(missing_ok=True)
            shutil.rmtree(seed_dir / "checkpoints", ignore_errors=True)
            if seed_dir.name not in listed and (seed_dir / "best").is_dir():
                orphans.append(seed_dir / "best")
        if orphans:  # the user's models, never deleted; no longer found by warn_unlisted_seeds
            warnings.warn(f"{', '.join(map(str, sorted(orphans)))}: the earlier run's best "
                          "model, of another config, kept but no part of this run; delete it "
                          "(predict or export would take it for this run's)", stacklevel=2)
    barrier("fine-tuning starts over")
    return dict.fromkeys(done, 0)


def say_seeds_trained_again(job: Job, done: dict[int, int]) -> None:
    """A seed with a best/ model but no result.json or checkpoint cannot be kept or resumed: it
    trains again and its best/ is replaced. Said: a bertjax before 2026-12-01 left every seed
    so (its reruns started over), and today's rerun trained them all again without a word,
    where the README says finished seeds are kept."""
    again = [seed for seed, steps in done.items() if steps == 0 and
             (job.run_dir / f"seed{seed}" / "best" / "manifest.json").is_file()]
    if job.main and again:
        print(f"{job.run_dir}: seed(s) {again} hold a best/ model but no result.json or "
              "checkpoint (a bertjax before 2026-12-01 kept no per-seed results): training "
              "them again, which replaces their best/")


def warn_unlisted_seeds(job: Job) -> None:
    """Name the seedN/ folders of seeds no longer in glue.seeds: kept (they are the user's
    results, never deleted silently), but results.json leaves them out, so a reader of the
    directory could take them for part of this run."""
    listed = {f"seed{seed}" for seed in job.cfg.glue.seeds}
    unlisted = sorted((p for p in earlier_seed_dirs(job.run_dir) if p.name not in listed),
                      key=lambda p: int(p.name[4:]))
    if job.main and unlisted:
        warnings.warn(f"{', '.join(str(p) for p in unlisted)}: not in glue.seeds="
                      f"{list(job.cfg.glue.seeds)}, so left out of results.json (kept); delete "
                      "them, or list their seeds again", stacklevel=2)


def earlier_seed_dirs(run_dir: Path) -> list[Path]:
    """The seedN/ folders holding a result or train state of an earlier run."""
    return [p for p in run_dir.glob("seed*") if re.fullmatch(r"seed\d+", p.name) and
            ((p / "result.json").is_file() or (p / "checkpoints").is_dir())]


def run_seeds(job: Job, done: dict[int, int],
              finished: dict[int, dict]) -> tuple[list[dict], Bert]:
    """Each seed's result, in glue.seeds' order (fine-tuned now, or `finished` by an earlier
    run), and the best seed's best model (for the submission files)."""
    seeds = job.cfg.glue.seeds
    # Seeds an earlier run left unfinished go first: their rows go on at the steps they started
    # at, and a seed that starts now writes after every row the file holds. A new seed listed
    # before an unfinished one ([2,1] after [0,1] stopped in seed 1) took the steps after the
    # file's rows, and seed 1's rows then went back below its (wandb drops such rows).
    order = sorted(seeds, key=lambda seed: not 0 < done[seed] < job.steps.total)
    results, best = {}, None  # best: (result, its best model when in memory)
    for seed in order:
        i, seed_dir = seeds.index(seed), job.run_dir / f"seed{seed}"
        if seed in finished:  # finished before an interruption
            result, seed_best = finished[seed], None
            job.monitor.write(f"{job.cfg.glue.task} seed {seed}: done before, "
                              f"{seed_dir / 'result.json'}")
        else:
            result, seed_best = SeedRun(job, seed, i * job.steps.total).run()
            if job.main:
                write_atomic(seed_dir / "result.json", json_text(result))
            barrier(f"seed {seed} done")  # then its checkpoint is no longer needed
            if job.main:
                shutil.rmtree(seed_dir / "checkpoints", ignore_errors=True)
        results[seed] = result
        # Best of those so far, listed in glue.seeds' order as best_seed reads them: the best
        # of all was so when it came, and none after it is.
        if best_seed([results[s] for s in seeds if s in results]) is result:
            best = result, seed_best
    return ([results[seed] for seed in seeds],
            best[1] or load_best(job.run_dir / f"seed{best[0]['seed']}"))


def same_inputs_on_every_process(tok: Tokenizer, train_enc, dev: dict) -> None:
    """Hosts without shared storage read their own GLUE files and tokenizer: refuse to train
    on batches that differ between processes (each would feed rows of another dataset)."""
    if not same_on_every_process(encoded_parts(tok, train_enc, dev)):
        raise UserError("the processes read different GLUE data or tokenizers (glue.data_dir, "
                        "init.checkpoint): give every host the same files")


def read_result(seed_dir: Path) -> dict:
    """The result.json of a seed an earlier run finished; a damaged one (cut short, edited) is
    a UserError: the scores it held are gone, only training that seed again brings them back."""
    path = seed_dir / "result.json"
    try:
        result = json.loads(path.read_bytes())
    except ValueError as e:  # not UTF-8, not JSON
        raise damaged_seed(seed_dir, path, f"not valid JSON: {e}") from None
    if not isinstance(result, dict) or not isinstance(result.get("best_score"), int | float) \
            or not isinstance(result.get("best_metrics"), dict):
        raise damaged_seed(seed_dir, path, "no numeric best_score and best_metrics in it")
    return result


def steps_done(seed_dir: Path, total: int) -> int:
    """How far an earlier run of this seed got: `total` when it finished (result.json), else
    its newest checkpoint's step, else 0."""
    if (seed_dir / "result.json").is_file():
        return total
    if not (seed_dir / "checkpoints").is_dir():
        return 0
    return latest_step(seed_dir) or 0
