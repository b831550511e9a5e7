"""Config domains: the values a field may take, declared next to its default in config_schema.py.

`opt(default, doc, domain=POSITIVE)` makes a field; the vocabulary is POSITIVE, NON_NEGATIVE,
`at_least(n)`, `interval(lo, hi, "[)")` (UNIT_OPEN, FRACTION, UNIT_CLOSED), `one_of(...)`,
`list_of(item, non_empty=, increasing=, unique=)`, `containing(text)`, PATH, PATHS and
XLA_FLAGS.
`check_domains(section)`, run by every section's __post_init__, is the one place they are checked
(types included, and that every number fits what numpy and JAX hold: `representable`).
"""

import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bertjax.errors import UserError


@dataclass(frozen=True)
class Domain:
    says: str  # completes "must be ...", e.g. "> 0", "in [0, 1)", "one of pre, post"
    test: Callable[[Any], bool]
    meant: Callable[[Any], Any] = lambda x: None  # the value a refused one likely meant, or None


def at_least(low: int | float) -> Domain:
    return Domain(f">= {low}", lambda x: x >= low)


def interval(low: int | float, high: int | float, brackets: str = "[)") -> Domain:
    """Numbers between low and high; brackets '[)' include low and exclude high, and so on."""
    return Domain(f"in {brackets[0]}{low}, {high}{brackets[1]}",
                  lambda x: (low <= x if brackets[0] == "[" else low < x) and
                  (x <= high if brackets[1] == "]" else x < high))


def one_of(*choices: str) -> Domain:
    """One of `choices`; a value that is one but for case and punctuation (glue.task=SST-2,
    MNLI, model.size=Base: GLUE's and papers' spellings) is named with the choice it means."""
    bare = lambda x: re.sub(r"[^a-z0-9]", "", str(x).lower())  # noqa: E731
    return Domain(f"one of {', '.join(choices)}", lambda x: x in choices,
                  lambda x: next((c for c in choices if bare(c) == bare(x)), None))


def list_of(item: Domain | None = None, *, non_empty: bool = False, increasing: bool = False,
            unique: bool = False) -> Domain:
    """A list (non-empty, strictly increasing, without repeats, when asked) whose every item is
    in `item`."""
    asked = [name for name, on in (("non-empty", non_empty), ("strictly increasing", increasing),
                                   ("repeat-free", unique)) if on]
    says = " ".join(filter(None, ["a", ", ".join(asked), "list"])) + \
        (f" of values {item.says}" if item else "")
    return Domain(says, lambda xs: (len(xs) > 0 or not non_empty) and
                  (not increasing or all(a < b for a, b in zip(xs[:-1], xs[1:], strict=True))) and
                  (not unique or len(set(xs)) == len(xs)) and
                  (item is None or all(item.test(x) for x in xs)))


def containing(text: str) -> Domain:
    return Domain(f"containing {text}", lambda x: text in x)


POSITIVE = Domain("> 0", lambda x: x > 0)
# A blank path would silently mean the current directory. A shell's `$HOME/runs` or `~/runs`
# (in YAML, or an override in single quotes) would be a directory named `$HOME` or `~` in the
# current one: configs expand neither, OmegaConf's ${oc.env:HOME} does.
# A control character is a typing accident, most often the line break a YAML `|` block keeps
# (`run_dir: |` made a directory whose name ends in a newline).
# A URL (gs://bucket/run, the natural run_dir on a TPU VM) would be a local folder named `gs:`,
# found out only at the first checkpoint (an Orbax traceback): every path is local.
_SHELL_SYNTAX = re.compile(r"^~|\$\{?[A-Za-z_]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PATH_RULES = ("without $VAR or ~ (configs expand neither: write ${oc.env:HOME}/... or the full "
             "path), and local (a bucket: mount it, e.g. with gcsfuse, and give its path)")
PATH = Domain(f"a non-empty path of printable characters {_PATH_RULES}",
              lambda x: x.strip() != "" and not _SHELL_SYNTAX.search(x) and not _CONTROL.search(x)
              and not _URL.match(x))
PATHS = Domain(f"a list of non-empty paths of printable characters {_PATH_RULES}",
               lambda xs: all(map(PATH.test, xs)))
XLA_FLAG = re.compile(r"--(xla_[a-z0-9_]+)=(\S*)")  # one option as XLA_FLAGS writes it
XLA_FLAGS = Domain("XLA options separated by spaces, each written --xla_name=value (as in "
                   "XLA_FLAGS)", lambda x: all(map(XLA_FLAG.fullmatch, x.split())))
FINITE = Domain("finite", lambda x: abs(x) <= sys.float_info.max)  # not inf, -inf or nan
NON_NEGATIVE = at_least(0)
UNIT_OPEN = interval(0, 1, "()")  # a probability that must do something: (0, 1)
FRACTION = interval(0, 1, "[)")  # dropout, warm-up, held-out share: [0, 1)
UNIT_CLOSED = interval(0, 1, "[]")


def opt(default: Any, doc: str, *, domain: Domain | None = None, int_bits: int = 32) -> Any:
    """A config field with a default, a one-line doc and the domain its values must lie in
    (null, where the type allows it, always passes: it means "derive it"). Lists get a fresh
    copy per instance. `int_bits`: the signed width an int field must fit (`representable`)."""
    metadata = {"doc": doc, "domain": domain, "int_bits": int_bits}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("NoneType", "None")


def _has_type(value: Any, tp: Any) -> bool:
    """isinstance for the annotations configs use: int, float, str, bool, X | None, list[X]."""
    if isinstance(tp, types.UnionType):
        return any(_has_type(value, t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        return isinstance(value, list) and all(_has_type(x, item) for x in value)
    if tp is type(None):
        return value is None
    if tp is float:  # an int is a fine float (JSON writes 0.0 as 0); a bool is neither
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def show(value: Any) -> str:
    """A value as it is written in an override (quoted only when it would not read as one)."""
    if isinstance(value, str):
        return value if value and not any(c.isspace() or c in "'\",=" for c in value) \
            else repr(value)
    return str(value)


def representable(tp: Any, int_bits: int) -> Domain | None:
    """What numpy and JAX can hold of a field of type `tp`: floats finite (an infinite learning
    rate or epoch count is no setting), ints within signed `int_bits`. JAX runs with 64-bit types
    off, so an int that reaches the device (a step count, which optax schedules count in int32, a
    shape, an interval compared with the step) must fit 32 bits, the default; so must seeds
    (jax.random.key keeps a seed's low 32 bits: 2**32 would be seed 0 again). Token budgets meet
    only numpy and declare 64."""
    kinds = typing.get_args(tp) or (tp,)
    if typing.get_origin(tp) is list:
        item = representable(kinds[0], int_bits)
        return item and Domain(f"with items {item.says}", lambda xs: all(map(item.test, xs)))
    if float in kinds:
        return FINITE
    if int in kinds:
        bound = 2 ** (int_bits - 1)
        return Domain(f"below 2**{int_bits - 1}", lambda x: -bound <= x < bound)
    return None


def both(first: Domain | None, second: Domain | None) -> Domain | None:
    if first is None or second is None:
        return first or second
    return Domain(f"{first.says} and {second.says}", lambda x: first.test(x) and second.test(x))


def check_domains(section: Any) -> None:
    """The one check of every field of a config section against its declared type and domain;
    each section's __post_init__ runs it first, so no config with an impossible value exists."""
    name = type(section).__name__.removesuffix("Config").lower()
    for f in dataclasses.fields(section):
        key, value = f"{name}.{f.name}", getattr(section, f.name)
        domain = both(f.metadata["domain"], representable(f.type, f.metadata["int_bits"]))
        if not _has_type(value, f.type):
            # `- Python: the [MASK] language.` is a one-key mapping in YAML
            mapping = " (an item holding ': ' is a mapping in YAML: quote it)" if isinstance(
                value, list) and any(isinstance(x, dict) for x in value) else ""
            raise UserError(f"{key}={value!r} is not {type_name(f.type)}{mapping}; "
                            f"{key}: {f.metadata['doc']}")
        if value is None or domain is None or domain.test(value):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        example = f"e.g. {key}={show(default)} (the default)" if default is not None and \
            domain.test(default) else f"set {key} to a value that is {domain.says}"
        if domain.meant(value) is not None:
            example = f"did you mean {key}={show(domain.meant(value))}?"
        nullable = type(None) in typing.get_args(f.type)
        raise UserError(f"{key}={show(value)} is invalid: it must be {domain.says} "
                        f"({f.metadata['doc']}); {example}{' or null' if nullable else ''}")
