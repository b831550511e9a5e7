"""Typed configuration: frozen dataclasses; defaults <- YAML files <- key=value overrides.

`load(files, overrides)` merges through OmegaConf structured configs (so types are checked) and
returns plain frozen dataclasses. Every field declares its domain next to its default (`opt(...,
domain=POSITIVE)`, vocabulary in domains.py); `check_domains` checks them all whenever a section
is built, so before any work starts. Every mistake becomes a `UserError` naming the key, the
value, what it must be and the fix. `to_yaml(cfg)` writes the resolved config a run keeps.
Longer than the layout guide's ~350 lines on purpose: it is the one reference of every key, its
default, doc and domain, read top to bottom.
"""

import dataclasses
import difflib
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, Node, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    GrammarParseError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from bertjax.domains import (
    FRACTION,
    NON_NEGATIVE,
    PATH,
    PATHS,
    POSITIVE,
    UNIT_CLOSED,
    UNIT_OPEN,
    at_least,
    check_domains,
    containing,
    interval,
    list_of,
    one_of,
    opt,
    show,
    type_name,
)
from bertjax.errors import UserError
from bertjax.files import from_cwd

# Turc et al. 2019 ("Well-Read Students Learn Better") shapes; base/large are BERT's own.
# name: (num_layers, hidden_size, num_heads); the feed-forward size is 4 * hidden.
MODEL_SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


@dataclass(frozen=True)
class ModelConfig:
    size: str = opt("tiny", "named shape: tiny | mini | small | medium | base | large",
                    domain=one_of(*MODEL_SIZES))
    num_layers: int | None = opt(None, "encoder blocks; null = from size", domain=POSITIVE)
    hidden_size: int | None = opt(None, "model width; null = from size", domain=POSITIVE)
    num_heads: int | None = opt(None, "attention heads; null = from size", domain=POSITIVE)
    intermediate_size: int | None = opt(None, "feed-forward width; null = 4 * hidden_size",
                                        domain=POSITIVE)
    vocab_size: int | None = opt(None, "vocabulary rows; null = the tokenizer's size",
                                 domain=POSITIVE)
    max_position_embeddings: int = opt(512, "learned positions", domain=POSITIVE)
    position_init: str = opt("normal", "initial position rows: normal (BERT) | sinusoidal",
                             domain=one_of("normal", "sinusoidal"))
    type_vocab_size: int = opt(2, "token type (segment) embeddings", domain=POSITIVE)
    norm: str = opt("pre", "pre (pre-LayerNorm + final norm) | post (original BERT)",
                    domain=one_of("pre", "post"))
    dropout: float = opt(0.1, "hidden dropout", domain=FRACTION)
    attention_dropout: float = opt(0.1, "attention-probability dropout (>0 uses the explicit "
                                   "path)", domain=FRACTION)
    attention: str = opt("auto", "attention kernel: auto (cuDNN flash attention on NVIDIA GPUs in "
                         "bf16/fp16, else XLA's) | xla | cudnn (as auto, warning where it cannot)",
                         domain=one_of("auto", "xla", "cudnn"))
    layer_norm_eps: float = opt(1e-12, "LayerNorm epsilon (BERT: 1e-12)", domain=POSITIVE)
    scan_layers: bool = opt(True, "lax.scan over blocks: compile time independent of depth")
    remat: bool | None = opt(None, "recompute each block in the backward pass instead of storing "
                             "its activations: less memory; null = on for CPU, where it is "
                             "also faster (log.md, 2026-12-01), off on GPU/TPU")

    def __post_init__(self):
        check_domains(self)
        layers, hidden, heads = MODEL_SIZES[self.size]
        set_default = lambda name, value: (  # noqa: E731
            object.__setattr__(self, name, value) if getattr(self, name) is None else None
        )
        set_default("num_layers", layers)
        set_default("hidden_size", hidden)
        set_default("num_heads", heads)
        set_default("intermediate_size", 4 * self.hidden_size)
        if self.hidden_size % self.num_heads:
            raise UserError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_heads={self.num_heads}; pick sizes whose ratio is an integer"
            )


@dataclass(frozen=True)
class TokenizerConfig:
    path: str | None = opt(None, "existing tokenizer.json to use; null = train one on the corpus",
                           domain=PATH)
    vocab_size: int = opt(8192, "WordPiece vocabulary size when training", domain=at_least(100))
    lowercase: bool = opt(True, "BERT normalizer lowercases and strips accents")
    min_frequency: int = opt(2, "minimum pair frequency for a WordPiece merge",
                             domain=NON_NEGATIVE)

    def __post_init__(self):
        check_domains(self)


OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop")
# The fine-tuning tasks (glue.py's TASKS has them all, plus the test-only diagnostic set `ax`).
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise UserError(f"data.objective={objective!r}: use {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class DataConfig:
    dir: str = opt("data/demo", "prepared data directory (tokens, offsets, meta.json)",
                    domain=PATH)
    sources: list[str] = opt([], "local text/jsonl/parquet files or globs",
                              domain=PATHS)
    hf_dataset: str | None = opt(None, "Hugging Face hub dataset name (streamed)")
    hf_config: str | None = opt(None, "hub dataset config, e.g. 20231101.en")
    hf_split: str = opt("train", "hub dataset split")
    text_column: str = opt("text", "column holding the text (hub, jsonl, parquet)")
    builtin: str | None = opt(None, "embedded corpus: 'stdlib' (Python's own docs, offline)")
    validation_fraction: float = opt(0.01, "fraction of documents held out for validation",
                                     domain=FRACTION)
    max_documents: int | None = opt(None, "stop after this many documents (null = all)",
                                    domain=POSITIVE)
    seq_len: int = opt(128, "tokens per training sequence, [CLS] and [SEP] included",
                       domain=at_least(8))
    objective: str = opt("mlm", "mlm | mlm+nsp | mlm+sop", domain=one_of(*OBJECTIVES))
    mask_rate: float = opt(0.15, "fraction of tokens to predict (BERT: 0.15)", domain=UNIT_OPEN)
    max_predictions: int | None = opt(None, "predictions per sequence; null = ceil(rate*len)",
                                      domain=POSITIVE)
    prefetch: int = opt(2, "batches prepared ahead by the loader thread", domain=POSITIVE)

    def __post_init__(self):
        check_domains(self)
        if self.max_predictions is not None and self.max_predictions > self.seq_len:
            raise UserError(f"data.max_predictions={self.max_predictions} exceeds data.seq_len="
                            f"{self.seq_len}; predict at most one token per position (or null)")

    @property
    def predictions(self) -> int:
        """Fixed number of predicted positions per sequence (a static shape for XLA)."""
        if self.max_predictions is not None:
            return self.max_predictions
        return -(-int(self.mask_rate * self.seq_len * 1000) // 1000)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = opt(1e-3, "peak learning rate", domain=POSITIVE)
    schedule: str = opt("one_cycle", "one_cycle | linear (warmup + linear decay) | constant",
                        domain=one_of("one_cycle", "linear", "constant"))
    warmup: float = opt(0.1, "warm-up length as a fraction of training steps", domain=FRACTION)
    final_lr_fraction: float = opt(0.01, "one_cycle/linear: final lr as a fraction of peak",
                                   domain=UNIT_CLOSED)
    weight_decay: float = opt(0.01, "AdamW decoupled weight decay (matrices and embeddings only)",
                              domain=NON_NEGATIVE)
    b1: float = opt(0.9, "Adam beta1", domain=FRACTION)
    b2: float = opt(0.98, "Adam beta2", domain=FRACTION)
    eps: float = opt(1e-6, "Adam epsilon", domain=POSITIVE)
    clip: float = opt(1.0, "global gradient-norm clip (0 = off)", domain=NON_NEGATIVE)

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class PrecisionConfig:
    """Parameters and optimizer state are always float32 (`compute` casts them per step)."""

    compute: str = opt("float32", "activation dtype: float32 | bfloat16 | float16",
                       domain=one_of("float32", "bfloat16", "float16"))
    loss_scale: float = opt(2.0**15, "fp16 only: initial dynamic loss scale", domain=POSITIVE)
    loss_scale_period: int = opt(2000, "fp16 only: finite steps before the scale doubles",
                                 domain=POSITIVE)

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class MeshConfig:
    strategy: str = opt("dp", "dp (replicated params) | fsdp (params sharded on the data axis)",
                        domain=one_of("dp", "fsdp"))
    fsdp_min_size: int = opt(2**14, "fsdp: arrays smaller than this stay replicated",
                             domain=NON_NEGATIVE)
    coordinator_address: str | None = opt(None, "multi-host: host:port of process 0 (null = auto)")
    num_processes: int | None = opt(None, "multi-host: process count (null = auto)",
                                    domain=POSITIVE)
    process_id: int | None = opt(None, "multi-host: this process's index (null = auto)",
                                 domain=NON_NEGATIVE)

    def __post_init__(self):
        check_domains(self)
        if None not in (self.num_processes, self.process_id) and \
                self.process_id >= self.num_processes:
            raise UserError(f"mesh.process_id={self.process_id} must be below "
                            f"mesh.num_processes={self.num_processes} (processes count from 0)")


@dataclass(frozen=True)
class TrainConfig:
    task: str = opt("pretrain", "pretrain | glue", domain=one_of("pretrain", "glue"))
    run_dir: str = opt("runs/demo", "where config, metrics, checkpoints and plots go",
                        domain=PATH)
    steps: int | None = opt(1000, "optimizer steps (null = from train.tokens)", domain=POSITIVE)
    tokens: int | None = opt(None, "token budget; when set, overrides steps", domain=POSITIVE,
                             int_bits=64)
    micro_batch: int = opt(32, "sequences per forward/backward (global, across devices)",
                           domain=POSITIVE)
    batch_start: int | None = opt(None, "global batch at step 0 (null = batch_end)",
                                  domain=POSITIVE)
    batch_end: int | None = opt(None, "global batch after the ramp (null = micro_batch)",
                                domain=POSITIVE)
    batch_ramp: float = opt(0.0, "fraction of training over which the batch grows linearly",
                            domain=UNIT_CLOSED)
    batch_ramp_stages: int = opt(8, "ramp increments; the train step compiles <= stages+1 times",
                                 domain=POSITIVE)
    # 32 bits: jax.random.key keeps only a seed's low 32 bits (64-bit types are off), so seed
    # 2**32 would be seed 0 again
    seed: int = opt(0, "root seed: data order, masks, dropout, init", domain=NON_NEGATIVE)
    resume: str = opt("auto", "auto (newest complete checkpoint) | never",
                      domain=one_of("auto", "never"))
    log_every: int = opt(10, "steps between log lines / metrics.jsonl rows", domain=POSITIVE)
    eval_every: int = opt(200, "steps between validation passes (0 = only at the end)",
                          domain=NON_NEGATIVE)
    eval_batches: int = opt(8, "validation batches per pass", domain=POSITIVE)
    checkpoint_every: int = opt(500, "steps between checkpoints (0 = only at the end)",
                                domain=NON_NEGATIVE)
    keep_checkpoints: int = opt(2, "newest checkpoints kept", domain=POSITIVE)
    max_nonfinite: int = opt(10, "float16: non-finite steps in a row that roll back (fewer are "
                             "skipped: the loss scale overflows now and then); others: 1 does",
                             domain=POSITIVE)
    fill_mask: list[str] = opt([], "sentences with [MASK] to complete at the end of training",
                               domain=list_of(containing("[MASK]")))
    rollback_spike: float = opt(2.0, "a loss above this times the running mean of the losses "
                                "before it is a spike and rolls back (0 = no spike test)",
                                domain=NON_NEGATIVE)
    rollback_sigmas: float = opt(6.0, "after the warm-up a spike must also exceed the running "
                                 "mean by this many running standard deviations",
                                 domain=NON_NEGATIVE)
    rollback_warmup: int = opt(20, "steps of running statistics before the sigma test applies",
                               domain=NON_NEGATIVE)
    rollback_lr_factor: float = opt(0.5, "each rollback multiplies the learning rate by this",
                                    domain=interval(0, 1, "(]"))
    max_rollbacks: int = opt(3, "rollbacks a diverging run may take before it stops (exit 1)",
                             domain=NON_NEGATIVE)

    def __post_init__(self):
        check_domains(self)
        if self.steps is None and self.tokens is None:
            raise UserError("set train.steps or train.tokens")
        end = self.batch_end or self.micro_batch
        # batch_end first: an unset batch_start takes its value, and the message must name the
        # key the user set (it said "batch_start=8" after only batch_end=8 was given).
        for name, value in (("batch_end", end), ("batch_start", self.batch_start or end)):
            if value % self.micro_batch:
                raise UserError(f"train.{name}={value} must be a multiple of "
                                f"train.micro_batch={self.micro_batch}")
        if self.batch_start is not None and self.batch_start > end:  # swapped, most likely
            raise UserError(f"train.batch_start={self.batch_start} is above train.batch_end={end}: "
                            "the ramp grows the batch from batch_start to batch_end; swap them, or "
                            "set batch_start to at most batch_end")


@dataclass(frozen=True)
class WandbConfig:
    mode: str = opt("disabled", "disabled | offline | online (online needs a valid API key)",
                    domain=one_of("disabled", "offline", "online"))
    project: str = opt("bertjax", "wandb project")
    name: str | None = opt(None, "run name (null = the run directory's name)")
    entity: str | None = opt(None, "wandb entity (team or user)")

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class InitConfig:
    checkpoint: str | None = opt(None, "start from: run dir, checkpoint dir, bundle or HF BERT dir "
                                 "(pretraining: continue from its weights when the run is new)",
                                 domain=PATH)
    tokenizer_mismatch_ok: bool = opt(False, "accept a bundle whose tokenizer.json is not the "
                                      "one its weights were exported with (its manifest says)")

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class GlueConfig:
    task: str = opt("mnli", " | ".join(GLUE_TASKS), domain=one_of(*GLUE_TASKS))
    data_dir: str | None = opt(None, "directory of original GLUE TSVs (null = the hub)",
                               domain=PATH)
    # 32 bits, as train.seed: seeds 1 and 2**32 + 1 would train the same model twice
    seeds: list[int] = opt([0], "fine-tuning seeds; results report mean, median and spread",
                           domain=list_of(NON_NEGATIVE, non_empty=True, unique=True))
    epochs: float = opt(3.0, "passes over the training set", domain=POSITIVE)
    batch_size: int = opt(32, "sequences per step", domain=POSITIVE)
    buckets: list[int] = opt([32, 64, 128], "padded lengths; the largest is the max length",
                             domain=list_of(at_least(8), non_empty=True,
                                            increasing=True))
    classifier_dropout: float = opt(0.1, "dropout before the classifier", domain=FRACTION)
    pooling: str = opt("cls", "what the pooler reads: cls (BERT: the [CLS] state) | mean (the "
                       "average of the real tokens' states)", domain=one_of("cls", "mean"))
    max_train_examples: int | None = opt(None, "use only the first N training rows",
                                         domain=POSITIVE)
    train_file: str | None = opt(None, "override the training TSV name inside data_dir",
                                 domain=PATH)
    dev_files: list[str] = opt([], "override the dev TSV names inside data_dir",
                                domain=PATHS)

    def __post_init__(self):
        check_domains(self)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    init: InitConfig = field(default_factory=InitConfig)
    glue: GlueConfig = field(default_factory=GlueConfig)


# Keys that older bertjax versions wrote into run directories and bundles, with why they went.
RETIRED = {"precision.param": "parameters and optimizer state are always float32; "
                              "precision.compute sets the activation dtype"}


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
            node.pop(name)
    return data


def _valid_keys(schema: DictConfig, dotted: str) -> list[str]:
    """Keys that exist at the level of `dotted` (e.g. 'model.hiden' -> model's field names)."""
    parent = dotted.rpartition(".")[0]
    node = OmegaConf.select(schema, parent) if parent else schema
    if not isinstance(node, DictConfig):
        return []
    return [f"{parent}.{k}" if parent else str(k) for k in node.keys()]


def _explain(e: OmegaConfBaseException, schema: DictConfig, source: str) -> UserError:
    key = e.full_key or "?"
    if isinstance(e, ConfigKeyError):
        close = difflib.get_close_matches(key, _valid_keys(schema, key), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else "; see bertjax/config.py for keys"
        return UserError(f"unknown config key '{key}' in {source}{hint}")
    if isinstance(e, ValidationError):
        node_type = OmegaConf.get_type(schema, key.rpartition(".")[0]) if "." in key else Config
        hints = {f.name: f.type for f in dataclasses.fields(node_type)} if node_type else {}
        name = key.rpartition(".")[2].split("[")[0]  # 'seeds[0]' -> 'seeds'
        expected = type_name(hints[name]) if name in hints else "another type"
        if "[" in key:
            expected = f"items of {expected}"
        value = getattr(e, "value", None)
        if isinstance(value, Node) and value._value() is None:  # `glue.seeds=null` arrives
            value = None  # as a node holding None (whose repr is 'None')
        # `key=` and `key=null` reach here as None: say so, and that this key needs a value
        got = f"{value!r}" if value is not None else "null (no value), which it cannot be: " \
            f"give {key} a value" if "'None'" in e.msg or "is not Optional" in e.msg \
            else "the given value"
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
    shown = show(value)
    if shown.startswith("(") and shown.endswith(")"):  # `glue.seeds=(0,1)`: brackets instead
        shown = shown[1:-1]
    return f"; write a list in brackets, e.g. {key}=[{shown}]"


def _unresolved(e: InterpolationResolutionError, merged: DictConfig, key: str) -> UserError:
    """An interpolation that does not resolve, named by its key and its text as written;
    OmegaConf's message would also name its internal node types."""
    # 'KeyError raised while resolving interpolation: "Environment variable ..."' -> the cause
    cause = re.sub(r"^\w+ raised while resolving interpolation: ", "", e.msg.splitlines()[0])
    cause = cause.strip('"')
    return UserError(f"{key}={_as_written(merged, key)}: {cause[:1].lower()}{cause[1:]}; refer "
                     "to an existing key (${section.key}) or a set environment variable "
                     "(${oc.env:VAR} or ${oc.env:VAR,default}), or write the value itself")


def _as_written(merged: DictConfig, key: str) -> str:
    """The value of `key` ('glue.seeds[0]' too) before interpolations resolve."""
    node = OmegaConf.to_container(merged, resolve=False)
    for part in re.findall(r"\w+", key):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return show(node)


def _plain(value: Any) -> str:
    return show(OmegaConf.to_object(value) if OmegaConf.is_config(value) else value)


def _check_sections(schema: DictConfig, other: DictConfig, source: str) -> None:
    """A scalar or list where a section belongs (`model: tiny`) is named as such; OmegaConf
    would report it against no key at all."""
    for name, value in other.items_ex(resolve=False) if isinstance(other, DictConfig) else ():
        if name in schema and isinstance(schema[name], DictConfig) and \
                not isinstance(value, DictConfig) and value is not None:
            first = next(iter(schema[name]))
            raise UserError(f"'{name}' in {source} is {_plain(value)}, but it is a section: a "
                            f"mapping of keys, e.g. '{name}:' then '  {first}: ...' on the next "
                            f"line in YAML, or {name}.{first}=... as an override")


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
    for name in _SIZE_DERIVED:
        schema.model[name] = None
    return schema


_SIZE_DERIVED = ("num_layers", "hidden_size", "num_heads", "intermediate_size")


def _yaml_mapping(read: Callable[[], str], source: str) -> DictConfig:
    """The YAML text `read()` returns, which must be a mapping of sections; anything else is
    one line."""
    try:
        text = read()
        # The document's shape first: OmegaConf would read a bare word as a key set to null.
        shape = yaml.compose(text, Loader=yaml.SafeLoader)
        data = OmegaConf.create(text)
    except (yaml.MarkedYAMLError, GrammarParseError) as e:
        raise _syntax_error(e, source, text) from None
    except Exception as e:  # unreadable text and the like
        raise UserError(f"{source} is not valid YAML ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]})") from None
    if shape is not None and not isinstance(shape, yaml.MappingNode):
        held = "a list" if isinstance(shape, yaml.SequenceNode) else f"the value {shape.value!r}"
        raise UserError(f"{source} must hold a mapping of sections (model:, data:, ...), not "
                        f"{held}; write e.g. 'train:' then '  steps: 100' on the next line")
    return data


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
    fix = "indent with spaces, not tabs" if "\t" in line else "correct the YAML there"
    return UserError(f"{source} is not valid YAML: {_yaml_place(e.problem_mark, text, '')}"
                     f"{f' ({line!r})' if line else ''}: {what}; {fix}")


def _yaml_place(mark: Any, text: str | None, prefix: str) -> str:
    """'line 2, column 9' of a yaml Mark (pure-Python or libyaml's: no common type), or ''."""
    return f"{prefix}line {mark.line + 1}, column {mark.column + 1}" if mark and text else ""


def _merge_file(merged: DictConfig, path: Path, seen: tuple[Path, ...]) -> DictConfig:
    """Merge one YAML file, after the files its `include:` names (relative to it)."""
    if path.is_dir():
        raise UserError(f"config file {path} is a directory; pass a path to a YAML file")
    if not path.is_file():
        raise _no_config_file(path, included_by=seen[-1] if seen else None)
    if path.resolve() in seen:
        raise UserError(f"{path} includes itself (through {[str(p) for p in seen]})")
    data = _yaml_mapping(lambda: path.read_text(encoding="utf-8"), str(path))
    for name in [f.name for f in dataclasses.fields(Config)]:
        if name in data and data[name] is None:  # `train:` with its keys commented out: empty
            data.pop(name)
    includes = data.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    if not OmegaConf.is_list(includes) and not isinstance(includes, list) or \
            not all(isinstance(name, str) for name in includes):
        raise UserError(f"include: in {path} must be a YAML file path or a list of them "
                        f"(relative to {path.parent}), got {_plain(includes)}")
    for name in includes:
        merged = _merge_file(merged, path.parent / name, (*seen, path.resolve()))
    return _merge(merged, _without_retired(data, str(path), strict=True), str(path))


def _no_config_file(path: Path, included_by: Path | None) -> UserError:
    """A missing YAML file, with the likelier mistake when it names an include or a key."""
    if included_by is not None:
        return UserError(f"config file {path}, named by include: in {included_by}, does not "
                         f"exist; fix that include (paths are relative to {included_by.parent})")
    sections = {f.name for f in dataclasses.fields(Config)}
    if str(path).partition(".")[0] in sections and _OVERRIDE.match(f"{path}="):
        return UserError(f"config file {path} does not exist, and as an override it lacks a "
                         f"value: write {path}=VALUE")
    return UserError(f"config file {path} does not exist{from_cwd(path)}; pass a path to a YAML "
                     "file")


def load(files: list[str | Path] = (), overrides: list[str] = ()) -> Config:
    """Defaults <- each YAML file in order <- `key=value` overrides, as a frozen `Config`."""
    merged = _schema()
    for path in map(Path, files):
        merged = _merge_file(merged, path, seen=())
    for item in overrides:
        if not _OVERRIDE.match(item):
            raise UserError(f"override {item!r} is not section.key=value (e.g. train.steps=100)")
        source = f"override {item!r}"
        if item.startswith("include="):  # read as an unknown key ("did you mean 'glue'?")
            raise UserError(f"{source}: include: works inside a YAML file; pass "
                            f"{item.partition('=')[2] or 'the file'} as another config file "
                            "instead (files merge in order, before the overrides)")
        try:
            data = OmegaConf.from_dotlist([item])
        except (yaml.MarkedYAMLError, GrammarParseError) as e:
            raise _syntax_error(e, source, text=None) from None
        merged = _merge(merged, _without_retired(data, source, True), source)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _explain(e, merged, "the merged config") from None


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


OVERRIDES_HELP = ("YAML files merge in order over the defaults, then each section.key=value "
                  "override (e.g. train.steps=100); every key, its default and its doc: "
                  "bertjax/config.py")


def asks_for_help(argv: list[str]) -> bool:
    """-h or --help anywhere on a command line that takes CONFIG [key=value ...]."""
    return any(word in ("-h", "--help") for word in argv)


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Command-line words -> (YAML files, key=value overrides). A file whose path holds an '='
    (`runs/lr=1e-3/config.yaml`) is a file: it was read as a malformed override."""
    files = [a for a in argv if "=" not in a or Path(a).is_file()]
    return files, [a for a in argv if a not in files]


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml_text(text: str, source: str) -> Config:
    """Re-read a resolved config (e.g. a checkpoint's config.yaml)."""
    data = _yaml_mapping(lambda: text, source)
    merged = _merge(_schema(), _without_retired(data, source, strict=False), source)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _explain(e, merged, source) from None
