"""Training curves: `python -m bertjax.plot RUN_DIR` writes curves.png next to metrics.jsonl.

Two panels, loss and MLM accuracy, with training rows as lines and validation rows as markers,
against tokens seen (the x-axis that compares runs of different batch sizes). Damaged rows (a
line cut by a crash, an edited file) are left out with one warning; a file with nothing to draw
is refused before an existing curves.png is touched.
"""

import io
import json
import warnings
from pathlib import Path

from bertjax.errors import UserError, cli
from bertjax.files import write_atomic

PANELS = (("loss", "MLM loss"), ("accuracy", "MLM accuracy"))
TRAIN_FIELDS = ("step", "tokens", "loss", "accuracy")
VAL_FIELDS = ("step", "val_loss", "val_accuracy")


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
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a run directory written by bertjax.train")
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
        lacking = [k for k in fields if not _is_number(row.get(k))]
        if lacking:
            skipped.append(f"a row at step {json.dumps(row.get('step'))[:20]} lacks a number "
                           f"for {lacking[0]}")
        else:
            complete.append(row)
    return complete


def _curves(path: Path) -> tuple[list[dict], list[tuple]]:
    """(training rows, (tokens, validation row) pairs) of `path`, each complete for both
    panels; one warning counts the rows left out, and a file with nothing to draw is refused
    (before an existing curves.png is touched)."""
    rows, skipped = _parse(path)
    train = _complete(rows, TRAIN_FIELDS, ("loss", "accuracy"), skipped)
    val = _complete(rows, VAL_FIELDS, ("val_loss", "val_accuracy"), skipped)
    tokens = {r["step"]: r["tokens"] for r in train}
    # A validation step without a training row at that step has no x (eval_every not a
    # multiple of log_every): left out, as it always was.
    points = [(tokens[r["step"]], r) for r in val if r["step"] in tokens]
    if not train and not points:
        damage = f"; skipped {len(skipped)} damaged row(s): {skipped[0]}" if skipped else ""
        raise UserError(f"{path} has no pretraining rows to plot (numbers for "
                        f"{', '.join(TRAIN_FIELDS)}){damage}; pass a pretraining run directory "
                        "(a GLUE run reports results.json instead); nothing was written")
    _warn_skipped(path, skipped)
    return train, points


def plot_run(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    train, val = _curves(metrics_path(run_dir))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        ax.plot([r["tokens"] for r in train], [r[key] for r in train], label="train")
        if val:
            ax.plot([x for x, _ in val], [r[f"val_{key}"] for _, r in val], "o-",
                    label="validation")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    out = run_dir / "curves.png"
    write_atomic(out, png.getvalue())
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise UserError("usage: python -m bertjax.plot RUN_DIR")
    print(plot_run(argv[0]))


if __name__ == "__main__":
    cli(main)
