"""Training curves: `python -m bertjax.plot RUN_DIR` writes curves.png next to metrics.jsonl.

Two panels, loss and MLM accuracy, with training rows as lines and validation rows as markers,
against tokens seen (the x-axis that compares runs of different batch sizes).
"""

import io
import json
from pathlib import Path

from bertjax.errors import UserError, cli
from bertjax.files import write_atomic


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a run directory written by bertjax.train")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}:{n} is not a JSON line; the file is damaged") from None
    return rows


def plot_run(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    tokens = {r["step"]: r["tokens"] for r in rows if "tokens" in r}
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r and r["step"] in tokens]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "loss", "MLM loss"), (axes[1], "accuracy", "MLM accuracy")):
        ax.plot([r["tokens"] for r in train], [r[key] for r in train], label="train")
        if val:
            ax.plot([tokens[r["step"]] for r in val], [r[f"val_{key}"] for r in val], "o-",
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
