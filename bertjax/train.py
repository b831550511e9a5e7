"""`python -m bertjax.train [CONFIG.yaml ...] [key=value ...]`: the front door.

Dispatch: `train.task: pretrain` runs bertjax.pretrain, `train.task: glue` bertjax.finetune (or,
with glue.learning_rates, bertjax.glue_sweep), after checks of the command line itself (a config
file the run would overwrite, keys the job does not read). A config that does not load in one
process of a multi-process run is said to the others too. Nothing imports this module; the steps
live in bertjax.step, the loops in pretrain/finetune.
"""

import warnings
from pathlib import Path

from bertjax import config
from bertjax.config_changes import PRETRAINING_ONLY
from bertjax.config_help import (
    asks_for_help,
    help_text,
    nothing_given,
    split_print_flag,
    usage_line,
)
from bertjax.errors import UserError, cli
from bertjax.finetune import earlier_seed_dirs, finetune
from bertjax.glue_sweep import sweep
from bertjax.pretrain import pretrain
from bertjax.processes import relay_a_config_error

USAGE = usage_line("train")


def main(argv: list[str]) -> None:
    if asks_for_help(argv):
        print(help_text(USAGE))
        return
    argv, print_only = split_print_flag(argv)
    if not argv:
        raise nothing_given(USAGE)
    files, overrides = config.split_args(argv)
    try:
        cfg = config.load(files, overrides)
    except UserError as e:
        if not print_only:
            relay_a_config_error(str(e), files, overrides)  # to the other processes of a run
        raise
    if print_only:
        print(config.to_yaml(cfg), end="")
        return
    check_config_file_kept(files, cfg.train.run_dir)
    if cfg.train.task == "glue":
        warn_pretraining_overrides(overrides)
        if cfg.glue.learning_rates:
            warn_replaced_rate(overrides)
            sweep(cfg)
        else:
            finetune(cfg)
    else:
        pretrain(cfg)


def warn_pretraining_overrides(overrides: list[str]) -> None:
    """A fine-tune's command-line override of a key only pretraining reads (`data.seq_len=256`
    for longer GLUE inputs) was silently ignored. Only overrides: a YAML file may include a
    pretraining config on purpose (configs/band_sst2.yaml)."""
    for override in overrides:
        key, _, value = (part.strip() for part in override.partition("="))
        if key in PRETRAINING_ONLY and f"{key}={value}" != "optim.schedule=constant":
            # (that one finetune.with_glue_schedule says, from a YAML file too: once is enough)
            warnings.warn(f"{key} applies to pretraining only and is ignored by GLUE "
                          f"fine-tuning; it reads {PRETRAINING_ONLY[key]}", stacklevel=2)


def warn_replaced_rate(overrides: list[str]) -> None:
    """`optim.lr=` given with glue.learning_rates trains at none of its value: each rate of the
    sweep replaces it. Said, as a pretraining key given to a fine-tune is."""
    for override in overrides:
        if override.partition("=")[0].strip() == "optim.lr":
            warnings.warn(f"{override} is replaced by each rate of glue.learning_rates; drop it, "
                          "or set glue.learning_rates=[] to train at it", stacklevel=2)


def check_config_file_kept(files: list[str], run_dir: str) -> None:
    """Refuse a CONFIG file that is train.run_dir/config.yaml of a directory holding no run yet
    (`train config.yaml train.run_dir=.`): the run saves its resolved config there, and the
    user's file (comments, includes) was replaced, exit 0. A run's own saved config passed back
    (it has checkpoints/, seedN/ or metrics.jsonl beside it) is rewritten with nothing lost."""
    run = Path(run_dir)
    saved = run / "config.yaml"
    if not any(Path(f).is_file() and Path(f).resolve() == saved.resolve() for f in files):
        return
    if (run / "checkpoints").is_dir() or (run / "metrics.jsonl").is_file() or \
            earlier_seed_dirs(run):
        return
    raise UserError(f"train.run_dir={run_dir} would overwrite {saved}, the config file this "
                    "command reads (a run saves its resolved config there): set train.run_dir "
                    "to another directory, or move the config file out of it")


if __name__ == "__main__":
    cli(main)
