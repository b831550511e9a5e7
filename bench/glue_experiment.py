"""CPU-scale GLUE experiment: a pretrained encoder vs the same recipe from random init.

    .venv/bin/python bench/glue_experiment.py --pretrained runs/pretrain_mini_12m \
        [--tokenizer runs/pretrain_mini_12m/tokenizer.json] [--out runs/glue_experiment] \
        [--jobs N] [--glue-dir DIR] [--override KEY=VALUE ...]

Runs `python -m bertjax.train configs/<task>.yaml` on the local GLUE files in ../shared/data
(MNLI: the 10 k training pairs and the dev_matched subset) for each task and initialisation, with
3 seeds each, then prints one table of dev scores (mean, std, min, max over seeds), the gain
of pretraining and each run's wall time, and writes it to OUT/summary.json. The random baseline
uses the pretrained run's model shape and tokenizer. One JAX compilation cache (OUT/jax_cache)
serves all runs: both inits compile the same shapes. `--jobs N` runs N (task, init) runs at once,
each logging to OUT/<task>_<init>.log: on a GPU, where a mini run is bound by Python and
compilation, that is most of the speed-up; on 2 CPU cores two jobs gave ~1.1-1.2x the
throughput of one (log.md). `--override` appends config overrides to every run (after the plan's).
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from bertjax.starting_points import RUN_KEYS

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT.parent / "shared" / "data" / "glue"
SEEDS = [0, 1, 2]
INITS = ("pretrained", "random")

# task -> overrides. Buckets follow each task's token lengths (mini tokenizer: MNLI mean 46 / p99
# 116, SST-2 16 / 53, CoLA 13 / 28, RTE 76 / 128+, STS-B 33 / 91). MNLI gets 2 epochs: after one,
# a probe was still at chance (dev 0.306, train loss 1.105; after two 0.420, log.md).
PLAN = {
    "mnli": ["glue.train_file=train_pairs10k.tsv", "glue.dev_files=[dev_matched_subset.tsv]",
             "glue.epochs=2", "glue.buckets=[32,48,64,96]"],
    "sst2": ["glue.max_train_examples=6000", "glue.epochs=1", "glue.buckets=[16,32,64]"],
    "cola": ["glue.epochs=1", "glue.buckets=[16,32]"],
    "rte": ["glue.epochs=1", "glue.buckets=[64,96]"],
    "stsb": ["glue.epochs=1", "glue.buckets=[32,48,64]"],
}


def run(task: str, init: str, args) -> None:
    run_dir = Path(args.out) / f"{task}_{init}"
    cmd = [sys.executable, "-m", "bertjax.train", f"configs/{task}.yaml",
           f"glue.data_dir={args.glue_dir}", f"train.run_dir={run_dir}",
           f"glue.seeds={args.seeds}", f"optim.lr={args.lr}", *PLAN[task],
           "train.resume=never"]  # timed: a fresh run, never one resumed or found finished
    if init == "pretrained":
        cmd.append(f"init.checkpoint={args.pretrained}")
    else:
        # The architecture of the pretrained run; dropout and the like come from the fine-tuning
        # config for both inits (finetune.py does the same for a checkpoint).
        model = OmegaConf.load(Path(args.pretrained) / "config.yaml").model
        cmd += [f"model.{k}={v}" for k, v in model.items() if k not in RUN_KEYS]
        cmd.append(f"tokenizer.path={args.tokenizer}")
    cmd += args.override
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(Path(args.out).resolve() / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    start = time.perf_counter()
    if args.jobs == 1:
        subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    else:
        # Several processes share one accelerator: each takes memory as it needs it instead of
        # JAX's default 75 % up front.
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        with open(Path(args.out) / f"{task}_{init}.log", "w") as log:
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"{task} {init} failed (exit {done.returncode}); see {log.name}")
    seconds = time.perf_counter() - start
    (run_dir / "bench_seconds.json").write_text(json.dumps({"seconds": round(seconds, 1)}))
    summary = json.loads((run_dir / "results.json").read_text())["summary"]
    print(f"== {task} {init} ({seconds:.0f} s): {json.dumps(summary['main_score'])}", flush=True)


def table(out: Path) -> list[dict]:
    """Every finished (task, init) under `out`, so that separate invocations (e.g. --inits
    random while the encoder is still pretraining) add up to one table."""
    rows = []
    for task in PLAN:
        for init in INITS:
            run_dir = out / f"{task}_{init}"
            if (run_dir / "results.json").is_file():
                results = json.loads((run_dir / "results.json").read_text())
                seconds = json.loads((run_dir / "bench_seconds.json").read_text())["seconds"]
                rows.append({"task": task, "init": init, "seeds": len(results["seeds"]),
                             "seconds": seconds, "summary": results["summary"]})
    print(f"\n{'task':6} {'init':10} {'seeds':>5} {'score mean':>10} {'std':>7} {'min':>7} "
          f"{'max':>7} {'gain':>7} {'s':>6}   metrics (mean)")
    for row in rows:
        m = row["summary"]["main_score"]
        base = next((r for r in rows if r["task"] == row["task"] and r["init"] == "random"), None)
        gain = m["mean"] - base["summary"]["main_score"]["mean"] if base else float("nan")
        metrics = ", ".join(f"{k}={v['mean']:.4f}" for k, v in row["summary"].items()
                            if k != "main_score")
        print(f"{row['task']:6} {row['init']:10} {row['seeds']:>5} {m['mean']:10.4f} "
              f"{m['std']:7.4f} {m['min']:7.4f} {m['max']:7.4f} {gain:+7.4f} "
              f"{row['seconds']:6.0f}   {metrics}")
    print(f"fine-tuning time, the runs' times summed: {sum(r['seconds'] for r in rows) / 60:.1f} "
          "min")
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrained", required=True, help="pretraining run directory")
    parser.add_argument("--tokenizer", help="default: the run's tokenizer.json")
    parser.add_argument("--out", default="runs/glue_experiment")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--tasks", nargs="+", default=list(PLAN), choices=list(PLAN))
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--glue-dir", default=str(GLUE), help="GLUE TSVs (default: %(default)s)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, after the plan's (repeatable)")
    args = parser.parse_args()
    args.tokenizer = args.tokenizer or str(Path(args.pretrained) / "tokenizer.json")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pairs = [(task, init) for task in args.tasks for init in args.inits]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for future in [pool.submit(run, task, init, args) for task, init in pairs]:
            future.result()  # re-raises a failed run's error
    wall = time.perf_counter() - start
    rows = table(Path(args.out))
    print(f"wall time of these {len(pairs)} runs, {args.jobs} at a time: {wall / 60:.1f} min")
    (Path(args.out) / "summary.json").write_text(json.dumps(
        {"args": vars(args), "plan": PLAN, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
