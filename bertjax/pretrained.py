"""Load a trained model from wherever it lives, and fit it as the start of another run.

`load_pretrained(path) -> Pretrained` accepts a pretraining run directory (newest complete
checkpoint), a checkpoint step directory (`RUN/checkpoints/<step>`), a release bundle (every
sha256 in manifest.json verified, and its tokenizer the one its weights were exported with) or a
Hugging Face BERT directory. `continue_from` starts continued pretraining from one; `load_start`
and `initial_model` start GLUE fine-tuning.
"""

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path

import equinox as eqx
import jax

from bertjax import glue
from bertjax import tokenizer as tokenizer_lib
from bertjax.checkpoint import Checkpoints
from bertjax.config import Config, ModelConfig, from_yaml_text
from bertjax.errors import UserError
from bertjax.files import check_not_lfs_pointer, from_cwd, sha256_file
from bertjax.hf import hf_label_names, import_hf
from bertjax.model import Bert
from bertjax.step import abstract_state
from bertjax.weights import model_from_arrays, read_safetensors

BUNDLE_FORMAT = "bertjax-bundle"
BUNDLE_VERSION = 1
EXPECTED = ("a run directory (with checkpoints/), a checkpoint directory (RUN/checkpoints/STEP), "
            "a release bundle (manifest.json) or a Hugging Face BERT directory (config.json + "
            "model.safetensors)")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    model: Bert
    model_cfg: ModelConfig
    config: Config | None  # the full training config (None for Hugging Face directories)
    tokenizer_path: Path | None
    kind: str  # run | checkpoint | bundle | hf
    tokens_seen: int | None  # training tokens behind the weights, all phases (None: unknown)

    label_names: tuple[str, ...] = ()  # the classifier's classes by index (() when unnamed)


def _classes(model: Bert) -> int:
    return model.classifier.weight.shape[-1] if model.classifier is not None else 0


def task_label_names(model: Bert, cfg: Config) -> tuple[str, ...]:
    """The GLUE task's class names, when the model's classifier is that task's."""
    labels = tuple(glue.get_task(cfg.glue.task).labels) if cfg.glue.task else ()
    return labels if labels and len(labels) == _classes(model) else ()


# ---- the four kinds of source ----
def load_bundle(path: Path, allow_tokenizer_mismatch: bool = False) -> Pretrained:
    manifest = verify_bundle(path)
    check_tokenizer_pair(path, manifest, allow_tokenizer_mismatch)
    cfg = checkpoint_config((path / "config.yaml").read_text(), str(path / "config.yaml"),
                            "re-export the bundle with `python -m bertjax.export` or download "
                            "it again")
    arrays = read_safetensors(path / "model.safetensors")
    model = model_from_arrays(cfg.model, arrays, str(path / "model.safetensors"),
                              cfg.glue.classifier_dropout, cfg.glue.pooling)
    tokenizer = path / "tokenizer.json" if "tokenizer.json" in manifest["files"] else None
    return Pretrained(model, cfg.model, cfg, tokenizer, "bundle",
                      manifest.get("summary", {}).get("tokens_seen"),
                      task_label_names(model, cfg))


def checkpoint_config(text: str, source: str, fix: str) -> Config:
    """The config a checkpoint was saved with. Its model.vocab_size must be recorded: the
    tokenizer that resolved it in training is not at hand here, and the model cannot be built
    without it."""
    cfg = from_yaml_text(text, source)
    if cfg.model.vocab_size is None:
        raise UserError(f"{source} does not record model.vocab_size (the rows of the weights' "
                        f"vocabulary table), which a checkpoint's config always does; {fix}")
    return cfg


def _missing_bundle_fix(path: Path) -> str:
    if path.name == "best" and path.parent.name.startswith("seed"):  # a GLUE seed's best epoch
        return (f"delete {path.parent} and run the same command again to fine-tune that seed "
                "anew")
    return "copy the whole bundle directory, or export it again with `python -m bertjax.export`"


def read_manifest(path: Path) -> dict:
    """manifest.json, checked to hold every field load_bundle reads, with the right types."""
    file = path / "manifest.json"
    if not file.is_file():
        raise UserError(f"{file} is missing, so {path} is no complete release bundle; "
                        f"{_missing_bundle_fix(path)}")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        check_not_lfs_pointer(file)
        raise UserError(f"{file} is not valid JSON; re-export the bundle "
                        "with `python -m bertjax.export`") from None

    def bad(what: str) -> UserError:
        return UserError(f"{file}: {what}; re-export the bundle with `python -m bertjax.export` "
                         "or download it again")

    if not isinstance(manifest, dict):
        raise bad(f"holds a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("format_version") != BUNDLE_VERSION:
        raise UserError(f"{path} is not a {BUNDLE_FORMAT} version {BUNDLE_VERSION} (manifest says "
                        f"{manifest.get('format')} {manifest.get('format_version')}); re-export it")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("'files' (each file's sha256 and size) is missing or not an object")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and
                type(entry.get("size")) is int):
            raise bad(f"files[{name!r}] must be {{\"sha256\": text, \"size\": bytes}}, got "
                      f"{json.dumps(entry)[:80]}")
    for name in ("config.yaml", "model.safetensors"):
        if name not in files:
            raise bad(f"'files' does not list {name}")
    for key in ("summary", "heads", "tokenizer"):
        if not isinstance(manifest.get(key, {}), dict):
            raise bad(f"{key!r} is {json.dumps(manifest[key])[:40]}, not an object")
    record = manifest.get("tokenizer", {})
    if record and not (isinstance(record.get("sha256"), str) and
                       type(record.get("vocab_size")) is int and
                       isinstance(record.get("weights_sha256"), str)):
        raise bad("'tokenizer' must hold sha256, vocab_size and weights_sha256")
    return manifest


def verify_bundle(path: Path) -> dict:
    """manifest.json, with every listed file present, not an LFS pointer, and of the right
    size and sha256 (truncated and modified files get different messages)."""
    manifest = read_manifest(path)
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise UserError(f"bundle file {file} is missing; copy the whole bundle directory")
        check_not_lfs_pointer(file)
        size, digest = file.stat().st_size, sha256_file(file)
        if size < entry["size"]:
            raise UserError(f"{file} is truncated: {size} of {entry['size']} bytes (sha256 "
                            f"expected {entry['sha256']}, actual {digest}); download it again")
        if digest != entry["sha256"]:
            raise UserError(f"sha256 mismatch for {file}: expected {entry['sha256']}, actual "
                            f"{digest}; the file was modified or corrupted, download it again")
    return manifest


def check_tokenizer_pair(path: Path, manifest: dict, allow_mismatch: bool = False) -> None:
    """Refuse a bundle whose tokenizer.json is not the one its weights were exported with: the
    manifest records that pair (the tokenizer's sha256 and size, the weights' sha256), and a
    manifest re-hashed after a file was swapped no longer matches it. Ids would silently mean
    other words. Bundles exported before the record existed load as they are."""
    record, files = manifest.get("tokenizer"), manifest["files"]
    if not record or "tokenizer.json" not in files or allow_mismatch:
        return
    found = {"sha256": files["tokenizer.json"]["sha256"],  # verified against the file
             "vocab_size": tokenizer_lib.vocab_size(tokenizer_lib.load(path / "tokenizer.json")),
             "weights_sha256": files["model.safetensors"]["sha256"]}
    differ = [f"{k} {str(record[k])[:12]} recorded, {str(found[k])[:12]} found" for k in found
              if record[k] != found[k]]
    if differ:
        raise UserError(
            f"{path}: tokenizer.json and model.safetensors were not exported together "
            f"(manifest.json's 'tokenizer': {'; '.join(differ)}), so token ids would silently "
            "mean other words; use the tokenizer.json exported with these weights, or re-export "
            "the bundle. To use this pair anyway, say so: predict --allow-tokenizer-mismatch, "
            "init.tokenizer_mismatch_ok=true or load_pretrained(..., "
            "allow_tokenizer_mismatch=True)")


READS_OF_A_LIVE_RUN = 5


def restore_model(run_dir: Path, step: int | None) -> tuple[Bert, Config, dict]:
    """(model, config, meta) of an Orbax train-state checkpoint; the newest complete one when
    `step` is None."""
    if step is not None:
        return _restore_step(run_dir, step)
    for _ in range(READS_OF_A_LIVE_RUN):
        newest = _newest_step(run_dir)
        try:
            return _restore_step(run_dir, newest)
        except UserError:
            # A run still training deletes its older checkpoints as it saves new ones
            # (train.keep_checkpoints), so the newest one when we looked may go while it is read:
            # then read the newest again. One still there and still the newest is damaged.
            if _newest_step(run_dir) == newest and (run_dir / "checkpoints" / str(newest)).is_dir():
                raise
    raise UserError(f"{run_dir} is still training: its newest checkpoint was replaced while "
                    f"being read, {READS_OF_A_LIVE_RUN} times; run this again, or after the run "
                    "ends (its checkpoints are not damaged: do not delete them)")


def _newest_step(run_dir: Path) -> int:
    checkpoints = Checkpoints(run_dir)
    try:
        step = checkpoints.latest_step()
    finally:
        checkpoints.close()
    if step is None:
        raise UserError(f"{run_dir} has no complete checkpoint in checkpoints/; train first or "
                        f"pass {EXPECTED}")
    return step


def _restore_step(run_dir: Path, step: int) -> tuple[Bert, Config, dict]:
    for file in (run_dir / "checkpoints").rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile by a run training
            if file.is_file():
                check_not_lfs_pointer(file)
    checkpoints = Checkpoints(run_dir)
    try:
        meta = checkpoints.read_meta(step)
        if "config_yaml" not in meta:  # finetune.py's resume state (RUN/seedN/checkpoints)
            raise UserError(f"{run_dir} holds an unfinished GLUE fine-tuning seed's state for "
                            f"resuming, not a model; rerun its command to finish it, or pass "
                            f"{run_dir / 'best'}")
        where = run_dir / "checkpoints" / str(step)
        if not isinstance(meta["config_yaml"], str) or type(meta.get("total_steps")) is not int:
            raise UserError(f"checkpoint {where}: its meta lacks config_yaml (text) or "
                            f"total_steps (a number); delete {where} to fall back to the "
                            "checkpoint before it")
        cfg = checkpoint_config(meta["config_yaml"], f"checkpoint {where} (its meta's config)",
                                f"delete {where} to fall back to the checkpoint before it")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device)
            if isinstance(s, jax.ShapeDtypeStruct) else s, abstract_state(cfg, meta["total_steps"]))
        model = checkpoints.restore_model(step, abstract)
    finally:
        checkpoints.close()
    return model, cfg, meta


def tokenizer_of(cfg: Config, run_dir: Path) -> Path | None:
    """The tokenizer a run trained with: the run's own copy; for runs made before runs kept one,
    data.dir/tokenizer.json, else tokenizer.path."""
    for candidate in (run_dir / "tokenizer.json", Path(cfg.data.dir) / "tokenizer.json",
                      Path(cfg.tokenizer.path) if cfg.tokenizer.path else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def is_step_dir(path: Path) -> bool:
    return path.name.isdigit() and path.parent.name == "checkpoints" and (path / "meta").exists()


def load_pretrained(path: str | Path, allow_tokenizer_mismatch: bool = False) -> Pretrained:
    """Model, configs and tokenizer from a run dir, checkpoint dir, bundle or HF BERT dir.
    A bundle whose tokenizer is not the one exported with its weights is refused unless
    `allow_tokenizer_mismatch`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint path {path} does not exist{from_cwd(path)}; pass {EXPECTED}")
    if path.is_file():
        check_not_lfs_pointer(path)
        raise UserError(f"{path} is a file; pass the directory that holds it ({EXPECTED})")
    if (path / "manifest.json").is_file():
        return load_bundle(path, allow_tokenizer_mismatch)
    if (path / "config.json").is_file():
        model, model_cfg, tokenizer = import_hf(path)
        return Pretrained(model, model_cfg, None, tokenizer, "hf", None,
                          hf_label_names(path, _classes(model)))
    if (path / "checkpoints").is_dir() or is_step_dir(path):
        step = int(path.name) if is_step_dir(path) else None
        run_dir = path.parent.parent if step is not None else path
        model, cfg, meta = restore_model(run_dir, step)
        return Pretrained(model, cfg.model, cfg, tokenizer_of(cfg, run_dir),
                          "run" if step is None else "checkpoint", meta.get("tokens_seen"),
                          task_label_names(model, cfg))
    if (path / "model.safetensors").is_file():  # the weights without what describes them
        if (path / "config.yaml").is_file():
            read_manifest(path)  # a bundle without its manifest: says so
        raise UserError(f"{path} has model.safetensors but no config.json; a Hugging Face BERT "
                        "directory needs the config.json that came with its weights: download "
                        "it into the directory")
    bests = sorted(path.glob("seed*/best/manifest.json")) or \
        sorted(path.glob("best/manifest.json"))  # a GLUE run, or one of its seeds' folders
    if bests:  # a GLUE fine-tuning run: its checkpoints are one bundle per seed
        raise UserError(f"{path} holds the checkpoints of a fine-tuning run (each seed's best "
                        f"epoch as a bundle); pass one of them, e.g. {bests[0].parent}")
    if any(path.glob("seed*/checkpoints")):  # a GLUE run interrupted before a seed finished
        raise UserError(f"{path} is a GLUE fine-tuning run with no finished seed yet (only train "
                        "state for resuming); rerun its command to finish it, then pass a seed's "
                        f"best epoch, {path}/seedN/best")
    raise UserError(f"nothing recognisable in {path}: expected {EXPECTED}")


# ---- starting points: continued pretraining and GLUE fine-tuning ----
# What must agree for a checkpoint's weights to be another run's starting point.
ARCHITECTURE = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size",
                 "max_position_embeddings", "type_vocab_size", "norm")


def continue_from(model: Bert, cfg: Config, tok) -> tuple[Bert, int | None]:
    """`model` with init.checkpoint's encoder and heads: continued pretraining (a second phase at
    another seq_len, more tokens after a schedule ended, domain adaptation). The optimizer, the
    schedule and the data order start fresh; heads the checkpoint lacks keep their new init.
    Also returns the tokens the checkpoint had seen (None when it does not say: Hugging Face)."""
    source = load_pretrained(cfg.init.checkpoint, cfg.init.tokenizer_mismatch_ok)
    where = f"init.checkpoint={cfg.init.checkpoint}"
    for name in ARCHITECTURE:
        theirs, ours = getattr(source.model_cfg, name), getattr(cfg.model, name)
        if theirs != ours:
            raise UserError(f"{where} has model.{name}={theirs} but this run has {ours}; set "
                            f"model.{name}={theirs} (or model.size to the checkpoint's)")
    if source.tokenizer_path is None or \
            tokenizer_lib.load(source.tokenizer_path).get_vocab() != tok.get_vocab():
        raise UserError(f"{where} was trained with another vocabulary than {cfg.data.dir}; "
                        f"prepare a data.dir with tokenizer.path=<the checkpoint's tokenizer.json>")
    pretrained = source.model
    model = eqx.tree_at(lambda m: m.encoder, model, pretrained.encoder)
    for head in ("mlm", "pooler", "nsp"):
        if getattr(model, head) is not None and getattr(pretrained, head) is not None:
            model = eqx.tree_at(lambda m, h=head: getattr(m, h), model, getattr(pretrained, head))
    return model, source.tokens_seen


def check_tokenizer_fits(tok, where: str | Path, model: Bert, fix: str) -> None:
    """A tokenizer (`where` names it) with more tokens than `model` has vocabulary rows belongs
    to another model: its ids past the table would be clamped, silently."""
    rows = model.encoder.embeddings.word.shape[0]
    if tokenizer_lib.vocab_size(tok) > rows:
        raise UserError(f"{where} has {tokenizer_lib.vocab_size(tok)} tokens but the model's "
                        f"vocabulary has {rows} rows: they do not belong together; {fix}")


def vocab_txt_only(source: str | Path) -> str:
    """A note for messages about a directory holding vocab.txt but no tokenizer.json (a Hugging
    Face BERT saved by older transformers, or by hand): how to write the file bertjax reads."""
    path = Path(source)
    if not (path / "vocab.txt").is_file() or (path / "tokenizer.json").exists():
        return ""
    return (f"; it holds only vocab.txt, which bertjax does not read: save its tokenizer.json, "
            f"e.g. AutoTokenizer.from_pretrained('{path}').save_pretrained('{path}') with "
            "transformers")


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
                     "TOKENIZER.json to the tokenizer the checkpoint was trained with"
                     f"{vocab_txt_only(cfg.init.checkpoint)}")


def _same_file_content(a: Path, b: Path) -> bool:
    """Whether `a` is a readable file with `b`'s bytes (a missing or unreadable `a`: no)."""
    try:
        return a.is_file() and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def load_start(cfg: Config):
    """(encoder source model, model config, tokenizer) from init.checkpoint, or (None, the
    configured model, the tokenizer named by the config) for the no-pretraining baseline."""
    if cfg.init.checkpoint is not None:
        pretrained = load_pretrained(cfg.init.checkpoint, cfg.init.tokenizer_mismatch_ok)
        tok_path = pretrained.tokenizer_path or (Path(cfg.tokenizer.path)
                                                 if cfg.tokenizer.path else None)
        if cfg.tokenizer.path and pretrained.tokenizer_path is not None and \
                not _same_file_content(Path(cfg.tokenizer.path), pretrained.tokenizer_path):
            warnings.warn(f"tokenizer.path={cfg.tokenizer.path} is not used: "
                          f"{cfg.init.checkpoint} carries the tokenizer its weights were trained "
                          f"with ({tok_path}); drop tokenizer.path", stacklevel=2)
        model, model_cfg = pretrained.model, pretrained.model_cfg
    else:
        tok_path = Path(cfg.tokenizer.path) if cfg.tokenizer.path else \
            Path(cfg.data.dir) / "tokenizer.json"
        model, model_cfg = None, None
    if tok_path is None or not Path(tok_path).is_file():
        raise _no_tokenizer(cfg, tok_path)
    tok = tokenizer_lib.load(tok_path)
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
    fresh = Bert(cfg.model, key=key, mlm=False, num_labels=num_labels,
                 classifier_dropout=cfg.glue.classifier_dropout, pooling=cfg.glue.pooling)
    pooler = fresh.pooler if start.pooler is None else start.pooler
    return eqx.tree_at(lambda m: (m.encoder, m.pooler), fresh,
                       (transplant(start.encoder, fresh.encoder), pooler))


def initial_model(seed: int, start: Bert | None, cfg: Config) -> Bert:
    """The encoder under a fresh head; without a checkpoint a fresh random encoder per seed,
    so that the baseline's spread covers its initialisation too."""
    key = jax.random.key(seed)
    if start is None:
        start = Bert(cfg.model, key=jax.random.fold_in(key, 1), mlm=False)
    return with_task_head(start, cfg, glue.get_task(cfg.glue.task).num_labels,
                          jax.random.fold_in(key, 0))
