"""YAML text in: a config file's mapping and one `key=value` override, each value as written.

`yaml_mapping` reads a file's text (which must be a mapping of sections, whose keys hold no
dots) and `read_override` one override (`key=value`; a ' #' comment in it is refused: one shell
word holds none the user meant), as OmegaConf trees; their mistakes are one line saying where.
`read_as_written` then gives each key the value written, not YAML 1.1's reading of it: YAML 1.1
reads a plain `0010` as 8, `2024_01_15` as 20240115, `12:30` as 750 and `yes` as True, so
`train.run_dir=0010` trained into ./8. Where the schema says str, the written text is put back,
as if quoted; where it says int or float, a leading-zero octal or a base-60 number (a seed of
0042 was 34) is refused; Python's `None` for a nullable key is refused (it was the text 'None');
and an int written as a float (`tokens: 3e10`, `steps=1e3`) is that int.
"""

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import GrammarParseError

from bertjax.config_schema import Config
from bertjax.domains import show
from bertjax.errors import UserError

_NULL = "tag:yaml.org,2002:null"
# The number forms YAML 1.1 reads differently from a reader of decimals (YAML 1.2, Python)
_OCTAL = re.compile(r"^[-+]?0[0-7_]+$")
_BASE_60 = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")
_FLOAT = re.compile(r"^[-+]?(?=\.?[0-9])[0-9_]*(\.[0-9_]*)?([eE][-+]?[0-9]+)?$")
_INT = re.compile(r"^[-+]?[0-9_]+$")


def yaml_mapping(read: Callable[[], str], source: str, by_hand: bool = True) -> DictConfig:
    """The YAML text `read()` returns, which must be a mapping of sections (or nothing: an empty
    config); anything else is one line. `by_hand`: see `read_as_written`."""
    try:
        text = read()
        # The document's shape first: OmegaConf would read a bare word as a key set to null,
        # and fails on a bare number without a message.
        shape = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_shape(shape, source)
        data = OmegaConf.create(text)
        read_as_written(data, shape, source, by_hand=by_hand)  # run_dir: 0010 is './0010'
    except (yaml.MarkedYAMLError, GrammarParseError) as e:
        raise _syntax_error(e, source, text) from None
    except UserError:  # read() named the problem (UTF-16, not UTF-8), or the shape is wrong
        raise
    except Exception as e:  # unreadable text and the like
        raise UserError(f"{source} is not valid YAML ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]})") from None
    return data


def _check_shape(shape: yaml.Node | None, source: str) -> None:
    """A mapping of sections, whose keys do not hold dots (YAML does not split them, so
    `train.steps: 5` was "unknown key 'train.steps'; did you mean 'train.steps'?")."""
    if isinstance(shape, yaml.MappingNode):
        sections = [(k, v) for k, v in shape.value if isinstance(k, yaml.ScalarNode)]
        keys = [k.value for k, _ in sections] + [  # and the sections' keys (`optim.lr:`)
            k.value for _, v in sections if isinstance(v, yaml.MappingNode) for k, _ in v.value
            if isinstance(k, yaml.ScalarNode)]
        for key in keys:
            if "." in key:
                section, name = key.split(".")[:2]
                raise UserError(f"key '{key}' in {source}: YAML does not split keys at dots; "
                                f"nest them, e.g. '{section}:' then '  {name}: ...' on the next "
                                "line (section.key=value is the override form)")
    elif shape is not None and shape.tag != _NULL:  # `---` alone or `null`: nothing set
        held = "a list" if isinstance(shape, yaml.SequenceNode) else f"the value {shape.value!r}"
        raise UserError(f"{source} must hold a mapping of sections (model:, data:, ...), not "
                        f"{held}; write e.g. 'train:' then '  steps: 100' on the next line")


def _syntax_error(e: yaml.MarkedYAMLError | GrammarParseError, source: str,
                  text: str | None) -> UserError:
    """A YAML or interpolation syntax error as one line: where (when `text` is the whole file
    the marks point into), what and the fix."""
    if isinstance(e, GrammarParseError):
        return UserError(f"{source}: {e.full_key} holds a malformed interpolation "
                         f"({e.msg.splitlines()[0]}); write ${{section.key}} or ${{oc.env:VAR}} "
                         "with its closing brace, or escape a literal '${' as '\\${'")
    what = e.problem or e.context
    if e.context and e.problem:
        what += f" ({e.context}{_yaml_place(e.context_mark, text, ' started at ')})"
    if text is None:  # an override: its value was parsed alone, so marks say nothing useful
        return UserError(f"{source} does not parse as YAML: {what}; close its brackets and "
                         "quotes, or quote the whole value to pass text")
    lines = text.splitlines()
    line = lines[e.problem_mark.line] if e.problem_mark.line < len(lines) else ""
    fix = "correct the YAML there" if "\t" not in line else "indent with spaces, not tabs" \
        if line.lstrip(" ").startswith("\t") else "replace the tab with spaces"
    opens = re.search(r"(^\s*-|:)\s+([\[{])", line)  # `- [MASK] is ...`: a list, then text
    if opens:
        fix = f"close the bracket, or quote the value if it is text starting with '{opens[2]}'"
    return UserError(f"{source} is not valid YAML: {_yaml_place(e.problem_mark, text, '')}"
                     f"{f' ({line!r})' if line else ''}: {what}; {fix}")


def _yaml_place(mark: Any, text: str | None, prefix: str) -> str:
    """'line 2, column 9' of a yaml Mark (pure-Python or libyaml's: no common type), or ''."""
    return f"{prefix}line {mark.line + 1}, column {mark.column + 1}" if mark and text else ""


OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def read_override(item: str, source: str) -> DictConfig:
    """One `key=value` override as a config tree, its value read as written."""
    if not OVERRIDE.match(item):
        raise not_an_override(item)
    key, _, value = item.partition("=")
    if key == "include":  # read as an unknown key ("did you mean 'glue'?")
        raise UserError(f"{source}: include: works inside a YAML file; pass "
                        f"{value or 'the file'} as another config file "
                        "instead (files merge in order, before the overrides)")
    try:
        data = OmegaConf.from_dotlist([item])
        node = yaml.compose(value, Loader=yaml.SafeLoader)
    except (yaml.MarkedYAMLError, GrammarParseError) as e:
        raise _syntax_error(e, source, text=None) from None
    # YAML ends the value at ' #' (a comment): `wandb.name='run #2'` named the run 'run', and
    # `wandb.name=#2` set it to null. One shell word holds no comment the user meant.
    rest = value[node.end_mark.index:] if node is not None else value
    if rest.strip().startswith("#"):
        raise UserError(f"{source}: YAML reads '#' after a space (or first) as the start of a "
                        f"comment, so {key} would be {as_written(data, key)}; "
                        "drop the comment, or quote the value inside the argument to keep the "
                        f"'#': '{key}=\"{value}\"'")
    read_as_written(data, node, source, key)  # train.run_dir=0010 is './0010', not './8'
    return data


def not_an_override(item: str) -> UserError:
    """An argument that is not `section.key=value`, with the likely intent where there is one
    (Hydra's +key / ~key, argparse's --key, key:value, section.dashed-key)."""
    key, equals, value = item.partition("=")
    bare = key.lstrip("+~-").strip()
    fix = f"write {bare}={value.strip()}" if equals else "e.g. train.steps=100"
    if key.startswith("~"):
        why, fix = "there is no ~key (Hydra's delete)", \
            f"leave {bare} out to keep its default, or set it: {bare}=VALUE"
    elif key.startswith("+"):
        why = "there is no +key or ++key (Hydra's add): every key exists already"
    elif key.startswith("-"):
        why = "overrides take no leading dashes"
    elif key != key.strip():
        why = "no spaces around '='"
    elif ":" in key and not equals:
        why, fix = "an override is section.key=value", f"write {key.replace(':', '=', 1)}"
    elif "-" in key and OVERRIDE.match(f"{key.replace('-', '_')}="):  # train.micro-batch=8
        why = "keys are written with underscores"
        fix = f"write {key.replace('-', '_')}={value}"
    else:
        return UserError(f"override {item!r} is not section.key=value (e.g. train.steps=100)")
    return UserError(f"override {item!r}: {why}; {fix}")


def as_written(merged: DictConfig, key: str) -> str:
    """The value of `key` ('glue.seeds[0]' too) before interpolations resolve, as written."""
    node = OmegaConf.to_container(merged, resolve=False)
    for part in re.findall(r"\w+", key):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return "null" if node is None else show(node)


def read_as_written(data: DictConfig, node: yaml.Node | None, source: str, key: str = "",
                    by_hand: bool = True) -> None:
    """In `data`, OmegaConf's reading of the YAML that composes to `node` (a whole config file,
    or the value of the override `key=...`), give each key the value its plain scalar's text
    means for the key's type (see the module's doc); `source` names where it was written.
    A config OmegaConf wrote (`by_hand` false: a run's config.yaml) writes the text 'None'
    unquoted: there it is that text."""
    path = tuple(key.split(".")) if key else ()
    hint: Any = Config
    for name in path:  # an unknown key has no hint: the merge names it
        hint = _fields(hint).get(name)
    for where, text, kind in _written(node, hint, path):
        value = _meant(text, kind, _dotted(where), source, by_hand)
        if value is not None:
            parent = data
            for part in where[:-1]:
                parent = parent[part]
            parent[where[-1]] = value


def _meant(text: str, hint: Any, key: str, source: str, by_hand: bool) -> str | int | None:
    """What the plain scalar `text` means for a key of type `hint`; None: YAML's reading."""
    kinds = typing.get_args(hint) or (hint,)
    if by_hand and type(None) in kinds and text in ("None", "none"):
        raise UserError(f"{key}={text} in {source}: YAML's null is null or ~, not {text} "
                        f"(Python's); write {key}=null, or quote '{text}' to mean the text")
    if str in kinds:
        return text
    if int not in kinds and float not in kinds:
        return None
    digits = text.replace("_", "")
    if _OCTAL.match(text) and int(digits, 8) != int(digits, 10):
        raise UserError(f"{key}={text} in {source}: YAML 1.1 reads a number with a leading 0 "
                        f"as octal ({int(digits, 8)}); write it without the leading zeros "
                        f"({int(digits, 10)})")
    if _BASE_60.match(text):
        raise UserError(f"{key}={text} in {source}: YAML 1.1 reads a number with ':' in base "
                        f"60 (1:30 is 90); write the number itself")
    if int in kinds and _FLOAT.match(text) and not _INT.match(text):  # 3e10, 100.0
        number = Decimal(digits)
        if number == number.to_integral_value() and number.adjusted() < 64:
            return int(number)  # exactly as written, where a float would round past 2**53
    return None


def _dotted(where: tuple) -> str:
    """('glue', 'seeds', 1) -> 'glue.seeds[1]'."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where).lstrip(".")


def _written(node: yaml.Node | None, hint: Any, path: tuple) -> Iterator[tuple[tuple, str, Any]]:
    """(where, text, type) of each plain scalar in `node` that `hint` (a schema type) types."""
    inner = _unless_none(hint)
    if isinstance(node, yaml.MappingNode) and dataclasses.is_dataclass(inner):
        fields = _fields(inner)
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in fields:
                yield from _written(value, fields[key.value], (*path, key.value))
    elif isinstance(node, yaml.SequenceNode) and typing.get_origin(inner) is list:
        for i, item in enumerate(node.value):
            yield from _written(item, typing.get_args(inner)[0], (*path, i))
    # Quoted text is already a str, and a plain null stays None (`~`, `null`, nothing): only
    # the plain scalars YAML 1.1 may read as something else. One where a list[str] belongs
    # (`data.sources=0010`) too, so the error's example shows it as typed.
    elif isinstance(node, yaml.ScalarNode) and node.style is None and node.tag != _NULL:
        yield path, node.value, (str if str in typing.get_args(inner) else hint)


def _fields(hint: Any) -> dict[str, Any]:
    return typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else {}


def _unless_none(hint: Any) -> Any:
    """`str | None` -> str; any other type as it is."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return args[0] if is_union and len(args) == 1 else hint
