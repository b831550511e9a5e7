"""What the commands that take a config (train, prepare) show instead of running: `--help` lists
every key with its default, type, domain and doc, generated from config_schema.py (the one
reference, so the help cannot drift from it), and `--print-config` prints the config that the
files and overrides resolve to, as YAML, so a long run's command line can be checked first.
"""

import dataclasses
import difflib
import re
from pathlib import Path

from bertjax.config_schema import Config
from bertjax.domains import show, type_name
from bertjax.errors import UserError

PRINT_FLAG = "--print-config"
OPTIONS = ("--help", PRINT_FLAG)
HELP = ("YAML files merge in order over the defaults, then each section.key=value override (e.g. "
        f"train.steps=100). {PRINT_FLAG} prints the config they resolve to, as YAML, and exits: "
        "nothing else is read or written (null keys are derived when a run starts, a "
        "fine-tune's model.* from init.checkpoint). Every key, its default (type; domain) and "
        "its doc, as bertjax/config_schema.py declares them:")


def usage_line(command: str) -> str:
    """train's and prepare's usage: files, overrides or both (overrides alone are a config over
    the schema's defaults), so neither part is required alone."""
    return f"usage: python -m bertjax.{command} [CONFIG.yaml ...] [key=value ...] [{PRINT_FLAG}]"


def asks_for_help(argv: list[str]) -> bool:
    """-h or --help anywhere on a command line that takes CONFIG [key=value ...]."""
    return any(word in ("-h", "--help") for word in argv)


def nothing_given(usage: str) -> UserError:
    return UserError(f"nothing to run: give a config file (configs/demo.yaml is the offline "
                     f"demo), key=value overrides, or both; {usage}")


def help_text(usage: str) -> str:
    return f"{usage}\n{HELP}\n\n{every_key()}"


def every_key() -> str:
    """Each section's keys: `section.key = default  (type; must be domain)` over its doc."""
    lines = []
    for section in dataclasses.fields(Config):
        lines.append(f"{section.name}:")
        # the declared defaults: an instance holds derived ones (model.num_layers from size)
        for f in dataclasses.fields(section.default_factory):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            domain = f.metadata.get("domain")
            kind = type_name(f.type) + (f"; {_without_examples(domain.says)}" if domain else "")
            lines.append(f"  {section.name}.{f.name} = {as_written(default)}  ({kind})")
            lines.append(f"      {f.metadata['doc']}")
    return "\n".join(lines)


def _without_examples(says: str) -> str:
    """A domain without its parenthesised examples (a path's "(configs expand neither: write
    ${oc.env:HOME}/...)"; the error that refuses a value gives them), keeping "in (0, 1]" and
    "0 (no spike test) or > 1"."""
    return re.sub(r" \([^()]*:[^()]*\)", "", says)


def as_written(value) -> str:
    """A default as YAML and overrides write it: null, true, false."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return show(value)


def split_print_flag(argv: list[str]) -> tuple[list[str], bool]:
    """(the command line without --print-config, whether it was there). Another word that
    starts with a dash and is no file is refused as an unknown option (`--print-confg` was
    "config file --print-confg does not exist"); `--train.steps=5` is left to the overrides'
    own check, which says to drop the dashes."""
    for word in argv:
        if word.partition("=")[0] in OPTIONS and "=" in word:  # was "write print-config=true"
            raise UserError(f"{word}: {word.partition('=')[0]} takes no value; write "
                            f"{word.partition('=')[0]}")
        if word.startswith("-") and word != PRINT_FLAG and "=" not in word and \
                not Path(word).exists():
            near = difflib.get_close_matches(word, OPTIONS, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise UserError(f"unknown option {word}; {hint}the options are "
                            f"{', '.join(OPTIONS)}")
    return [a for a in argv if a != PRINT_FLAG], PRINT_FLAG in argv
