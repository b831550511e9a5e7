"""`python -m bertjax.train CONFIG.yaml [more.yaml] [key=value ...]`: the front door.

Dispatch only: `train.task: pretrain` runs bertjax.pretrain, `train.task: glue` bertjax.finetune.
Nothing imports this module; the steps live in bertjax.step, the loops in pretrain/finetune.
"""

from bertjax import config
from bertjax.errors import UserError, cli
from bertjax.finetune import finetune
from bertjax.pretrain import pretrain


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        raise UserError("usage: python -m bertjax.train CONFIG.yaml [more.yaml] [key=value ...]")
    cfg = config.load(*config.split_args(argv))
    if cfg.train.task == "glue":
        finetune(cfg)
    else:
        pretrain(cfg)


if __name__ == "__main__":
    cli(main)
