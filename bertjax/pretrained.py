"""Load a trained model from wherever it lives.

`load_pretrained(path) -> Pretrained` accepts a pretraining run directory (newest complete
checkpoint), a checkpoint step directory (`RUN/checkpoints/<step>`), a release bundle (every
sha256 in manifest.json verified, and its tokenizer the one its weights were exported with), a
Hugging Face BERT directory, or a hub model id (downloaded, `hub_models`). starting_points.py
fits one as the start of another run.
"""

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path

import jax

from bertjax import glue_tasks, hub_models
from bertjax import tokenizer as tokenizer_lib
from bertjax.bundle import read_manifest, verify_bundle
from bertjax.checkpoint import Checkpoints, latest_step
from bertjax.config import Config, ModelConfig, from_yaml_text
from bertjax.errors import UserError
from bertjax.files import check_not_lfs_pointer, from_cwd, rate_runs
from bertjax.glue_eval import best_model_dir
from bertjax.hf import import_hf
from bertjax.hf_config import hf_label_names, hf_multi_label
from bertjax.model import Bert, num_labels
from bertjax.step import abstract_state
from bertjax.sweep_state import read_sweep
from bertjax.weights import model_from_arrays, read_safetensors

EXPECTED = ("a run directory (with checkpoints/), a checkpoint directory (RUN/checkpoints/STEP), "
            "a release bundle (manifest.json), a Hugging Face BERT directory (config.json + "
            "model.safetensors) or a Hugging Face hub model id")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    model: Bert
    model_cfg: ModelConfig
    config: Config | None  # the full training config (None for Hugging Face directories)
    tokenizer_path: Path | None
    kind: str  # run | checkpoint | bundle | hf
    tokens_seen: int | None  # training tokens behind the weights, all phases (None: unknown)
    label_names: tuple[str, ...] = ()  # the classifier's classes by index (() when unnamed)
    multi_label: bool = False  # a Hugging Face multi-label classifier: a sigmoid per class
    source: str = ""  # the path or hub id it was loaded from, as given (for messages)

    def tokenizer(self):
        """The tokenizers.Tokenizer its weights were trained with (what predict's functions
        take), checked against the model's vocabulary as predict's CLI checks it."""
        if self.tokenizer_path is None:
            raise UserError(f"{self.source} carries no tokenizer (tokenizer.json, or a Hugging "
                            "Face directory's vocab.txt); put the one its weights were trained "
                            "with beside them")
        tok = load_tokenizer(self.tokenizer_path, self.kind, self.source)
        check_tokenizer_fits(tok, self.tokenizer_path, self.model,
                             "use the tokenizer saved with the checkpoint")
        return tok


def fine_tune_config(pretrained: Pretrained) -> Config | None:
    """The GLUE fine-tune's config the checkpoint records (None: a pretraining run's, or a
    Hugging Face directory, which records none)."""
    cfg = pretrained.config
    return cfg if cfg is not None and cfg.train.task == "glue" else None


def _task_label_names(model: Bert, cfg: Config) -> tuple[str, ...]:
    """The GLUE task's class names, when the model's classifier is that task's."""
    labels = tuple(glue_tasks.get_task(cfg.glue.task).labels) if cfg.glue.task else ()
    return labels if labels and len(labels) == num_labels(model) else ()


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
                      _task_label_names(model, cfg))


def checkpoint_config(text: str, source: str, fix: str) -> Config:
    """The config a checkpoint was saved with. Its model.vocab_size must be recorded: the
    tokenizer that resolved it in training is not at hand here, and the model cannot be built
    without it."""
    cfg = from_yaml_text(text, source)
    if cfg.model.vocab_size is None:
        raise UserError(f"{source} does not record model.vocab_size (the rows of the weights' "
                        f"vocabulary table), which a checkpoint's config always does; {fix}")
    return cfg


def check_tokenizer_pair(path: Path, manifest: dict, allow_mismatch: bool = False) -> None:
    """Refuse a bundle whose tokenizer.json is not the one its weights were exported with: the
    manifest records that pair (the tokenizer's sha256 and size, the weights' sha256), and a
    manifest re-hashed after a file was swapped no longer matches it. Ids would silently mean
    other words. Bundles exported before the record existed load as they are."""
    record, files = manifest.get("tokenizer"), manifest["files"]
    if not record or "tokenizer.json" not in files or allow_mismatch:
        return
    found = {"sha256": files["tokenizer.json"]["sha256"],  # verified against the file
             "vocab_size": tokenizer_lib.vocab_size(
                 load_tokenizer(path / "tokenizer.json", "bundle", path)),
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


def load_tokenizer(path: Path, kind: str | None, source: str | Path | None):
    """The tokenizer.json at `path` that came with the `kind` of checkpoint at `source` (None: it
    did not, so tokenizer.path named it). A damaged one says how to get that file back: the
    default fix, setting tokenizer.path, is a training key that means nothing to predict."""
    if kind is None:
        return tokenizer_lib.load(path)
    fix = {"hf": f"download {source}'s tokenizer.json again",
           "bundle": f"download the bundle {source} again, or export it again"}.get(
        kind, "replace it with a copy of the tokenizer.json the run was trained with")
    return tokenizer_lib.load(path, fix=fix)


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
    step = latest_step(run_dir)
    if step is None:
        raise UserError(f"{run_dir} has no complete checkpoint in checkpoints/; train first or "
                        f"pass {EXPECTED}")
    return step


def _restore_step(run_dir: Path, step: int) -> tuple[Bert, Config, dict]:
    # In path order: a clone without `git lfs pull` holds a pointer for every array file, and
    # the one named was whichever the file system listed first.
    for file in sorted((run_dir / "checkpoints").rglob("*")):
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile by a run training
            if file.is_file():
                check_not_lfs_pointer(file)
    checkpoints = Checkpoints(run_dir, read_only=True)
    try:
        meta = checkpoints.read_meta(step)
        if "config_yaml" not in meta:  # seed_run.py's resume state (RUN/seedN/checkpoints)
            raise UserError(f"{run_dir} holds an unfinished GLUE fine-tuning seed's state for "
                            f"resuming, not a model; rerun its command to finish it, or pass "
                            f"{run_dir / 'best'}")
        where = run_dir / "checkpoints" / str(step)
        if not isinstance(meta["config_yaml"], str):
            raise UserError(f"checkpoint {where}: its meta's config_yaml is not text; delete "
                            f"{where} to fall back to the checkpoint before it")
        cfg = checkpoint_config(meta["config_yaml"], f"checkpoint {where} (its meta's config)",
                                f"delete {where} to fall back to the checkpoint before it")
        device = jax.sharding.make_single_device_sharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device)
            if isinstance(s, jax.ShapeDtypeStruct) else s, abstract_state(cfg))
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


def check_checkpoint_path(path: str | Path) -> Path:
    """`path` if it exists; else, for a name shaped like a Hugging Face hub id
    (`bert-base-uncased`, `google-bert/bert-base-uncased`), that model's local snapshot,
    downloaded when missing (`hub_models`); else a UserError."""
    path = Path(path)
    if path.exists():
        return path
    not_local = f"checkpoint path {path} does not exist{from_cwd(path)}"
    if hub_models.looks_like_hub_id(path):
        return hub_models.model_dir(str(path), not_local)
    raise UserError(f"{not_local}; pass {EXPECTED}")


def check_weights_fetched(path: Path) -> None:
    """A checkout without `git lfs pull` holds pointers where a bundle's weights belong
    (checkpoints/, .gitattributes): said before anything is prepared or written, not after."""
    if path.is_dir():
        for file in sorted(path.iterdir()):
            if file.suffix in (".safetensors", ".bin", ".msgpack") and file.is_file():
                check_not_lfs_pointer(file)


def load_pretrained(path: str | Path, allow_tokenizer_mismatch: bool = False) -> Pretrained:
    """Model, configs and tokenizer from a run dir, checkpoint dir, bundle or HF BERT dir
    (`.tokenizer()` loads the tokenizer). A bundle whose tokenizer is not the one exported with
    its weights is refused unless `allow_tokenizer_mismatch`."""
    loaded = _load(check_checkpoint_path(path), allow_tokenizer_mismatch)
    return dataclasses.replace(loaded, source=str(path))


def _load(path: Path, allow_tokenizer_mismatch: bool) -> Pretrained:
    if path.is_file():
        check_not_lfs_pointer(path)
        raise UserError(f"{path} is a file; pass the directory that holds it ({EXPECTED})")
    if (path / "manifest.json").is_file():
        return load_bundle(path, allow_tokenizer_mismatch)
    if (path / "config.json").is_file():
        model, model_cfg, tokenizer = import_hf(path)
        return Pretrained(model, model_cfg, None, tokenizer, "hf", None,
                          hf_label_names(path, num_labels(model)),
                          hf_multi_label(path, num_labels(model)))
    if (path / "checkpoints").is_dir() or is_step_dir(path):
        step = int(path.name) if is_step_dir(path) else None
        run_dir = path.parent.parent if step is not None else path
        model, cfg, meta = restore_model(run_dir, step)
        return Pretrained(model, cfg.model, cfg, tokenizer_of(cfg, run_dir),
                          "run" if step is None else "checkpoint", meta.get("tokens_seen"),
                          _task_label_names(model, cfg))
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
                        f"epoch as a bundle); pass one of them, e.g. "
                        f"{fine_tune_example(path, bests)}")
    if any(path.glob("seed*/checkpoints")):  # a GLUE run interrupted before a seed finished
        raise UserError(f"{path} is a GLUE fine-tuning run with no finished seed yet (only train "
                        "state for resuming); rerun its command to finish it, then pass a seed's "
                        f"best epoch, {path}/seedN/best")
    if swept := sweep_models(path):
        raise UserError(f"{path} holds a learning-rate sweep (a fine-tuning run per rate, "
                        f"lr<rate>/); pass one of its models, e.g. {sweep_example(path, swept)}")
    raise UserError(f"nothing recognisable in {path}: expected {EXPECTED}")


def fine_tune_example(path: Path, bests: list[Path]) -> str:
    """The model of GLUE run `path` to name as an example: its best seed's (the one that wrote
    the submission files), by its results.json, said as such; else the first seed's."""
    try:
        model = best_model_dir(path, json.loads((path / "results.json").read_bytes())["seeds"])
    except (OSError, ValueError, TypeError, KeyError):  # none yet, or damaged: no best known
        return str(bests[0].parent)
    if not (model / "manifest.json").is_file():
        return str(bests[0].parent)
    return f"{model} (the best seed's, which wrote the submission files)"


def sweep_models(path: Path) -> list[Path]:
    """The best-epoch bundles (seedN/best/) of a learning-rate sweep's runs in `path`."""
    return [manifest.parent for run in rate_runs(path)
            for manifest in sorted(run.glob("seed*/best/manifest.json"))]


def sweep_example(path: Path, swept: list[Path]) -> str:
    """The model of sweep `path` to name as an example: the best its sweep.json names, said as
    such (and why that may no longer hold: an interrupted sweep), else its first."""
    state = read_sweep(path)
    if state is None or state.best_model is None or not state.best_model.is_dir():
        return str(swept[0])
    if state.problem:
        return f"{state.best_model} (sweep.json's best, but {state.problem})"
    return f"{state.best_model} (the best rate's best seed)"


def check_tokenizer_fits(tok, where: str | Path, model: Bert, fix: str) -> None:
    """A tokenizer (`where` names it) with more tokens than `model` has vocabulary rows belongs
    to another model: its ids past the table would be clamped, silently (refused). One far
    smaller most likely does too (a warning: nothing breaks, the predictions mean nothing)."""
    rows, tokens = model.encoder.embeddings.word.shape[0], tokenizer_lib.vocab_size(tok)
    if tokens > rows:
        raise UserError(f"{where} has {tokens} tokens but the model's vocabulary has {rows} "
                        f"rows: they do not belong together; {fix}")
    # A table is padded past its tokenizer only to align its rows (30522 -> 30528 or 30592),
    # never by hundreds: a tokenizer that much smaller most likely belongs to another model.
    if rows - tokens >= 128:
        warnings.warn(f"{where} has {tokens} tokens but the model's vocabulary has {rows} rows; "
                      f"if it is not the model's own tokenizer, {fix}", stacklevel=2)
