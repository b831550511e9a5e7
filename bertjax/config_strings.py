"""A config key the schema types str keeps the characters written, in YAML files and overrides.

YAML 1.1 reads a plain `0010` as 8, `2024_01_15` as 20240115, `12:30` as 750 and `yes` as True;
OmegaConf then turns that value into the string '8' where a str belongs, so `train.run_dir=0010`
trained into ./8. `keep_written_strings` puts the written text back, as if it had been quoted.
"""

import dataclasses
import types
import typing
from collections.abc import Iterator
from typing import Any

import yaml
from omegaconf import DictConfig

from bertjax.config_schema import Config

_NULL = "tag:yaml.org,2002:null"


def keep_written_strings(data: DictConfig, node: yaml.Node | None, key: str = "") -> None:
    """In `data`, OmegaConf's reading of the YAML that composes to `node` (a whole config file,
    or the value of the override `key=...`), give each str key the text of its plain scalar."""
    path = tuple(key.split(".")) if key else ()
    hint: Any = Config
    for name in path:  # an unknown key has no hint: the merge names it
        hint = _fields(hint).get(name)
    for where, text in _written(node, hint, path):
        parent = data
        for part in where[:-1]:
            parent = parent[part]
        parent[where[-1]] = text


def _written(node: yaml.Node | None, hint: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    """(where, text) of each plain scalar in `node` that `hint` (a schema type) says is a str."""
    hint = _unless_none(hint)
    if isinstance(node, yaml.MappingNode) and dataclasses.is_dataclass(hint):
        fields = _fields(hint)
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in fields:
                yield from _written(value, fields[key.value], (*path, key.value))
    elif isinstance(node, yaml.SequenceNode) and typing.get_origin(hint) is list:
        for i, item in enumerate(node.value):
            yield from _written(item, typing.get_args(hint)[0], (*path, i))
    # Quoted text is already a str, and a plain null stays None (`~`, `null`, nothing): only
    # the plain scalars YAML 1.1 may read as something else. One where a list[str] belongs
    # (`data.sources=0010`) too, so the error's example shows it as typed.
    elif isinstance(node, yaml.ScalarNode) and node.style is None and node.tag != _NULL and \
            str in (hint, *typing.get_args(hint)):
        yield path, node.value


def _fields(hint: Any) -> dict[str, Any]:
    return typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else {}


def _unless_none(hint: Any) -> Any:
    """`str | None` -> str; any other type as it is."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return args[0] if is_union and len(args) == 1 else hint
