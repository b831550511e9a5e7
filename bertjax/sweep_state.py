"""What a learning-rate sweep's folder (glue_sweep.py) holds, as its readers need it: the best
rate's run and model that sweep.json names, found in this folder (a sweep moved or copied
elsewhere names its own, not the original's), and whether sweep.json still describes the folder.

It does not while the sweep is under way or after it was interrupted (rates still to run, a
rate's run unfinished), nor after a rate's run changed (trained again at another rate or with
another config). The readers (predict, export, glue_submission) then say so rather than pass its
verdict on; a plain fine-tune is refused in a rate's folder at another rate.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from bertjax.errors import UserError
from bertjax.files import rate_folder, rate_of, rate_runs

SWEEP = "sweep.json"


@dataclass(frozen=True)
class SweepState:
    best_run: Path | None  # the best rate's run in this folder; None: sweep.json is damaged
    best_model: Path | None  # its best seed's best epoch
    problem: str | None  # why sweep.json does not describe the folder now; None when it does


def read_sweep(path: Path) -> SweepState | None:
    """The sweep in `path` as its sweep.json names it; None without a sweep.json."""
    file = path / SWEEP
    if not file.is_file():
        return None
    try:
        report = json.loads(file.read_bytes())
        named = Path(report["best"]["best_model"]).parts[-3:]  # lr<rate>, seed<N>, best
        rates = {float(r["lr"]): r["main_score"] for r in report["rates"]}
        to_run = [float(lr) for lr in report.get("to_run", [])]  # (none in older files)
        if len(named) != 3:
            raise ValueError("best.best_model is no lr<rate>/seed<N>/best path")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        return SweepState(None, None, f"{file} is damaged ({type(e).__name__}: {e}); rerun the "
                                      "sweep's command to write it again")
    best_run, best_model = path / named[0], path.joinpath(*named)
    return SweepState(best_run, best_model, _problem(path, rates, to_run, best_model))


def _problem(path: Path, rates: dict, to_run: list[float], best_model: Path) -> str | None:
    if to_run:
        return (f"the sweep has yet to run lr {', '.join(map(repr, to_run))}; rerun its command "
                "to finish it")
    if not (best_model / "manifest.json").is_file():
        return (f"{best_model}, the best model sweep.json names, is missing; rerun the sweep's "
                "command")
    for run in rate_runs(path):
        if not finished(run):
            return (f"{run} has not finished (a sweep or fine-tune there was interrupted); rerun "
                    "the sweep's command to finish it (or delete that folder if its rate is no "
                    "longer swept)")
    for lr, score in rates.items():
        run = path / rate_folder(lr)
        if not finished(run) or _saved_lr(run) != lr or _main_score(run) != score:
            return (f"{run} changed after sweep.json was written (trained again or removed); "
                    "rerun the sweep's command to bring sweep.json up to date")
    return None


def finished(run: Path) -> bool:
    """A fine-tune's run has finished: results.json is as new as its config.yaml (which every
    run writes first, so an interrupted one leaves a config.yaml newer than the results)."""
    try:
        return (run / "results.json").stat().st_mtime_ns >= \
            (run / "config.yaml").stat().st_mtime_ns
    except OSError:
        return False


def _main_score(run: Path) -> dict | None:
    try:
        return json.loads((run / "results.json").read_bytes())["summary"]["main_score"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _saved_lr(run: Path) -> float | None:
    try:
        return float(yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None


def check_rate_folder(run_dir: str | Path, lr: float) -> None:
    """Refuse a fine-tune at `lr` into a sweep's run of another rate (RUN/lr2e-05 at optim.lr
    1e-3): it replaced that rate's seeds and left sweep.json naming them."""
    run_dir = Path(run_dir)
    parent, rate = run_dir.parent, rate_of(run_dir)
    if rate is not None and rate != lr and \
            ((parent / SWEEP).is_file() or run_dir in rate_runs(parent)):
        raise UserError(f"{run_dir} is the run of rate {rate!r} in the learning-rate sweep "
                        f"{parent}; fine-tuning it at optim.lr={lr!r} would replace that rate's "
                        f"seeds: add {lr!r} to the sweep's glue.learning_rates and rerun it, or "
                        "set train.run_dir outside the sweep's folder")
