"""What do an encoder's frozen features know about a GLUE task? A logistic regression on them.

    .venv/bin/python bench/linear_probe.py CHECKPOINT [--task sst2] [--glue-dir DIR] \
        [--max-train 6000] [--train-file NAME] [--dev-file NAME]

(--train-file / --dev-file name a task's files when they are not GLUE's: the shared MNLI copy
has MNLI/train_pairs10k.tsv and MNLI/dev_matched_subset.tsv.)

Fine-tuning mixes two things: what the encoder already knows and how fast the recipe can move it.
This probe keeps the encoder fixed: it embeds the training and dev sentences with the checkpoint's
encoder and with a random encoder of the same shape and tokenizer, pools the final hidden states
([CLS], or the mean over real tokens), and fits an L2-regularised logistic regression on each
(strength chosen on the last 10 % of the training rows, then refit on all of them). If the
pretrained features do not beat the random ones here, no fine-tuning recipe is likely to make
pretraining pay off on the task; if they do and fine-tuning does not, the recipe is the limit.
Classification tasks only.
"""

import argparse
from functools import partial
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import glue, glue_batches, glue_tasks
from bertjax.config import GlueConfig
from bertjax.errors import UserError, cli
from bertjax.files import path_argument
from bertjax.model import Bert, masked_mean
from bertjax.pretrained import load_pretrained
from bertjax.tokenizer import load

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1)  # L2 penalty on the weights (features are standardised)
MIN_TRAIN = 10  # rows: 90 % to fit, 10 % (at least one) to choose the strength


@eqx.filter_jit
def pool(model: Bert, ids, types, mask):
    """[CLS] state and mean over real tokens of the final hidden states."""
    hidden = model(ids, types, mask).astype(jnp.float32)
    return hidden[:, 0], masked_mean(hidden, mask)


def pooled_features(model: Bert, enc: glue_batches.Encoded, batch_size: int = 64) -> dict:
    """{"cls": [n, embed], "mean": [n, embed]} in example order."""
    indices, cls, mean = [], [], []
    for batch in glue_batches.iter_batches(enc, batch_size):
        c, m = pool(model, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        indices.append(batch["example_index"])
        cls.append(np.asarray(c))
        mean.append(np.asarray(m))
    return {"cls": glue_batches.in_example_order(len(enc), indices, cls),
            "mean": glue_batches.in_example_order(len(enc), indices, mean)}


@partial(jax.jit, static_argnames=("classes", "steps"))
def fit_logistic(x, y, strength, classes: int, steps: int = 500):
    """Full-batch Adam on softmax cross-entropy + strength * |W|^2 (convex: converges)."""

    def loss(params):
        w, b = params
        ce = optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y).mean()
        return ce + strength * jnp.sum(w * w)

    opt = optax.adam(0.05)

    def step(_, carry):
        params, state = carry
        updates, state = opt.update(jax.grad(loss)(params), state)
        return optax.apply_updates(params, updates), state

    params = (jnp.zeros((x.shape[1], classes)), jnp.zeros((classes,)))
    return jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))[0]


def probe(train_x, train_y, dev_x, dev_y, classes: int) -> tuple[float, float]:
    """(dev accuracy, chosen strength): strength picked on the last 10 % of train, then refit."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, dev_x = (train_x - mu) / sd, (dev_x - mu) / sd
    cut = int(0.9 * len(train_x))

    def accuracy(params, x, y):
        return float(np.mean(np.asarray(x @ params[0] + params[1]).argmax(-1) == y))

    best = max(STRENGTHS, key=lambda s: accuracy(
        fit_logistic(train_x[:cut], train_y[:cut], s, classes), train_x[cut:], train_y[cut:]))
    return accuracy(fit_logistic(train_x, train_y, best, classes), dev_x, dev_y), best


def read_splits(task: glue_tasks.Task, glue_dir: str, max_train: int,
                train_file: str | None = None, dev_file: str | None = None):
    """(train, dev) of `task`, checked in the probe's own flags (glue.load_split's messages name
    config keys, which this script does not read)."""
    if max_train < MIN_TRAIN:
        raise UserError(f"--max-train {max_train}: the probe needs at least {MIN_TRAIN} training "
                        "rows (the last 10 % of them choose the L2 strength)")
    dev_split = task.dev_splits[0]
    folder = Path(glue_dir) / task.dir
    for split, name, flag in (("train", train_file, "--train-file"),
                              (dev_split, dev_file, "--dev-file")):
        path = folder / (name or task.split(split).file)
        if path.is_file():
            continue
        if not folder.is_dir():
            raise UserError(f"--glue-dir {glue_dir} holds no {task.dir}/ folder; pass a "
                            f"directory of GLUE TSVs (the folder holding {task.dir}/)")
        has = ", ".join(sorted(p.name for p in folder.glob("*.tsv"))) or "no .tsv files"
        raise UserError(f"{folder} holds no {path.name} (it holds {has}); name the {split} "
                        f"file it has: {flag} NAME")
    cfg = GlueConfig(task=task.name, data_dir=glue_dir, max_train_examples=max_train,
                     train_file=train_file, dev_files=[dev_file] if dev_file else [])
    train = glue.load_split(cfg, "train")
    if len(train) < MIN_TRAIN:
        raise UserError(f"{train.source} has {len(train)} rows; the probe needs at least "
                        f"{MIN_TRAIN} (the last 10 % of them choose the L2 strength)")
    return train, glue.load_split(cfg, dev_split)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--glue-dir", default=str(GLUE))
    parser.add_argument("--max-train", type=int, default=6000)
    parser.add_argument("--train-file", type=path_argument,
                        help="the training TSV inside GLUE_DIR/<Task>/ (default: GLUE's name)")
    parser.add_argument("--dev-file", type=path_argument,
                        help="the dev TSV (default: GLUE's first dev split)")
    parser.add_argument("--buckets", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--seed", type=int, default=0, help="the random encoder's seed")
    args = parser.parse_args()
    probed = [t.name for t in glue_tasks.TASKS.values() if t.labels and t.name != "ax"]
    if args.task not in probed:
        kind = "a regression task" if args.task == "stsb" else \
            "a test-only task" if args.task == "ax" else "unknown"
        raise UserError(f"--task {args.task} is {kind}; the probe takes the classification tasks "
                        f"{', '.join(probed)}")
    task = glue_tasks.get_task(args.task)
    glue_batches.check_buckets(args.buckets, lambda b: "--buckets " + " ".join(map(str, b)))
    train, dev = read_splits(task, args.glue_dir, args.max_train, args.train_file,
                             args.dev_file)

    pretrained = load_pretrained(args.checkpoint)
    tok = load(pretrained.tokenizer_path)
    train_enc, dev_enc = (glue_batches.encode(tok, ex, args.buckets) for ex in (train, dev))
    random_model = Bert(pretrained.model_cfg, key=jax.random.key(args.seed), mlm=False)

    print(f"{args.checkpoint}: {args.task}, {len(train)} training rows, {len(dev)} dev rows; "
          f"dev majority class {np.bincount(dev.labels).max() / len(dev):.3f}")
    print(f"{'encoder':<12}{'pooling':<9}{'dev acc':>9}{'L2':>9}")
    for name, model in (("pretrained", pretrained.model), ("random", random_model)):
        feats = (pooled_features(model, train_enc), pooled_features(model, dev_enc))
        for pooling in ("cls", "mean"):
            acc, strength = probe(feats[0][pooling], train.labels, feats[1][pooling],
                                  dev.labels, task.num_labels)
            print(f"{name:<12}{pooling:<9}{acc:>9.3f}{strength:>9.0e}")


if __name__ == "__main__":
    cli(lambda argv: main())  # a bad path or checkpoint: one line, exit 2
