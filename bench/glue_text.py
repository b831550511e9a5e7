"""The unlabeled text of the GLUE experiment's training files, as pretraining sources.

    .venv/bin/python bench/glue_text.py OUT_DIR [--glue-dir DIR]

Task-adaptive pretraining (TAPT, Gururangan et al. 2020, "Don't Stop Pretraining") continues MLM
on the text a task is trained on, without its labels. This writes that text for the tasks of
bench/glue_experiment.py: one plain-text file per task (OUT_DIR/<task>.txt) in the format
`data.sources` reads, one example per document (its sentence, or its two sentences on two lines)
and a blank line between examples. Only training files are read (MNLI: the 10 k training pairs of
the experiment); dev and test text never enters, so dev scores stay honest. Labels are dropped.
"""

import argparse
from pathlib import Path

from bertjax import glue, glue_tasks
from bertjax.errors import UserError, cli
from bertjax.files import check_dir_path, from_cwd, make_dir, write_atomic

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
# task -> training file of the experiment (bench/glue_experiment.py PLAN)
TRAIN_FILES = {"mnli": "train_pairs10k.tsv", "sst2": "train.tsv", "cola": "train.tsv",
               "rte": "train.tsv", "stsb": "train.tsv"}


def task_text(task: str, glue_dir: Path) -> list[str]:
    """One task's training examples as documents (its sentence, or its two on two lines)."""
    examples = glue.read_tsv(task, "train",
                             glue_dir / glue_tasks.get_task(task).dir / TRAIN_FILES[task])
    pairs = examples.text_b or [None] * len(examples)
    # Text lines must not be blank (a blank line ends a document); GLUE rows never are, but a
    # stray one would silently merge two examples.
    docs = ["\n".join(s.strip() for s in (a, b) if s and s.strip())
            for a, b in zip(examples.text_a, pairs, strict=True)]
    return [d for d in docs if d]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--glue-dir", default=str(GLUE), help="GLUE TSVs (default: %(default)s)")
    args = parser.parse_args()
    out = check_dir_path(args.out_dir, "OUT_DIR")
    if not Path(args.glue_dir).is_dir():
        raise UserError(f"--glue-dir {args.glue_dir} is not a directory{from_cwd(args.glue_dir)}; "
                        "pass the directory of GLUE TSVs (MNLI/, SST-2/, CoLA/, RTE/, STS-B/)")
    # Every task is read before anything is written: a bad --glue-dir leaves no OUT_DIR behind.
    texts = {task: task_text(task, Path(args.glue_dir)) for task in TRAIN_FILES}
    make_dir(out, "OUT_DIR")
    for task, docs in texts.items():
        write_atomic(out / f"{task}.txt", "\n\n".join(docs) + "\n")
        print(f"{task}: {len(docs)} training examples -> {out / f'{task}.txt'}")

if __name__ == "__main__":
    cli(lambda argv: main())  # a bad path or checkpoint: one line, exit 2
