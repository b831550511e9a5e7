"""`python -m bertjax.train CONFIG.yaml [more.yaml] [key=value ...]`: the front door.

Dispatch only: `train.task: pretrain` runs bertjax.pretrain, `train.task: glue` bertjax.finetune.
Nothing imports this module; the steps live in bertjax.step, the loops in pretrain/finetune.
"""

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
    cfg = config.load(*config.split_args(argv))
    if cfg.train.task == "glue":
        finetune(cfg)
    else:
        pretrain(cfg)


if __name__ == "__main__":
    cli(main)
