"""CPU-scale GLUE experiment: a pretrained `mini` encoder vs the same recipe from random init.

    .venv/bin/python bench/glue_experiment.py --pretrained runs/pretrain_mini \
        --tokenizer data/corpus_mini/tokenizer.json [--out runs/glue_experiment]

Runs `python -m bertjax.train configs/<task>.yaml` on the local GLUE files in ../shared/data
(MNLI: the 10 k training pairs and the dev_matched subset) for each task and initialisation, then
prints one table of dev scores (mean +- std over seeds). Sized to fit ~25 minutes on 2 shared
cores: MNLI and SST-2 with 3 seeds on 4,000-example training subsets (one MNLI seed on all 10 k
pairs took ~10 min here); RTE, CoLA and STS-B with one seed, run only when asked (--tasks).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT.parent / "shared" / "data" / "glue"

# task: (extra overrides, seeds)
PLAN = {
    "mnli": (["glue.train_file=train_pairs10k.tsv", "glue.dev_files=[dev_matched_subset.tsv]",
              "glue.max_train_examples=4000", "glue.epochs=1"], [0, 1, 2]),
    "sst2": (["glue.max_train_examples=4000", "glue.epochs=1", "glue.buckets=[32,64]"],
             [0, 1, 2]),
    "rte": (["glue.epochs=2"], [0]),
    "cola": (["glue.epochs=1", "glue.buckets=[32,64]"], [0]),
    "stsb": (["glue.epochs=2", "glue.buckets=[64,128]"], [0]),
}


def run(task: str, init: str, args) -> dict:
    extra, seeds = PLAN[task]
    seeds = args.seeds or seeds
    run_dir = Path(args.out) / f"{task}_{init}"
    cmd = [sys.executable, "-m", "bertjax.train", f"configs/{task}.yaml",
           f"glue.data_dir={GLUE}", f"train.run_dir={run_dir}", f"glue.seeds={seeds}",
           f"optim.lr={args.lr}", *extra]
    if init == "pretrained":
        cmd.append(f"init.checkpoint={args.pretrained}")
    else:
        cmd += ["model.size=mini", f"tokenizer.path={args.tokenizer}"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads((run_dir / "results.json").read_text())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", default="runs/glue_experiment")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="*", help="override the plan's seeds")
    parser.add_argument("--tasks", nargs="*", default=["mnli", "sst2"], choices=list(PLAN))
    args = parser.parse_args()
    table = []
    for task in args.tasks:
        for init in ("pretrained", "random"):
            summary = run(task, init, args)["summary"]
            table.append((task, init, summary))
            print(f"== {task} {init}: {json.dumps(summary['main_score'])}", flush=True)
    print(f"\n{'task':6} {'init':10} {'seeds':>5} {'main score mean':>16} {'std':>7} "
          f"{'min':>7} {'max':>7}   metrics (mean)")
    for task, init, s in table:
        m = s["main_score"]
        metrics = ", ".join(f"{k}={v['mean']:.4f}" for k, v in s.items() if k != "main_score")
        seeds = len(args.seeds or PLAN[task][1])
        print(f"{task:6} {init:10} {seeds:>5} {m['mean']:16.4f} {m['std']:7.4f} "
              f"{m['min']:7.4f} {m['max']:7.4f}   {metrics}")


if __name__ == "__main__":
    main()
