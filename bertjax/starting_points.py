"""Starting points: a trained model fitted as the start of another run.

`continue_from` puts init.checkpoint's encoder and heads into a fresh pretraining model
(continued pretraining); `load_start` reads the encoder and tokenizer a GLUE fine-tune starts
from, and `initial_model` puts it under a fresh task head for each seed (a random encoder for
the no-pretraining baseline). Every source kind load_pretrained reads can be a starting point.
"""

import dataclasses
import warnings
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from bertjax import glue_tasks
from bertjax import tokenizer as tokenizer_lib
from bertjax.config import SIZE_DERIVED, Config, ModelConfig
from bertjax.errors import UserError
from bertjax.hub_models import file_of_tokenizer_path
from bertjax.model import Bert, new_bert
from bertjax.pretrained import Pretrained, load_pretrained, load_tokenizer
from bertjax.processes import same_on_every_process

# What must agree for a checkpoint's weights to be another run's starting point.
ARCHITECTURE = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size",
                 "max_position_embeddings", "type_vocab_size", "norm")
# What else a checkpoint's weights were trained to compute with. The weights fit either value,
# so continued pretraining takes this run's, and says when they differ.
COMPUTES_WITH = ("gelu", "layer_norm_eps")
# What continue_from says of a head the checkpoint lacks.
HEAD_NAMES = {"mlm": "MLM head", "pooler": "pooler", "nsp": "NSP/SOP head"}
# The model keys a fine-tune takes from its config; every other one is the checkpoint's.
RUN_KEYS = ("dropout", "attention_dropout", "attention", "scan_layers", "remat")


def continue_from(model: Bert, cfg: Config, tok) -> tuple[Bert, int | None]:
    """`model` with init.checkpoint's encoder and heads: continued pretraining (a second phase at
    another seq_len, more tokens after a schedule ended, domain adaptation). The optimizer, the
    schedule and the data order start fresh; heads the checkpoint lacks keep their new init.
    Also returns the tokens the checkpoint had seen (None when it does not say: Hugging Face)."""
    source = load_pretrained(cfg.init.checkpoint, cfg.init.tokenizer_mismatch_ok)
    where = f"init.checkpoint={cfg.init.checkpoint}"
    same_weights_on_every_process(source.model, where)
    # The vocabulary first: this run's model.vocab_size comes from its tokenizer, so another
    # tokenizer shows as another vocab_size too, and setting that would only meet this refusal.
    if source.tokenizer_path is None or \
            load_tokenizer(source.tokenizer_path, source.kind, cfg.init.checkpoint).get_vocab() \
            != tok.get_vocab():
        theirs = source.tokenizer_path or "<the checkpoint's tokenizer.json>"
        raise UserError(f"{where} was trained with another vocabulary than {cfg.data.dir}; "
                        f"prepare another data.dir with tokenizer.path={theirs}")
    positions = source.model_cfg.max_position_embeddings
    if positions < cfg.data.seq_len:
        # "set model.max_position_embeddings=N" alone only met resolve()'s seq_len refusal.
        raise UserError(f"{where} has {positions} learned positions, fewer than data.seq_len="
                        f"{cfg.data.seq_len}; its position table is continued as it is: set "
                        f"data.seq_len to at most {positions} and model.max_position_embeddings="
                        f"{positions}")
    for name in ARCHITECTURE:
        theirs, ours = getattr(source.model_cfg, name), getattr(cfg.model, name)
        if theirs != ours:
            by_size = " (or model.size to the checkpoint's)" if name in SIZE_DERIVED else ""
            raise UserError(f"{where} has model.{name}={theirs} but this run has {ours}; set "
                            f"model.{name}={theirs}{by_size}")
    warn_other_function(source.model_cfg, cfg.model, where)
    pretrained = source.model
    # The checkpoint's arrays in this run's modules: its static fields (dropout rates, remat,
    # scan) are its own config's, and would silently override this run's.
    fresh = []
    for part in ("encoder", "mlm", "pooler", "nsp"):
        if getattr(model, part) is not None and getattr(pretrained, part) is not None:
            model = eqx.tree_at(lambda m, p=part: getattr(m, p), model,
                                transplant(getattr(pretrained, part), getattr(model, part)))
        elif getattr(model, part) is not None:
            fresh.append(HEAD_NAMES[part])
    if fresh:  # a GLUE classifier has no MLM head: its transform was random, unsaid
        warnings.warn(f"{where} has no {' or '.join(fresh)}: this run initialises "
                      f"{'it' if len(fresh) == 1 else 'them'} at random", stacklevel=2)
    warn_other_pair_objective(source, cfg, where)
    return model, source.tokens_seen


def warn_other_pair_objective(source: Pretrained, cfg: Config, where: str) -> None:
    """NSP and SOP heads have one shape and two meanings (class 0: the second segment follows
    the first / the segments are in order): continued pretraining from the other objective's
    head took its weights without a word. A Hugging Face pretraining head is NSP's."""
    if cfg.data.objective == "mlm" or source.model.nsp is None:
        return
    theirs = source.config.data.objective if source.config is not None else "mlm+nsp"
    if theirs != cfg.data.objective:
        warnings.warn(f"{where}'s pair head was trained for data.objective={theirs}; this run's "
                      f"{cfg.data.objective} head starts from its weights, whose two classes "
                      "meant other things", stacklevel=3)


def warn_other_function(theirs: ModelConfig, ours: ModelConfig, where: str) -> None:
    """Say where continued pretraining computes with another GELU or LayerNorm epsilon than the
    checkpoint was trained with: the config's default (the exact GELU) silently replaced a
    model.gelu=tanh checkpoint's."""
    changed = [name for name in COMPUTES_WITH if getattr(theirs, name) != getattr(ours, name)]
    if changed:
        warnings.warn(f"{where} was trained with "
                      f"{', '.join(f'model.{n}={getattr(theirs, n)}' for n in changed)}, but "
                      f"this run computes with {', '.join(f'{getattr(ours, n)}' for n in changed)}"
                      f"; set {' '.join(f'model.{n}={getattr(theirs, n)}' for n in changed)} to "
                      "continue as it was trained", stacklevel=2)


def warn_unused_model_keys(configured: ModelConfig, checkpoint: ModelConfig, where: str) -> None:
    """Say which model keys a fine-tune's config sets (to other than their defaults) that the
    checkpoint's architecture replaces: model.gelu=tanh (for cuBLAS's GELU epilogue) was
    dropped without a word, the run's config.yaml saying exact."""
    default = ModelConfig()
    unused = [f.name for f in dataclasses.fields(ModelConfig)
              if f.name not in (*RUN_KEYS, "size")
              and getattr(configured, f.name) not in (getattr(checkpoint, f.name),
                                                      getattr(default, f.name))]
    if configured.size != default.size and set(unused) & set(SIZE_DERIVED):
        unused.insert(0, "size")  # the key the config most likely set them by
    if unused:
        warnings.warn(f"{', '.join(f'model.{n}={getattr(configured, n)}' for n in unused)} not "
                      f"used: {where} decides the architecture (its "
                      f"{', '.join(f'model.{n}={getattr(checkpoint, n)}' for n in unused)}); "
                      "drop them (a fine-tune takes only model.dropout, attention_dropout, "
                      "attention, scan_layers and remat from its config)", stacklevel=2)


def same_weights_on_every_process(model: Bert, where: str) -> None:
    """Refuse weights that differ between processes (a collective). Each host reads `where` from
    its own path (hosts with their own disks, a hub model downloaded by each at another
    revision), and each device's share of the parameters comes from its own host's copy
    (`sharding.place`): the run would train a silent mix of models. Compared by content."""
    local = (x for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))
             if getattr(x, "is_fully_addressable", True))  # a global one: from shared storage
    if not same_on_every_process(np.asarray(x).tobytes() for x in local):
        raise UserError(f"the processes loaded different weights from {where}: give every host "
                        "the same files (a copy of one checkpoint, the same hub revision)")


def _no_tokenizer(cfg: Config, tok_path: Path | None) -> UserError:
    if cfg.init.checkpoint is None:  # most often the front door run without a checkpoint
        return UserError(f"no init.checkpoint given and no tokenizer at {tok_path}: pass "
                         "init.checkpoint=PATH (a pretraining run, checkpoint, release bundle "
                         "or Hugging Face BERT directory) to fine-tune it, or tokenizer.path="
                         "TOKENIZER.json to train the random-init baseline")
    where = f"init.checkpoint={cfg.init.checkpoint}"
    if tok_path is not None:
        return UserError(f"tokenizer.path={tok_path} is not a file, and {where} carries no "
                         "tokenizer.json of its own; set tokenizer.path to the tokenizer.json "
                         "the checkpoint was trained with")
    return UserError(f"{where} carries no tokenizer.json (looked in it, and for a run also in "
                     "its data.dir) and tokenizer.path is not set; set tokenizer.path="
                     "TOKENIZER.json to the tokenizer the checkpoint was trained with")


def _same_file_content(a: Path, b: Path) -> bool:
    """Whether `a` is a readable file with `b`'s bytes (a missing or unreadable `a`: no)."""
    try:
        return a.is_file() and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def load_start(cfg: Config):
    """(encoder source model, model config, tokenizer) from init.checkpoint, or (None, the
    configured model, the tokenizer named by the config) for the no-pretraining baseline."""
    given = file_of_tokenizer_path(Path(cfg.tokenizer.path)) if cfg.tokenizer.path else None
    if cfg.init.checkpoint is not None:
        pretrained = load_pretrained(cfg.init.checkpoint, cfg.init.tokenizer_mismatch_ok)
        same_weights_on_every_process(pretrained.model, f"init.checkpoint={cfg.init.checkpoint}")
        tok_path = pretrained.tokenizer_path or given
        if given is not None and pretrained.tokenizer_path is not None and \
                not _same_file_content(given, pretrained.tokenizer_path):
            warnings.warn(f"tokenizer.path={cfg.tokenizer.path} is not used: "
                          f"{cfg.init.checkpoint} carries the tokenizer its weights were trained "
                          f"with ({tok_path}); drop tokenizer.path", stacklevel=2)
        model, model_cfg = pretrained.model, pretrained.model_cfg
        warn_unused_model_keys(cfg.model, model_cfg, f"init.checkpoint={cfg.init.checkpoint}")
        came_with = pretrained.kind if pretrained.tokenizer_path else None
    else:
        tok_path = given or Path(cfg.data.dir) / "tokenizer.json"
        model, model_cfg, came_with = None, None, None
    if tok_path is None or not Path(tok_path).is_file():
        raise _no_tokenizer(cfg, tok_path)
    tok = load_tokenizer(tok_path, came_with, cfg.init.checkpoint)
    vocab = tokenizer_lib.vocab_size(tok)
    if model_cfg is None:
        model_cfg = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or vocab)
    if vocab > model_cfg.vocab_size:
        raise UserError(f"the tokenizer {tok_path} has {vocab} tokens but the checkpoint's "
                        f"vocabulary has {model_cfg.vocab_size}: they do not belong together; "
                        "use the tokenizer saved with the checkpoint")
    return model, model_cfg, tok


def transplant(source, target):
    """`target`'s structure and static fields (dropout rates, scan, remat) with `source`'s
    arrays: how a checkpoint's weights meet the fine-tuning config."""
    leaves, structure = jax.tree.leaves(source), jax.tree.structure(target)
    if len(leaves) != structure.num_leaves:
        raise UserError("the checkpoint's encoder does not match the configured model")
    return jax.tree.unflatten(structure, leaves)


def with_task_head(start: Bert, cfg: Config, num_labels: int, key) -> Bert:
    """The pretrained encoder (and pooler, when the checkpoint has one: NSP or a GLUE model)
    under a fresh classifier or regression head."""
    fresh = new_bert(cfg.model, key=key, mlm=False, num_labels=num_labels,
                     classifier_dropout=cfg.glue.classifier_dropout, pooling=cfg.glue.pooling)
    pooler = fresh.pooler if start.pooler is None else start.pooler
    return eqx.tree_at(lambda m: (m.encoder, m.pooler), fresh,
                       (transplant(start.encoder, fresh.encoder), pooler))


def initial_model(seed: int, start: Bert | None, cfg: Config) -> Bert:
    """The encoder under a fresh head; without a checkpoint a fresh random encoder per seed,
    so that the baseline's spread covers its initialisation too."""
    key = jax.random.key(seed)
    if start is None:
        start = new_bert(cfg.model, key=jax.random.fold_in(key, 1), mlm=False)
    return with_task_head(start, cfg, glue_tasks.get_task(cfg.glue.task).num_labels,
                          jax.random.fold_in(key, 0))
