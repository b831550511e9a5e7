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

from bertjax import glue
from bertjax.errors import cli

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
# task -> training file of the experiment (bench/glue_experiment.py PLAN)
TRAIN_FILES = {"mnli": "train_pairs10k.tsv", "sst2": "train.tsv", "cola": "train.tsv",
               "rte": "train.tsv", "stsb": "train.tsv"}


def write_task_text(task: str, glue_dir: Path, out: Path) -> int:
    """Write one task's training text to out; returns the number of documents written."""
    examples = glue.read_tsv(task, "train",
                             glue_dir / glue.get_task(task).dir / TRAIN_FILES[task])
    pairs = examples.text_b or [None] * len(examples)
    # Text lines must not be blank (a blank line ends a document); GLUE rows never are, but a
    # stray one would silently merge two examples.
    docs = ["\n".join(s.strip() for s in (a, b) if s and s.strip())
            for a, b in zip(examples.text_a, pairs, strict=True)]
    docs = [d for d in docs if d]
    out.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return len(docs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--glue-dir", default=str(GLUE), help="GLUE TSVs (default: %(default)s)")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for task in TRAIN_FILES:
        n = write_task_text(task, Path(args.glue_dir), out / f"{task}.txt")
        print(f"{task}: {n} training examples -> {out / f'{task}.txt'}")


if __name__ == "__main__":
    cli(lambda argv: main())  # a bad path or checkpoint: one line, exit 2
