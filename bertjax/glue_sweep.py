"""GLUE's learning-rate sweep, BERT's fine-tuning protocol (Devlin et al. 2019, section 4.1: the
best of 5e-5, 4e-5, 3e-5 and 2e-5 on the dev set): `'glue.learning_rates=[5e-5,4e-5,3e-5,2e-5]'`.

Each rate is a plain fine-tune in a folder of its own, train.run_dir/lr<rate>/, whose config.yaml
holds that optim.lr and no sweep: it resumes, keeps its finished seeds and loads like any other
run. sweep.json lists every finished rate's main dev score over the seeds and names the best rate
(by median, as results.json summarises seeds; the earlier-listed rate on a tie) and its best
model. It is rewritten as each rate finishes, its "to_run" listing the rates still to come, and
its readers check that it still describes the folder (sweep_state.py: a rerun interrupted before
its first rate finished leaves an earlier sweep's file). The sweep holds its folder while it runs
(runlock.py): a second sweep there would train the same rates beside it.
"""

import dataclasses
import json
import warnings
from pathlib import Path

import jax

from bertjax import glue_tasks, plot
from bertjax.config import Config
from bertjax.files import check_dir_path, json_text, rate_folder, rate_runs, write_atomic
from bertjax.finetune import finetune
from bertjax.glue_eval import best_model_dir
from bertjax.processes import join_the_run, losing_a_process_is_fatal
from bertjax.runlock import check_run_dir_kind, hold_run_dir
from bertjax.sweep_state import SWEEP


def sweep(cfg: Config) -> Path:
    """Fine-tune once per glue.learning_rates entry (resuming what an earlier run left), then
    write sweep.json; returns train.run_dir. A signal stops it as it stops a fine-tune."""
    join_the_run(cfg)  # before the paths are checked, as finetune does: every host says a bad one
    parent = check_dir_path(cfg.train.run_dir, "train.run_dir")
    check_run_dir_kind(parent, "sweep", cfg.init.checkpoint)
    run_dirs = []
    with losing_a_process_is_fatal(), hold_run_dir(parent):
        for lr in cfg.glue.learning_rates:
            run_dirs.append(finetune(for_rate(cfg, lr)))
            if jax.process_index() == 0:
                report = summarize(cfg, run_dirs)
                write_atomic(parent / SWEEP, json_text(report))
    if jax.process_index() == 0:
        warn_unlisted_rates(parent, run_dirs)
        plot.plot_finished_run(parent)  # every rate's seeds: curves.png
        print(describe(report, parent / SWEEP))
    return parent


def for_rate(cfg: Config, lr: float) -> Config:
    """The plain fine-tune of one rate: optim.lr set, no sweep, in its own folder (named by the
    rate's repr, unique per float: lr2e-05, lr0.0001), and named so in wandb (rte-lr2e-05)."""
    parent, folder = Path(cfg.train.run_dir), rate_folder(lr)
    return dataclasses.replace(
        cfg, optim=dataclasses.replace(cfg.optim, lr=lr),
        glue=dataclasses.replace(cfg.glue, learning_rates=[]),
        train=dataclasses.replace(cfg.train, run_dir=str(parent / folder)),
        wandb=dataclasses.replace(cfg.wandb,
                                  name=f"{cfg.wandb.name or parent.resolve().name}-{folder}"))


def warn_unlisted_rates(parent: Path, run_dirs: list[Path]) -> None:
    """Name the runs of rates no longer listed: kept (the user's results), but left out of
    sweep.json, so a reader of the folder could take them for part of this sweep."""
    listed = {run_dir.name for run_dir in run_dirs}
    unlisted = [run for run in rate_runs(parent) if run.name not in listed]
    if unlisted:
        warnings.warn(f"{', '.join(map(str, unlisted))}: not in glue.learning_rates, so left "
                      "out of sweep.json (kept); delete them, or list their rates again",
                      stacklevel=2)


def summarize(cfg: Config, run_dirs: list[Path]) -> dict:
    """sweep.json: each rate's main-score statistics, best model and GLUE submission files (its
    results.json's), and the best rate's: the files to send the leaderboard. `run_dirs` are
    the runs of the first rates listed (those finished); the others are "to_run"."""
    rates = []
    for lr, run_dir in zip(cfg.glue.learning_rates, run_dirs, strict=False):
        results = json.loads((run_dir / "results.json").read_bytes())
        rates.append({"lr": lr, "run_dir": str(run_dir), "main_score":
                      results["summary"]["main_score"],
                      "best_model": str(best_model_dir(run_dir, results["seeds"])),
                      "submissions": results["submissions"]})
    best = max(rates, key=lambda r: r["main_score"]["median"])  # first of equals
    task = glue_tasks.get_task(cfg.glue.task)
    return {"task": task.name, "init": cfg.init.checkpoint, "seeds": list(cfg.glue.seeds),
            "main_score": task.metrics[0] if len(task.metrics) == 1 else
            f"mean of {' and '.join(task.metrics)}", "rates": rates,
            "to_run": cfg.glue.learning_rates[len(rates):],
            "best": {k: best[k] for k in ("lr", "run_dir", "best_model", "submissions")}}


def describe(report: dict, path: Path) -> str:
    """The sweep as a few lines: one per rate, the best one marked."""
    lines = [f"{report['task']} learning-rate sweep, main dev score ({report['main_score']}) "
             f"over seeds {report['seeds']}:"]
    for r in report["rates"]:
        s = r["main_score"]
        mark = f"   <- best: {r['best_model']}" if r["lr"] == report["best"]["lr"] else ""
        lines.append(f"  lr {r['lr']:g}: median {s['median']:.4f}, mean {s['mean']:.4f}, "
                     f"std {s['std']:.4f}{mark}")
    return "\n".join([*lines, f"{path}"])
