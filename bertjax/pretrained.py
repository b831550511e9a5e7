"""Load a trained model from wherever it lives: `load_pretrained(path) -> Pretrained`.

Accepts a pretraining run directory (newest complete checkpoint), a checkpoint step directory
(`RUN/checkpoints/<step>`), a release bundle (every sha256 in manifest.json verified) or a Hugging
Face BERT directory. Also holds the flat `name -> array` view of a model that bundles and hf.py use.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from bertjax.config import Config, ModelConfig
from bertjax.errors import UserError
from bertjax.model import Bert

BUNDLE_FORMAT = "bertjax-bundle"
BUNDLE_VERSION = 1
LFS_HEADER = b"version https://git-lfs.github.com/spec/v1"
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


# ---- files: LFS pointers, digests, safetensors ----
def check_not_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(LFS_HEADER))
    if head == LFS_HEADER:
        raise UserError(f"{path} is a git LFS pointer, not the file itself; fetch the real "
                        "file with `git lfs install && git lfs pull`")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays; bad files become one-line errors."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise UserError(f"{path} does not exist")
    check_not_lfs_pointer(path)
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path} is not a valid safetensors file (corrupt header or data: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        "re-download or re-export it") from None


# ---- a model as a flat dict of named arrays ----
def state_dict(model: eqx.Module) -> dict[str, np.ndarray]:
    """`{dotted tree path: array}`, e.g. `encoder.blocks.attn.qkv.weight` (stacked [layers, ..])."""
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))[0]
    return {jax.tree_util.keystr(p, simple=True, separator="."): np.asarray(x)
            for p, x in leaves if x is not None}


def load_state_dict(abstract: eqx.Module, arrays: dict[str, np.ndarray], source: str):
    """Fill `abstract` (from eqx.filter_eval_shape) with `arrays`, cast to its dtypes."""
    params, static = eqx.partition(
        abstract, lambda x: isinstance(x, jax.ShapeDtypeStruct) or eqx.is_array(x))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in leaves]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise UserError(f"{source} does not fit the model: missing {missing[:4]}, unexpected "
                        f"{extra[:4]}; it was written for a different architecture")
    values = []
    for name, (_, like) in zip(names, leaves, strict=True):
        if tuple(arrays[name].shape) != tuple(like.shape):
            raise UserError(f"{source}: {name} has shape {list(arrays[name].shape)}, the model "
                            f"needs {list(like.shape)}; the config does not match the weights")
        values.append(jax.numpy.asarray(arrays[name]).astype(like.dtype))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, values), static)


def abstract_bert(model_cfg: ModelConfig, mlm: bool, nsp: bool, num_labels: int,
                  classifier_dropout: float = 0.1, pooling: str = "cls") -> Bert:
    return eqx.filter_eval_shape(Bert, model_cfg, key=jax.random.key(0), mlm=mlm, nsp=nsp,
                                 num_labels=num_labels, classifier_dropout=classifier_dropout,
                                 pooling=pooling)


def model_from_arrays(model_cfg: ModelConfig, arrays: dict[str, np.ndarray], source: str,
                      classifier_dropout: float = 0.1, pooling: str = "cls") -> Bert:
    """A Bert with the heads that `arrays` (our names) carry."""
    num_labels = arrays["classifier.bias"].shape[0] if "classifier.bias" in arrays else 0
    abstract = abstract_bert(model_cfg, "mlm.bias" in arrays, "nsp.weight" in arrays,
                             num_labels, classifier_dropout, pooling)
    return load_state_dict(abstract, arrays, source)


# ---- the four kinds of source ----
def load_bundle(path: Path) -> Pretrained:
    from bertjax.config import from_yaml_text

    manifest = verify_bundle(path)
    cfg = from_yaml_text((path / "config.yaml").read_text(), str(path / "config.yaml"))
    arrays = read_safetensors(path / "model.safetensors")
    model = model_from_arrays(cfg.model, arrays, str(path / "model.safetensors"),
                              cfg.glue.classifier_dropout, cfg.glue.pooling)
    tokenizer = path / "tokenizer.json" if "tokenizer.json" in manifest["files"] else None
    return Pretrained(model, cfg.model, cfg, tokenizer, "bundle",
                      manifest.get("summary", {}).get("tokens_seen"))


def verify_bundle(path: Path) -> dict:
    """manifest.json, with every listed file present, not an LFS pointer, and of the right
    size and sha256 (truncated and modified files get different messages)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        check_not_lfs_pointer(path / "manifest.json")
        raise UserError(f"{path / 'manifest.json'} is not valid JSON; re-export the bundle "
                        "with `python -m bertjax.export`") from None
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("format_version") != BUNDLE_VERSION:
        raise UserError(f"{path} is not a {BUNDLE_FORMAT} version {BUNDLE_VERSION} (manifest says "
                        f"{manifest.get('format')} {manifest.get('format_version')}); re-export it")
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


def restore_model(run_dir: Path, step: int | None) -> tuple[Bert, Config, dict]:
    """(model, config, meta) of an Orbax train-state checkpoint; the newest complete one when
    `step` is None."""
    from bertjax.checkpoint import Checkpoints
    from bertjax.config import from_yaml_text
    from bertjax.pretrain import abstract_state

    for file in (run_dir / "checkpoints").rglob("*"):
        if file.is_file():
            check_not_lfs_pointer(file)
    checkpoints = Checkpoints(run_dir)
    try:
        step = checkpoints.latest_step() if step is None else step
        if step is None:
            raise UserError(f"{run_dir} has no complete checkpoint in checkpoints/; train first "
                            f"or pass {EXPECTED}")
        meta = checkpoints.read_meta(step)
        if "config_yaml" not in meta:  # finetune.py's resume state (RUN/seedN/checkpoints)
            raise UserError(f"{run_dir} holds an unfinished GLUE fine-tuning seed's state for "
                            f"resuming, not a model; rerun its command to finish it, or pass "
                            f"{run_dir / 'best'}")
        cfg = from_yaml_text(meta["config_yaml"], f"{run_dir}/checkpoints/{step} (meta)")
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


def load_pretrained(path: str | Path) -> Pretrained:
    """Model, configs and tokenizer from a run dir, checkpoint dir, bundle or HF BERT dir."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint path {path} does not exist; pass {EXPECTED}")
    if path.is_file():
        check_not_lfs_pointer(path)
        raise UserError(f"{path} is a file; pass the directory that holds it ({EXPECTED})")
    if (path / "manifest.json").is_file():
        return load_bundle(path)
    if (path / "config.json").is_file():
        from bertjax.hf import import_hf

        model, model_cfg, tokenizer = import_hf(path)
        return Pretrained(model, model_cfg, None, tokenizer, "hf", None)
    if (path / "checkpoints").is_dir() or is_step_dir(path):
        step = int(path.name) if is_step_dir(path) else None
        run_dir = path.parent.parent if step is not None else path
        model, cfg, meta = restore_model(run_dir, step)
        return Pretrained(model, cfg.model, cfg, tokenizer_of(cfg, run_dir),
                          "run" if step is None else "checkpoint", meta.get("tokens_seen"))
    bests = sorted(path.glob("seed*/best/manifest.json"))
    if bests:  # a GLUE fine-tuning run: its checkpoints are one bundle per seed
        raise UserError(f"{path} is a fine-tuning run with one checkpoint per seed; pass one of "
                        f"them, e.g. {bests[0].parent}")
    raise UserError(f"nothing recognisable in {path}: expected {EXPECTED}")
