"""`python -m bertjax.train CONFIG.yaml [more.yaml] [key=value ...]`: the front door.

Dispatch only: `train.task: pretrain` runs bertjax.pretrain, `train.task: glue` bertjax.finetune.
Nothing imports this module; the steps live in bertjax.step, the loops in pretrain/finetune.
"""

import re
from pathlib import Path

from bertjax import config
from bertjax.errors import UserError, cli
from bertjax.finetune import finetune
from bertjax.pretrain import pretrain

USAGE = "usage: python -m bertjax.train CONFIG.yaml [more.yaml] [key=value ...]"


def main(argv: list[str]) -> None:
    if config.asks_for_help(argv):
        print(f"{USAGE}\n{config.OVERRIDES_HELP}")
        return
    if not argv:
        raise UserError(USAGE)
    files, overrides = config.split_args(argv)
    cfg = config.load(files, overrides)
    check_config_file_kept(files, cfg.train.run_dir)
    if cfg.train.task == "glue":
        finetune(cfg)
    else:
        pretrain(cfg)


def check_config_file_kept(files: list[str], run_dir: str) -> None:
    """Refuse a CONFIG file that is train.run_dir/config.yaml of a directory holding no run yet
    (`train config.yaml train.run_dir=.`): the run saves its resolved config there, and the
    user's file (comments, includes) was replaced, exit 0. A run's own saved config passed back
    (it has checkpoints/, seedN/ or metrics.jsonl beside it) is rewritten with nothing lost."""
    saved = Path(run_dir) / "config.yaml"
    if not any(Path(f).is_file() and Path(f).resolve() == saved.resolve() for f in files):
        return
    run = Path(run_dir)
    if (run / "checkpoints").is_dir() or (run / "metrics.jsonl").is_file() or \
            any(p.is_dir() and re.fullmatch(r"seed\d+", p.name) for p in run.iterdir()):
        return
    raise UserError(f"train.run_dir={run_dir} would overwrite {saved}, the config file this "
                    "command reads (a run saves its resolved config there): set train.run_dir "
                    "to another directory, or move the config file out of it")


if __name__ == "__main__":
    cli(main)
