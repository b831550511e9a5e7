"""Typed configuration: defaults <- YAML files <- key=value overrides, as frozen dataclasses.

`load(files, overrides)` merges through OmegaConf structured configs (so types are checked; the
YAML text is read in config_yaml.py) and returns the plain frozen dataclasses of
config_schema.py, where every key, its default, doc and domain are declared. Every mistake
becomes a `UserError` naming the key, the value, what it must be and the fix. `to_yaml(cfg)`
writes the resolved config a run keeps.
"""

import dataclasses
import difflib
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, Node, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

# The schema's names are re-exported: bertjax.config is the one import for configs.
from bertjax.config_schema import (  # noqa: F401
    GLUE_TASKS,
    MODEL_SIZES,
    OBJECTIVES,
    SIZE_DERIVED,
    Config,
    DataConfig,
    GlueConfig,
    InitConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    PrecisionConfig,
    TokenizerConfig,
    TrainConfig,
    WandbConfig,
    check_objective,
)
from bertjax.config_yaml import OVERRIDE, as_written, not_an_override, read_override, yaml_mapping
from bertjax.domains import show, type_name
from bertjax.errors import UserError
from bertjax.files import from_cwd, read_utf8

# Keys that older bertjax versions wrote into run directories and bundles, with why they went.
RETIRED = {"precision.param": "parameters and optimizer state are always float32; "
                              "precision.compute sets the activation dtype",
           "train.eval_batches": "validation is counted in sequences, so that its sample does "
                                 "not change with micro_batch: set train.eval_sequences to "
                                 "eval_batches x micro_batch"}


def _without_retired(data: DictConfig, source: str, strict: bool) -> DictConfig:
    """Drop retired keys: an error naming why when a user sets one (`strict`), silently when
    re-reading a config an older bertjax saved."""
    for key, why in RETIRED.items():
        section, _, name = key.partition(".")
        node = data.get(section) if isinstance(data, DictConfig) else None
        if isinstance(node, DictConfig) and name in node:
            if strict:
                raise UserError(f"config key '{key}' in {source} was removed ({why}); "
                                "delete it")
            value = node.pop(name)
            if key == "train.eval_batches" and "eval_sequences" not in node and \
                    isinstance(value, int) and isinstance(node.get("micro_batch", 0), int):
                # The sample it scored, eval_batches x micro_batch: read as the default (256),
                # an old run resumed with the same config file was told "train.eval_sequences:
                # 256 -> 32" (tiny.yaml, 4 x 8), a change that was none.
                micro_batch = node.get("micro_batch", TrainConfig.micro_batch)
                node["eval_sequences"] = value * micro_batch
    return data


def _valid_keys(schema: DictConfig, dotted: str) -> list[str]:
    """Keys that exist at the level of `dotted` (e.g. 'model.hiden' -> model's field names)."""
    parent = dotted.rpartition(".")[0]
    node = OmegaConf.select(schema, parent) if parent else schema
    if not isinstance(node, DictConfig):
        return []
    # a file's `includes:` was "did you mean 'glue'?"
    return [f"{parent}.{k}" if parent else str(k) for k in node.keys()] + \
        ([] if parent else ["include"])


def _explain(e: OmegaConfBaseException, schema: DictConfig, source: str) -> UserError:
    key = e.full_key or "?"
    if isinstance(e, ConfigKeyError):
        close = difflib.get_close_matches(key, _valid_keys(schema, key), n=1, cutoff=0.5)
        hint = (f"; did you mean '{close[0]}'?" if close
                else "; see bertjax/config_schema.py for keys")
        return UserError(f"unknown config key '{key}' in {source}{hint}")
    if isinstance(e, ValidationError):
        node_type = OmegaConf.get_type(schema, key.rpartition(".")[0]) if "." in key else Config
        hints = {f.name: f.type for f in dataclasses.fields(node_type)} if node_type else {}
        name = key.rpartition(".")[2].split("[")[0]  # 'seeds[0]' -> 'seeds'
        expected = type_name(hints[name]) if name in hints else "another type"
        if "[" in key:
            expected = f"items of {expected}"
        value = getattr(e, "value", None)
        if isinstance(value, Node):  # `glue.seeds=null` arrives as a node holding None
            value = value._value()  # (whose repr is 'None'), `glue.seeds='[0,1]'` as one too
        # `key=` and `key=null` reach here as None: say so, and that this key needs a value
        got = f"{value!r}" if value is not None else "null (no value), which it cannot be: " \
            f"give {key} a value" if "'None'" in e.msg or "is not Optional" in e.msg \
            or "NoneType" in e.msg else "the given value"  # the last: a null list item
        return UserError(f"config key '{key}' in {source} expects {expected}, got {got}"
                         f"{_list_hint(key, hints.get(name), value, node_type)}")
    if isinstance(e, InterpolationResolutionError):
        return _unresolved(e, schema, key)
    return UserError(f"bad config in {source}: {e.msg if hasattr(e, 'msg') else e}")


def _list_hint(key: str, expected: Any, value: Any, node_type: Any) -> str:
    """For one value where a list belongs (`data.sources=foo.txt`), how a list is written; for
    null, the key's default as the example."""
    if typing.get_origin(expected) is not list or "[" in key:
        return ""
    if value is None:
        name = key.rpartition(".")[2]
        default = next(f.default_factory() for f in dataclasses.fields(node_type)
                       if f.name == name)
        return f" (a list in brackets, e.g. {key}={show(default).replace(' ', '')})"
    shown = str(value)  # as typed, unquoted
    if isinstance(value, str) and shown.startswith("[") and shown.endswith("]"):  # "[0, 1]"
        return f"; the list is quoted, so it is text: write it without the quotes, " \
            f"e.g. {key}={shown}"
    if isinstance(value, str) and any(c in shown for c in "[]{}"):  # `The [MASK] sat.`
        return f"; write a list in brackets, e.g. {key}=[{shown!r}]"
    if shown.startswith("(") and shown.endswith(")"):  # `glue.seeds=(0 1)`: [0,1] instead
        shown = ",".join(shown[1:-1].replace(",", " ").split())
    return f"; write a list in brackets, e.g. {key}=[{shown}]"


def _unresolved(e: InterpolationResolutionError, merged: DictConfig, key: str) -> UserError:
    """An interpolation that does not resolve, named by its key and its text as written;
    OmegaConf's message would also name its internal node types."""
    # 'KeyError raised while resolving interpolation: "Environment variable ..."' -> the cause
    cause = re.sub(r"^\w+ raised while resolving interpolation: ", "", e.msg.splitlines()[0])
    cause = cause.strip('"')
    return UserError(f"{key}={as_written(merged, key)}: {cause[:1].lower()}{cause[1:]}; refer "
                     "to an existing key (${section.key}) or a set environment variable "
                     "(${oc.env:VAR} or ${oc.env:VAR,default}), or write the value itself")


def _plain(value: Any) -> str:
    return show(OmegaConf.to_object(value) if OmegaConf.is_config(value) else value)


def _check_sections(schema: DictConfig, other: DictConfig, source: str) -> None:
    """A scalar or list where a section belongs (`model: tiny`) is named as such; OmegaConf
    would report it against no key at all."""
    for name, value in other.items_ex(resolve=False) if isinstance(other, DictConfig) else ():
        if name in schema and isinstance(schema[name], DictConfig) and \
                not isinstance(value, DictConfig) and value is not None:
            first = next(iter(schema[name]))
            # `train:\n  steps:5` reads as the text 'steps:5'
            space = " (YAML needs a space after the ':')" if re.fullmatch(
                r"\w+:\S.*", str(value)) else ""
            raise UserError(f"'{name}' in {source} is {_plain(value)}{space}, but it is a "
                            f"section: a mapping of keys, e.g. '{name}:' then '  {first}: ...' "
                            f"on the next line in YAML, or {name}.{first}=... as an override")


def _check_lists(schema: DictConfig, other: DictConfig, source: str) -> None:
    """A mapping where a list belongs (`glue.seeds={a: 1}`) is named with the list form;
    OmegaConf's merge raises a bare TypeError ("Cannot merge incompatible container types")."""
    for name, section in other.items_ex(resolve=False) if isinstance(other, DictConfig) else ():
        if not (isinstance(section, DictConfig) and isinstance(schema.get(name), DictConfig)):
            continue
        for key, value in section.items_ex(resolve=False):
            if isinstance(value, DictConfig) and OmegaConf.is_list(schema[name].get(key)):
                hint = {f.name: f.type for f in dataclasses.fields(OmegaConf.get_type(
                    schema, name))}.get(key)
                default = _plain(schema[name][key])
                raise UserError(f"config key '{name}.{key}' in {source} expects "
                                f"{type_name(hint)}, got the mapping {_plain(value)}; write a "
                                f"list in brackets, e.g. {name}.{key}={default}")


def _missing_keys(node: Any, key: str = "") -> list[str]:
    """The dotted keys whose value is OmegaConf's "???" in a plain (unresolved) container."""
    if node == "???":
        return [key]
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    return [k for name, child in items
            for k in _missing_keys(child, f"{key}.{name}" if key else str(name))]


def _merge(schema: DictConfig, other: DictConfig, source: str) -> DictConfig:
    _check_sections(schema, other, source)
    _check_lists(schema, other, source)
    missing = _missing_keys(OmegaConf.to_container(other, resolve=False))
    if missing:  # merged, OmegaConf's "???" would silently keep the value it was meant to set
        raise UserError(f"{missing[0]}=??? in {source}: ??? marks a value not given yet; give "
                        f"{missing[0]} a value, or null where it may be derived")
    try:
        return OmegaConf.merge(schema, other)
    except OmegaConfBaseException as e:
        raise _explain(e, schema, source) from None


def _schema() -> DictConfig:
    """The defaults as a mutable OmegaConf tree, with size-derived model dims left unset.

    Building the structured config runs ModelConfig.__post_init__, which fills the dims from the
    default size; they are reset so that `model.size: base` in a YAML file still decides them.
    """
    schema = OmegaConf.structured(Config)
    for node in [schema, *schema.values()]:  # frozen dataclasses mark every section read-only
        OmegaConf.set_readonly(node, False)
    for name in SIZE_DERIVED:
        schema.model[name] = None
    return schema


def _merge_file(merged: DictConfig, path: Path, seen: tuple[Path, ...],
                section: str | None = None) -> DictConfig:
    """Merge one YAML file, after the files its `include:` names (relative to it); with
    `section`, that section of each file alone."""
    if path.is_dir():
        raise UserError(f"config file {path} is a directory; pass a path to a YAML file")
    if not path.is_file():
        raise _no_config_file(path, included_by=seen[-1] if seen else None)
    if path.resolve() in seen:
        raise UserError(f"{path} includes itself (through {[str(p) for p in seen]})")
    data = yaml_mapping(lambda: read_utf8(path, "save config files as UTF-8"), str(path))
    for name in [f.name for f in dataclasses.fields(Config)]:
        if name in data and data[name] is None:  # `train:` with its keys commented out: empty
            data.pop(name)
    includes = data.pop("include", [])
    # `include:` with its files commented out is empty, as a section is
    includes = [includes] if isinstance(includes, str) else [] if includes is None else includes
    if not OmegaConf.is_list(includes) and not isinstance(includes, list) or \
            not all(isinstance(name, str) for name in includes):
        raise UserError(f"include: in {path} must be a YAML file path or a list of them "
                        f"(relative to {path.parent}), got {_plain(includes)}")
    for name in includes:
        merged = _merge_file(merged, path.parent / name, (*seen, path.resolve()), section)
    if section is not None:
        for key in [key for key in data if key != section]:
            data.pop(key)
    return _merge(merged, _without_retired(data, str(path), strict=True), str(path))


def _no_config_file(path: Path, included_by: Path | None) -> UserError:
    """A missing YAML file, with the likelier mistake when it names an include or a key."""
    if included_by is not None:
        shell = ", and expand neither ~ nor $VAR: write ${oc.env:HOME}/..." if any(
            part.startswith(("~", "$")) for part in path.parts) else ""  # include: ~/base.yaml
        return UserError(f"config file {path}, named by include: in {included_by}, does not "
                         f"exist; fix that include (paths are relative to {included_by.parent}"
                         f"{shell})")
    sections = {f.name for f in dataclasses.fields(Config)}
    word, bare = str(path), str(path).lstrip("+~-").replace(":", "=", 1)
    if (word[:1] in "+~-" or ":" in word) and bare.partition(".")[0] in sections and \
            OVERRIDE.match(f"{bare}="):  # ~train.steps, train.steps:5
        return not_an_override(word)
    if word.partition(".")[0] in sections and OVERRIDE.match(f"{word}="):
        return UserError(f"config file {path} does not exist, and as an override it lacks a "
                         f"value: write {path}=VALUE")
    yaml_file = path.with_name(f"{path.name}.yaml")  # `train configs/tiny`
    return UserError(f"config file {path} does not exist{from_cwd(path)}; pass a path to a YAML "
                     f"file{f' (did you mean {yaml_file}?)' if yaml_file.is_file() else ''}")


def load(files: str | Path | Sequence[str | Path] = (), overrides: str | Sequence[str] = (),
         section: str | None = None) -> Config:
    """Defaults <- each YAML file in order <- `key=value` overrides, as a frozen `Config`; with
    `section`, only that section of the files and overrides (the rest: defaults). One file or
    one override may be given alone: `load("configs/tiny.yaml", "train.steps=5")`. Raises
    UserError, one line naming the key or file and the fix."""
    # Alone, a string was read one character per file ("config file c does not exist") or per
    # override: a notebook's first call.
    files = [files] if isinstance(files, str | Path) else files
    overrides = [overrides] if isinstance(overrides, str) else overrides
    merged = _schema()
    merged.train.steps = "???"  # unset until a file or an override sets it: _default_steps
    for path in map(Path, files):
        merged = _merge_file(merged, path, seen=(), section=section)
    if section is not None:
        overrides = [o for o in overrides if o.lstrip().startswith(f"{section}.")]
    for item in overrides:
        source = f"override {item!r}"
        merged = _merge(merged, _without_retired(read_override(item, source), source, True),
                        source)
    try:
        _default_steps(merged)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _explain(e, merged, "the merged config") from None


def _default_steps(merged: DictConfig) -> None:
    """train.steps where no file or override set it: its default, or null when train.tokens
    sets the run's length (a tokens-only config was told its 1000 steps were not used)."""
    if OmegaConf.is_missing(merged.train, "steps"):
        merged.train.steps = None if merged.train.tokens is not None else TrainConfig.steps


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Command-line words -> (YAML files, key=value overrides). A file whose path holds an '='
    (`runs/lr=1e-3/config.yaml`) is a file: it was read as a malformed override. A word after
    an override that is no file is the override's rest, split off by the shell (`glue.seeds=[0,
    1]` unquoted): refused as such (it was "config file 1] does not exist")."""
    files = [a for a in argv if "=" not in a or Path(a).is_file()]
    for before, word in zip(argv, argv[1:], strict=False):
        if OVERRIDE.match(before) and before not in files and word in files and \
                not Path(word).exists() and not word.endswith((".yaml", ".yml", ".json")) and \
                not Path(f"{word}.yaml").is_file():  # `configs/tiny`: _no_config_file's hint
            raise UserError(f"{word!r} follows the override {before!r} but is no config file: "
                            "the shell splits words at spaces; quote the whole override, e.g. "
                            f"'{before} {word}'")
    return files, [a for a in argv if a not in files]


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """`cfg` as YAML that reads back as the same config (a run's config.yaml, --print-config): a
    string holding "${" (an override's 'a\\${b}') is written escaped, or reading it back took
    it for an interpolation ("interpolation key 'b' not found": the run could not resume)."""
    def escaped(x):
        if isinstance(x, str):
            return x.replace("${", "\\${")
        if isinstance(x, dict):
            return {k: escaped(v) for k, v in x.items()}
        return [escaped(v) for v in x] if isinstance(x, list) else x
    return OmegaConf.to_yaml(OmegaConf.create(escaped(dataclasses.asdict(cfg))))


def from_yaml_text(text: str, source: str) -> Config:
    """Re-read a resolved config (e.g. a checkpoint's config.yaml)."""
    data = yaml_mapping(lambda: text, source, by_hand=False)
    merged = _merge(_schema(), _without_retired(data, source, strict=False), source)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _explain(e, merged, source) from None
