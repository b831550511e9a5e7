"""Config domains: the values a field may take, declared next to its default in config.py.

`opt(default, doc, domain=POSITIVE)` makes a field; the vocabulary is POSITIVE, NON_NEGATIVE,
`at_least(n)`, `interval(lo, hi, "[)")` (UNIT_OPEN, FRACTION, UNIT_CLOSED), `one_of(...)`,
`list_of(item, non_empty=, increasing=)` and `containing(text)`. `check_domains(section)`, run by
every section's __post_init__, is the one place they are checked (types included).
"""

import dataclasses
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


def at_least(low: int | float) -> Domain:
    return Domain(f">= {low}", lambda x: x >= low)


def interval(low: int | float, high: int | float, brackets: str = "[)") -> Domain:
    """Numbers between low and high; brackets '[)' include low and exclude high, and so on."""
    return Domain(f"in {brackets[0]}{low}, {high}{brackets[1]}",
                  lambda x: (low <= x if brackets[0] == "[" else low < x) and
                  (x <= high if brackets[1] == "]" else x < high))


def one_of(*choices: str) -> Domain:
    return Domain(f"one of {', '.join(choices)}", lambda x: x in choices)


def list_of(item: Domain | None = None, *, non_empty: bool = False,
            increasing: bool = False) -> Domain:
    """A list (non-empty, strictly increasing, when asked) whose every item is in `item`."""
    says = "a" + " non-empty" * non_empty + "," * (non_empty and increasing) + \
        " strictly increasing" * increasing + " list" + (f" of values {item.says}" if item else "")
    return Domain(says, lambda xs: (len(xs) > 0 or not non_empty) and
                  (not increasing or all(a < b for a, b in zip(xs[:-1], xs[1:], strict=True))) and
                  (item is None or all(item.test(x) for x in xs)))


def containing(text: str) -> Domain:
    return Domain(f"containing {text}", lambda x: text in x)


POSITIVE = Domain("> 0", lambda x: x > 0)
NON_NEGATIVE = at_least(0)
UNIT_OPEN = interval(0, 1, "()")  # a probability that must do something: (0, 1)
FRACTION = interval(0, 1, "[)")  # dropout, warm-up, held-out share: [0, 1)
UNIT_CLOSED = interval(0, 1, "[]")


def opt(default: Any, doc: str, *, domain: Domain | None = None) -> Any:
    """A config field with a default, a one-line doc and the domain its values must lie in
    (null, where the type allows it, always passes: it means "derive it"). Lists get a fresh
    copy per instance."""
    metadata = {"doc": doc, "domain": domain}
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


def check_domains(section: Any) -> None:
    """The one check of every field of a config section against its declared type and domain;
    each section's __post_init__ runs it first, so no config with an impossible value exists."""
    name = type(section).__name__.removesuffix("Config").lower()
    for f in dataclasses.fields(section):
        key, value, domain = f"{name}.{f.name}", getattr(section, f.name), f.metadata["domain"]
        if not _has_type(value, f.type):
            raise UserError(f"{key}={value!r} is not {type_name(f.type)}; "
                            f"{key}: {f.metadata['doc']}")
        if value is None or domain is None or domain.test(value):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        example = f"e.g. {key}={show(default)} (the default)" if default is not None and \
            domain.test(default) else f"set {key} to a value {domain.says}"
        nullable = type(None) in typing.get_args(f.type)
        raise UserError(f"{key}={show(value)} is invalid: it must be {domain.says} "
                        f"({f.metadata['doc']}); {example}{' or null' if nullable else ''}")
