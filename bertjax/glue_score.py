"""Score a trained classifier on a GLUE task's dev split(s) with the official metrics, and with
--out write its scores and the task's leaderboard files: `python -m bertjax.glue_score CHECKPOINT`.

CHECKPOINT is anything load_pretrained reads: a seed's best/ (its task and GLUE files are the
ones it was fine-tuned on), a release bundle, a Hugging Face classifier directory or hub id
(--task needed). The checkpoint's classes are matched to the task's by name (id2label, or
--labels): a model fine-tuned on the hub's MNLI orders them unlike GLUE's files. One process.
"""

import argparse
import contextlib
import dataclasses
import json
import re
import warnings
from pathlib import Path

import jax
import numpy as np

from bertjax import glue, glue_batches, glue_metrics, glue_tasks
from bertjax.config import Config, GlueConfig, MeshConfig
from bertjax.errors import UserError, cli, out_of_memory_is_said
from bertjax.files import (
    ArgParser,
    check_dir_path,
    json_text,
    make_dir,
    not_a_dir,
    path_argument,
    write_atomic,
)
from bertjax.glue_eval import predict_split, warn_partial_submission
from bertjax.model import num_labels
from bertjax.precision import Precision
from bertjax.pretrained import Pretrained, fine_tune_config, load_pretrained
from bertjax.sharding import make_mesh, shard_params, with_mesh
from bertjax.step import make_glue_predict

SCORED = [name for name, t in glue_tasks.TASKS.items() if t.dev_splits]  # not AX (test only)
SCORES = "scores.json"
USAGE = ("usage: python -m bertjax.glue_score CHECKPOINT [--task T] [--data-dir DIR] "
         "[--dev-files A,..] [--labels A,B,..] [--out DIR [--force]] [--batch-size B] "
         "[--allow-tokenizer-mismatch]")
GENERIC_NAME = re.compile(r"label_?\d+")  # transformers' names for unnamed classes
# The GLUE readers' messages name these options, not the fine-tune's keys (no training split
# is read here, so no training file is ever named)
AS_OPTIONS = glue.Naming("--data-dir ", "give --data-dir", "or leave it out to use the hub",
                         "glue.train_file=NAME", "--dev-files", " NAME,...")


def main(argv: list[str]) -> None:
    parser = ArgParser(usage_line=USAGE, prog="python -m bertjax.glue_score", doc=__doc__)
    parser.add_argument("checkpoint", type=path_argument,
                        help="a fine-tuned classifier: a seed's best/, a bundle, a Hugging Face "
                             "directory or hub id")
    parser.add_argument("--task", choices=SCORED,
                        help="the GLUE task (default: the one the checkpoint was fine-tuned on)")
    parser.add_argument("--data-dir", type=path_argument,
                        help="original GLUE TSVs (default: the checkpoint's glue.data_dir, else "
                             "the hub)")
    parser.add_argument("--dev-files", type=file_names,
                        help="the dev TSVs inside DIR/<Task>/ when not GLUE's names, comma-"
                             "separated, read as the task's dev splits in order (fewer names "
                             "score fewer splits)")
    parser.add_argument("--labels", help="the checkpoint's classes in index order, comma-"
                                         "separated, as GLUE or the hub names them")
    parser.add_argument("--out", type=path_argument,
                        help="write scores.json and the test splits' submission files here")
    parser.add_argument("--force", action="store_true", help="replace an earlier --out's files")
    parser.add_argument("--batch-size", type=int, help="default: the fine-tune's glue.batch_size")
    parser.add_argument("--allow-tokenizer-mismatch", action="store_true",
                        help="use a bundle whose tokenizer.json is not the one it was exported "
                             "with (its manifest says so)")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.force and not args.out:
        raise UserError("--force replaces an earlier --out's files; give --out DIR")
    out = check_out_dir(Path(args.out), args.force) if args.out else None
    pretrained = load_pretrained(args.checkpoint, args.allow_tokenizer_mismatch)
    trained = fine_tune_config(pretrained)
    task = task_to_score(args.checkpoint, args.task, trained, pretrained)
    order = class_order(task, args.labels.split(",") if args.labels else
                        list(pretrained.label_names), args.checkpoint, given=bool(args.labels))
    glue_cfg = data_config(args.checkpoint, task, args.data_dir, args.dev_files, trained,
                           pretrained)
    with out_of_memory_is_said("lower --batch-size"):
        scores, predictions = score(pretrained, glue_cfg, order, args.batch_size,
                                    with_tests=bool(out))
    for split, row in scores["dev"].items():
        print(f"{task} {split} ({row['examples']} examples): " +
              ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items()) +
              f"; main score {row['main_score']:.4f}")
    if out is not None:
        write_outputs(out, {"checkpoint": str(args.checkpoint), **scores}, predictions)


def file_names(text: str) -> list[str]:
    """argparse `type` of --dev-files: comma-separated names, none empty (a stray comma)."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} holds an empty name; give file names "
                                         "separated by commas, e.g. dev_matched_subset.tsv")
    return names


def task_to_score(path: str, asked: str | None, trained: Config | None,
                  pretrained: Pretrained) -> str:
    """--task, else the task the checkpoint was fine-tuned on; its classifier must fit it."""
    outputs = num_labels(pretrained.model)
    if not outputs:
        raise UserError(f"{path} has no classifier (a pretrained encoder); fine-tune it on the "
                        "task first: python -m bertjax.train configs/<task>.yaml "
                        f"init.checkpoint={path}")
    if trained is not None and asked not in (None, trained.glue.task):
        raise UserError(f"{path} was fine-tuned on {trained.glue.task}, not {asked}; score it "
                        f"on {trained.glue.task} (drop --task), or fine-tune it on {asked}")
    task = asked or (trained.glue.task if trained is not None else None)
    if task is None:
        raise UserError(f"{path} does not record the GLUE task it was fine-tuned on (a Hugging "
                        f"Face classifier); give --task, one of {', '.join(SCORED)}")
    t = glue_tasks.get_task(task)
    if outputs != t.num_labels:
        what = "a regressor (1 output)" if outputs == 1 else f"{outputs} classes"
        need = "a regressor (1 output)" if not t.labels else f"{t.num_labels} classes"
        raise UserError(f"{path} has {what}, but {task} needs {need}: it was fine-tuned on "
                        "another task; give its --task, or a checkpoint fine-tuned on "
                        f"{task}")
    return task


def class_order(task: str, names: list[str], path: str, given: bool) -> np.ndarray | None:
    """Column order that puts the checkpoint's class outputs in the task's (GLUE's) label
    order; None for a regressor. Classes named generically (LABEL_0, ...) or not at all are read
    in GLUE's order."""
    t = glue_tasks.get_task(task)
    if not t.labels:
        if given:
            raise UserError(f"--labels names classes, but {task} is a regression task (one "
                            "score); drop --labels")
        return None
    identity = np.arange(t.num_labels)
    spelled = [n.strip().lower().replace("-", "_").replace(" ", "_") for n in names]
    if not names or (not given and all(GENERIC_NAME.fullmatch(n) for n in spelled)):
        if task == "mnli":  # the only task whose hub order differs from GLUE's
            warnings.warn(f"{path} does not name its classes: read in GLUE's order "
                          f"({', '.join(t.labels)}); a model fine-tuned on the hub's MNLI "
                          "(nyu-mll/glue) orders them entailment, neutral, contradiction: then "
                          "pass --labels entailment,neutral,contradiction", stacklevel=2)
        return identity
    aliases = {name: i for i, name in enumerate(t.labels)} | \
        {name: i for i, name in enumerate(t.hub_labels)}
    index = [aliases.get(n) for n in spelled]
    source = "--labels" if given else f"{path}'s class names"
    if len(names) != t.num_labels or None in index or len(set(index)) != t.num_labels:
        accepted = " | ".join("/".join(dict.fromkeys(
            [t.labels[i]] + ([t.hub_labels[i]] if t.hub_labels else []))) for i in identity)
        raise UserError(f"{source} ({', '.join(names)}) are not {task}'s {t.num_labels} classes "
                        f"({accepted}); pass --labels naming the checkpoint's classes in index "
                        "order in those terms")
    return np.argsort(index)  # column j of the result = the checkpoint's class for label j


def data_config(path: str, task: str, data_dir: str | None, dev_files: list[str] | None,
                trained: Config | None, pretrained: Pretrained) -> GlueConfig:
    """Where the task's splits are read from and how they are cut: the fine-tune's glue
    settings (its files, buckets, batch size) when it was fine-tuned on this task, with
    --data-dir replacing its files; else GLUE's files in --data-dir, or the hub. --dev-files
    names the dev files in either folder."""
    cfg = trained.glue if trained is not None else GlueConfig(task=task)
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise UserError(f"--data-dir {data_dir} {not_a_dir(data_dir)}; give the directory "
                            "of GLUE's task folders (e.g. glue_data, holding SST-2/dev.tsv)")
        cfg = dataclasses.replace(cfg, data_dir=data_dir, train_file=None, dev_files=[])
    elif cfg.data_dir is not None and not Path(cfg.data_dir).is_dir():
        raise UserError(f"{path} was fine-tuned on the GLUE files in {cfg.data_dir}, which "
                        f"{not_a_dir(cfg.data_dir)}; give --data-dir DIR")
    if dev_files is not None:
        if cfg.data_dir is None:
            raise UserError("--dev-files names files inside --data-dir (the hub's splits have "
                            "no files); give --data-dir too")
        cfg = dataclasses.replace(cfg, dev_files=dev_files)
    positions = pretrained.model_cfg.max_position_embeddings
    if cfg.buckets[-1] > positions:  # a Hugging Face model of fewer positions than 128
        cfg = dataclasses.replace(cfg, buckets=[b for b in cfg.buckets if b < positions] +
                                  [positions])
    return cfg


def score(pretrained: Pretrained, cfg: GlueConfig, order: np.ndarray | None,
          batch_size: int | None, with_tests: bool) -> tuple[dict, dict]:
    """({task, classes, data_dir, dev: {split: examples, source, metrics, main_score}},
    {(task, split): (index, predictions)} of the test splits to submit, when `with_tests`)."""
    tok = pretrained.tokenizer()
    compute = pretrained.config.precision.compute if pretrained.config else "float32"
    mesh = make_mesh()
    devices = jax.device_count()
    rows = -(-(batch_size or cfg.batch_size) // devices) * devices  # the devices split it
    predict = with_mesh(make_glue_predict(Precision.from_names(compute)), mesh)
    model = shard_params(pretrained.model, mesh, MeshConfig())

    def predictions(task: str, split: str):
        examples = glue.load_split(cfg, split, task=task, naming=AS_OPTIONS)
        enc = glue_batches.encode(tok, examples, cfg.buckets)
        logits = predict_split(predict, model, enc, rows, mesh)
        return examples, logits if order is None else logits[:, order]

    dev = {}
    for split in glue.dev_splits(cfg):
        examples, logits = predictions(cfg.task, split)
        metrics = glue_metrics.compute_metrics(cfg.task, logits, examples.labels)
        dev[split] = {"examples": len(examples), "source": examples.source, "metrics": metrics,
                      "main_score": glue_metrics.main_score(cfg.task, metrics)}
    tests = {}
    if with_tests:
        for task, split in glue_tasks.submissions(cfg.task):
            if glue.split_available(cfg, split, task=task):
                examples, logits = predictions(task, split)
                tests[(task, split)] = (examples.index, logits)
    t = glue_tasks.get_task(cfg.task)
    return {"task": cfg.task, "classes": list(t.labels), "data_dir": cfg.data_dir,
            "dev": dev}, tests


def check_out_dir(out: Path, force: bool) -> Path:
    """--out may be new, empty, or an earlier --out (its scores.json) replaced with --force;
    anything else is not ours to write into."""
    check_dir_path(out, "--out")  # neither it nor a folder above it a file
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not (out / SCORES).is_file():
        raise UserError(f"--out {out} holds files but no {SCORES} (not an earlier glue_score "
                        "output); give a new or empty directory")
    if not force:
        raise UserError(f"--out {out} holds an earlier score ({SCORES}); pass --force to "
                        "replace it, or give another directory")
    return out


def write_outputs(out: Path, scores: dict, tests: dict) -> None:
    """The submission files, then scores.json naming them (each file written whole under a
    temporary name): an earlier score's files this one does not write are removed last."""
    make_dir(out, "--out")  # said in one line where it cannot be (read-only, /proc)
    earlier = set()
    if (out / SCORES).is_file():
        with contextlib.suppress(ValueError, AttributeError, TypeError):  # damaged: none known
            earlier = set(json.loads((out / SCORES).read_text()).get("submissions", []))
    written = []
    for (task, split), (index, logits) in tests.items():
        if not np.isfinite(logits).all():
            warnings.warn(f"{task} {split}: the predictions are not finite (NaN or inf): no "
                          "submission file written", stacklevel=2)
            continue
        path = glue_metrics.write_submission(task, split, index, logits, out)
        warn_partial_submission(path, task, split, len(index), "--data-dir")
        written.append(path.name)
    write_atomic(out / SCORES, json_text(dict(scores, submissions=written)))
    for name in earlier - set(written):
        if "/" not in name and name.endswith(".tsv"):
            (out / name).unlink(missing_ok=True)
    print(f"wrote {out / SCORES}" + (f" and {', '.join(written)}" if written else
                                     " (no test split to predict)"))


if __name__ == "__main__":
    cli(main)
