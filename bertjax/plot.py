"""Training curves: `python -m bertjax.plot RUN_DIR` writes curves.png next to metrics.jsonl.

Pretraining: two panels, loss and MLM accuracy, with training rows as lines and validation rows
as markers, against this run's tokens (the x-axis that compares runs of different batch sizes;
continued pretraining starts it at 0: results.json's tokens_seen adds the earlier phases). GLUE:
each seed's training loss and dev score (the task's main metric) by epoch, one colour a seed,
where overfitting and the spread between seeds show. A learning-rate sweep's folder: each rate's
seeds' dev scores by epoch, one colour a rate, and each seed's best dev score against its rate.
Damaged rows (a line cut by a crash, an edited file) are left out with one warning; a file with
nothing to draw is refused before an existing curves.png is touched.
"""

import io
import json
import math
import warnings
from pathlib import Path

from bertjax.errors import UserError, cli
from bertjax.files import check_file, from_cwd, rate_of, rate_runs, write_atomic

PANELS = (("loss", "MLM loss"), ("accuracy", "MLM accuracy"))
TRAIN_FIELDS = ("step", "tokens", "loss", "accuracy")
VAL_FIELDS = ("step", "val_loss", "val_accuracy")
EPOCH_FIELDS = ("seed", "epoch", "train_loss", "dev_score")  # a GLUE seed's epoch row
# The measured values (not the axes): null there is a NaN or infinity strict JSON could not hold.
MEASURED = {"loss", "accuracy", "val_loss", "val_accuracy", "train_loss", "dev_score"}
# A panel: (x label, y label, lines); a line: (legend label or None, xs, ys, matplotlib format,
# colour).
Panel = tuple[str, str, list[tuple[str | None, list, list, str, str]]]


def _parse(path: Path) -> tuple[list[dict], list[str]]:
    """The JSON-object rows of `path`, and why each other non-blank line was skipped (a crash
    mid-write cuts the last line; a copied or edited file can hold anything)."""
    rows, skipped = [], []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            skipped.append(f"line {n} is not UTF-8")
            continue
        except json.JSONDecodeError:
            skipped.append(f"line {n} is not JSON")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped.append(f"line {n} is not a JSON object")
    return rows, skipped


def _warn_skipped(path: Path, skipped: list[str]) -> None:
    if skipped:
        more = ", ..." if len(skipped) > 1 else ""
        warnings.warn(f"{path}: skipped {len(skipped)} damaged row(s) ({skipped[0]}{more})",
                      stacklevel=3)


def metrics_path(run_dir: Path) -> Path:
    path = run_dir / "metrics.jsonl"
    # Both were "RUN/metrics.jsonl does not exist", which sends the user looking for a file
    if run_dir.is_file():  # `plot runs/demo/metrics.jsonl`, say
        raise UserError(f"{run_dir} is a file, not a run directory; pass the run directory "
                        "(the one holding metrics.jsonl)")
    if path.exists() and not path.is_file():
        check_file(path, "metrics file", "pass a run directory written by bertjax.train")
    if not path.is_file():
        where = from_cwd(run_dir) if not run_dir.exists() else ""
        rates = rate_runs(run_dir)
        which = f" (this is a learning-rate sweep: pass one of its runs, e.g. {rates[0]})" \
            if rates else ""
        raise UserError(f"{path} does not exist{where}; pass a run directory written by "
                        f"bertjax.train{which}")
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl; damaged lines are skipped with one warning."""
    path = metrics_path(run_dir)
    rows, skipped = _parse(path)
    _warn_skipped(path, skipped)
    return rows


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _complete(rows: list[dict], fields: tuple, marker: tuple,
              skipped: list[str]) -> list[dict]:
    """The rows carrying a `marker` field whose `fields` are all numbers; why each other row
    with a marker field is left out goes to `skipped` (rows without one, e.g. a rollback note,
    are no curve's)."""
    complete = []
    for row in (r for r in rows if any(k in r for k in marker)):
        # null is how metrics.jsonl writes a NaN or infinite value (a diverged step or epoch):
        # drawn as a gap, not skipped as damage (a diverged run then had no curves at all)
        row = {k: math.nan if v is None and k in MEASURED else v for k, v in row.items()}
        lacking = [k for k in fields if not _is_number(row.get(k))]
        if lacking:
            skipped.append(f"a row at step {json.dumps(row.get('step'))[:20]} lacks a number "
                           f"for {lacking[0]}")
        else:
            complete.append(row)
    return complete


def _nothing_to_draw(path: Path, skipped: list[str]) -> UserError:
    damage = f"; skipped {len(skipped)} damaged row(s): {skipped[0]}" if skipped else ""
    return UserError(f"{path} has no rows to plot (pretraining: numbers for "
                     f"{', '.join(TRAIN_FIELDS)}; GLUE: for {', '.join(EPOCH_FIELDS)}){damage}; "
                     "pass a run directory written by bertjax.train; nothing was written")


def _pretraining_panels(path: Path, rows: list[dict], skipped: list[str]) -> list[Panel]:
    """Training lines and validation markers against this run's tokens, each row complete for both
    panels."""
    train = _complete(rows, TRAIN_FIELDS, ("loss", "accuracy"), skipped)
    val = _complete(rows, VAL_FIELDS, ("val_loss", "val_accuracy"), skipped)
    tokens = {r["step"]: r["tokens"] for r in train}
    # A validation step without a training row at that step has no x: left out. bertjax
    # writes that row before each validation; runs of earlier versions lack it where
    # eval_every is not a multiple of log_every.
    points = [(tokens[r["step"]], r) for r in val if r["step"] in tokens]
    if not train and not points:
        raise _nothing_to_draw(path, skipped)
    return [("tokens (this run)", label, [
        ("train", [r["tokens"] for r in train], [r[key] for r in train], "-", "C0"),
        ("validation", [x for x, _ in points], [r[f"val_{key}"] for _, r in points], "o-", "C1")])
        for key, label in PANELS]


def _epochs_by_seed(rows: list[dict], skipped: list[str]) -> list[tuple[int, list[dict]]]:
    """Each seed's epoch rows in order (an epoch a resume logged twice: its last row)."""
    seeds: dict = {}
    for r in _complete(rows, EPOCH_FIELDS, ("dev_score",), skipped):
        seeds.setdefault(r["seed"], {})[r["epoch"]] = r
    return [(seed, [epochs[e] for e in sorted(epochs)]) for seed, epochs in sorted(seeds.items())]


def _glue_panels(path: Path, rows: list[dict], skipped: list[str]) -> list[Panel]:
    """Each seed's training loss and dev score by epoch."""
    by_seed = _epochs_by_seed(rows, skipped)
    if not by_seed:
        raise _nothing_to_draw(path, skipped)
    return [("epoch", label, [(f"seed {seed}", [r["epoch"] for r in epochs],
                               [r[key] for r in epochs], "o-", f"C{i % 10}")
                              for i, (seed, epochs) in enumerate(by_seed)])
            for key, label in (("train_loss", "training loss (epoch mean)"),
                               ("dev_score", _score_name(by_seed[0][1][0])))]


def _sweep_panels(run_dir: Path, rates: list[Path]) -> list[Panel]:
    """A learning-rate sweep (a GLUE run per rate in lr<rate>/, glue_sweep.py): every seed's dev
    score by epoch, one colour a rate; and each seed's best dev score against its rate, where
    the sweep's choice and the spread between seeds show. A rate with no finished epoch yet (an
    interrupted sweep) is left out."""
    by_epoch, best, name, left_out = [], [], None, []
    for i, run in enumerate(sorted(rates, key=rate_of)):
        rows, skipped = _parse(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() \
            else ([], [])
        by_seed = _epochs_by_seed(rows, skipped)
        _warn_skipped(run / "metrics.jsonl", skipped)
        if not by_seed:
            left_out.append(run.name)
        for j, (_, epochs) in enumerate(by_seed):
            label, color, scores = f"lr {run.name[2:]}" if j == 0 else None, f"C{i % 10}", \
                [r["dev_score"] for r in epochs]
            by_epoch.append((label, [r["epoch"] for r in epochs], scores, "o-", color))
            kept = [x for x in scores if not math.isnan(x)]  # a diverged epoch: no best
            if kept:
                best.append((label, [rate_of(run)], [max(kept)], "o", color))
            name = name or _score_name(epochs[0])
    if not by_epoch:
        raise UserError(f"{run_dir} is a learning-rate sweep with no finished epoch yet; plot it "
                        "once one is done; nothing was written")
    if left_out:  # unfinished, or its metrics.jsonl emptied: said, not silently missing
        warnings.warn(f"{run_dir}: {', '.join(left_out)} left out of the plot (no finished "
                      "epoch in its metrics.jsonl)", stacklevel=3)
    return [("epoch", name, by_epoch), ("learning rate", f"best {name} of each seed", best)]


def _score_name(row: dict) -> str:
    """What dev_score is: the mean of the task's metrics on its first dev split, which the row
    holds as `split/metric` (GLUE's main score; CoLA: dev mcc, MRPC: mean of accuracy and f1)."""
    keys = [k for k in row if "/" in k]
    if not keys:
        return "dev score (the task's main metric)"
    split = keys[0].split("/")[0]
    names = [k.split("/", 1)[1] for k in keys if k.startswith(f"{split}/")]
    return f"{split} {names[0]}" if len(names) == 1 else f"{split}: mean of {', '.join(names)}"


def plot_run(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rates = [] if (run_dir / "metrics.jsonl").exists() else rate_runs(run_dir)
    if rates:
        panels = _sweep_panels(run_dir, rates)
    else:
        path = metrics_path(run_dir)
        rows, skipped = _parse(path)
        glue_run = any("dev_score" in r for r in rows)
        panels = (_glue_panels if glue_run else _pretraining_panels)(path, rows, skipped)
        _warn_skipped(path, skipped)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (xlabel, ylabel, lines) in zip(axes, panels, strict=True):
        for label, xs, ys, fmt, color in lines:
            if xs:
                ax.plot(xs, ys, fmt, label=label, color=color)
        ticks = sorted({x for line in lines for x in line[1]})
        if xlabel == "epoch" and len(ticks) <= 12:  # each epoch (one gave ticks at 0.96, 1.04)
            ax.set_xticks(ticks)
        elif xlabel == "epoch":  # whole epochs only
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if xlabel == "learning rate":  # a sweep's rates span decades: each one named
            ax.set_xscale("log")
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.margins(x=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    out = run_dir / "curves.png"
    try:
        write_atomic(out, png.getvalue())
    except OSError as e:  # a read-only copy or mount of a run, a full disk: one line, not a trace
        raise UserError(f"cannot write {out} ({e.strerror}); make {run_dir} writable (or free "
                        "space on its disk), or plot a copy of the run elsewhere") from None
    return out


def plot_finished_run(run_dir: Path) -> None:
    """curves.png at the end of a run (both loops). The run has finished when this runs, so what
    stops the drawing (no matplotlib on a GPU image, a metrics.jsonl deleted by hand) is a
    warning, not a failed run; `python -m bertjax.plot RUN_DIR` draws it later."""
    try:
        plot_run(run_dir)
    except (UserError, ImportError) as e:
        warnings.warn(f"{run_dir / 'curves.png'} not drawn: {e}", stacklevel=2)


USAGE = "usage: python -m bertjax.plot RUN_DIR"


def main(argv: list[str]) -> None:
    # --help answers as in the other commands, instead of being read as a run directory
    if any(word in ("-h", "--help") for word in argv):
        print(f"{USAGE}\n{__doc__.splitlines()[0]}")
        return
    if len(argv) != 1:
        raise UserError(USAGE)
    print(plot_run(argv[0]))


if __name__ == "__main__":
    cli(main)
