"""Release bundles: `python -m bertjax.export RUN_DIR OUT_DIR [--dtype float32|bfloat16] [--force]`;
Hugging Face directories: `python -m bertjax.export CHECKPOINT OUT_DIR --format hf [--force]`.

A bundle is a directory: model.safetensors (our parameter names, e.g.
`encoder.blocks.attn.qkv.weight`, stacked layers kept stacked), config.yaml, tokenizer.json and
manifest.json (format version, sha256 and size of every file, the weights + tokenizer pair,
parameter count, training summary), written to a temporary directory and renamed when complete
(a full disk leaves nothing behind); `load_pretrained` verifies it. --force replaces a previous
bundle only (with --format hf, a previous Hugging Face directory only): never the run, a
directory holding it, or a directory that is not such an export.

`--format hf` writes what `transformers` loads (bertjax.hf.export_hf) from anything
`load_pretrained` reads: a pretraining run or checkpoint, or a bundle such as a GLUE seed's
`best/`; the model's heads pick the class (see `hf_kind`).
"""

import json
import os
import re
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer

from bertjax import __version__
from bertjax import config as config_lib
from bertjax import tokenizer as tokenizer_lib
from bertjax.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
from bertjax.config import Config
from bertjax.errors import UserError, cli
from bertjax.files import ArgParser, not_a_dir, path_argument, sha256_file
from bertjax.hf import export_hf
from bertjax.model import Bert, num_labels, param_count
from bertjax.output_dirs import check_output_dir, staged_dir
from bertjax.pretrained import (
    check_tokenizer_fits,
    fine_tune_example,
    load_pretrained,
    restore_model,
    sweep_example,
    sweep_models,
    tokenizer_of,
)
from bertjax.weights import state_dict

DTYPES = ("float32", "bfloat16")
FORMATS = ("bundle", "hf")
USAGE = ("usage: python -m bertjax.export RUN_DIR OUT_DIR [--dtype float32|bfloat16] [--force] "
         "[--tokenizer PATH], or CHECKPOINT OUT_DIR --format hf [--force] [--tokenizer PATH]")
# What --force may replace: a directory holding a bundle's manifest (or, --format hf, a Hugging
# Face directory's config.json), never anything else.
MARKER, KIND = "manifest.json", "release bundle"
HF_MARKER, HF_KIND = "config.json", "Hugging Face directory"


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")


def tokenizer_for(model: Bert, given: Tokenizer | None, path: str | Path | None,
                  own: Path | None, missing: str) -> Path:
    """The tokenizer.json to export with `model`: `path`, loaded already as `given` when the user
    passed --tokenizer, else `own`, the one found with the source (None: `missing` is the
    error). It must fit the model's vocabulary: a release bundle holding a larger one was
    written (exit 0), and predict refused it only when used. A --tokenizer with another
    vocabulary than the source's own is exported, but said: the export records the pair as the
    weights' own, so no later check would catch it."""
    path = path or own
    if path is None:
        raise UserError(missing)
    tok = given if given is not None else tokenizer_lib.load(
        path, fix="pass --tokenizer PATH to the tokenizer.json the model was trained with")
    where = f"--tokenizer {path}" if given is not None else f"the tokenizer {path}"
    check_tokenizer_fits(tok, where, model, "pass the tokenizer.json the model was trained "
                         "with" + (" (or drop --tokenizer)" if given else " with --tokenizer"))
    if given is not None and own is not None and _vocabulary(own) not in (None,
                                                                          given.get_vocab()):
        warnings.warn(f"--tokenizer {path} has another vocabulary than {own}, the tokenizer "
                      "found with the weights; the export pairs the weights with --tokenizer "
                      "(drop it to export the weights' own)", stacklevel=2)
    return Path(path)


def _vocabulary(path: Path) -> dict | None:
    """A tokenizer's vocabulary; None when it is damaged (the reason to pass --tokenizer)."""
    try:
        return tokenizer_lib.load(path).get_vocab()
    except UserError:
        return None


def check_tokenizer_file(path: str | Path, what: str) -> Tokenizer:
    """The tokenizer.json at `path` (`what`: how the user gave it), checked before it is copied:
    an error about the copy would name the staging directory instead of the user's file."""
    return tokenizer_lib.load(path, what,
                              "pass --tokenizer PATH to a tokenizer.json or BERT vocab.txt")


def _write_tokenizer(tokenizer, path: Path) -> Tokenizer | None:
    """`tokenizer`: a `tokenizers.Tokenizer`, a path to tokenizer.json, or None (no file).
    Returns the tokenizer written."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "to_str"):
        path.write_text(tokenizer.to_str(pretty=True))
        return tokenizer
    tok = check_tokenizer_file(tokenizer, "tokenizer")
    path.write_bytes(tokenizer_lib.file_bytes(tokenizer, tok))
    return tok


def save_bundle(model: Bert, cfg: Config, tokenizer, out_dir: str | Path, *,
                summary: dict | None = None, dtype: str = "float32", force: bool = True,
                key: str = "out_dir") -> Path:
    """Write `model` (any heads) with its config and tokenizer as a release bundle.

    `force=True` (the library default) replaces an existing bundle, as fine-tuning does when a
    better epoch arrives, but never a directory of something else; the CLI asks for --force.
    `key`: how errors name `out_dir`."""
    check_dtype(dtype)
    out_dir = Path(out_dir)
    target = np.dtype(jnp.dtype(dtype))
    arrays = {k: np.ascontiguousarray(v.astype(target) if jnp.issubdtype(v.dtype, jnp.floating)
                                      else v) for k, v in state_dict(model).items()}
    heads = {"mlm": model.mlm is not None, "nsp": model.nsp is not None,
             "num_labels": num_labels(model)}
    with staged_dir(out_dir, force, key=key, marker=MARKER, kind=KIND) as tmp:
        # One metadata key: safetensors writes them in hash order, which changes from call to
        # call, and the same weights must give the same bytes (the manifest records the dtype).
        save_file(arrays, str(tmp / "model.safetensors"), metadata={"format": BUNDLE_FORMAT})
        (tmp / "config.yaml").write_text(config_lib.to_yaml(cfg))
        tok = _write_tokenizer(tokenizer, tmp / "tokenizer.json")
        files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
                 for p in sorted(tmp.iterdir())}
        manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
                    "bertjax_version": __version__, "dtype": dtype,
                    "parameters": param_count(model), "norm": cfg.model.norm,
                    "heads": heads, "files": files, "tokenizer": _pair(tok, files),
                    "summary": summary or {}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _pair(tok: Tokenizer | None, files: dict) -> dict:
    """What binds the weights to their tokenizer (pretrained.check_tokenizer_pair): the
    tokenizer's sha256 and size, and the weights' sha256 ({} without a tokenizer)."""
    if tok is None:
        return {}
    vocab = tokenizer_lib.vocab_size(tok)
    return {"sha256": files["tokenizer.json"]["sha256"], "vocab_size": vocab,
            "weights_sha256": files["model.safetensors"]["sha256"]}


def training_summary(run_dir: Path, meta: dict) -> dict:
    """Step, tokens seen (all phases; tokens_before: earlier phases', None when unknown) and,
    from results.json when present, the final validation metrics."""
    summary = {"step": meta["step"], "total_steps": meta.get("total_steps"),
               "tokens_seen": meta.get("tokens_seen"), "tokens_before": meta.get("tokens_before"),
               "validation": None}
    results = run_dir / "results.json"
    if results.is_file():
        try:
            data = json.loads(results.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{results} is not valid JSON; fix or delete it") from None
        summary["validation"] = data.get("validation")
        summary["validation_step"] = data.get("steps")
    return summary


def _not_a_run(path: Path) -> str:
    """What to do with a directory that a release bundle is not made from: a bundle or a GLUE
    run's seed is one already (the user wanted a copy, or a transformers directory)."""
    # RUN/checkpoints/50, or RUN/checkpoints (Orbax names each step's directory by its number).
    step = path.parent.name == "checkpoints" and path.name.isdigit()
    run = path.parent.parent if step else path.parent
    if step or (path.name == "checkpoints" and any(p.name.isdigit() for p in path.iterdir())):
        what = f"checkpoint {path.name} of" if step else "the checkpoints of"
        return (f"it is {what} the pretraining run {run}: pass {run} (export takes its newest "
                "complete checkpoint)")
    bests = sorted(path.glob("seed*/best/manifest.json")) or \
        sorted(path.glob("manifest.json")) or sorted(path.glob("best/manifest.json"))
    swept = sweep_models(path)
    if not bests and not swept:
        return "pass a pretraining run directory (train.run_dir)"
    if not bests:
        what = ("a GLUE learning-rate sweep: its runs' best epochs are release bundles already, "
                f"e.g. {sweep_example(path, swept)}")
    elif bests[0].parent == path:
        what = "a release bundle already"
    else:
        what = ("a GLUE fine-tuning run: its best epochs are release bundles already "
                f"(e.g. {fine_tune_example(path, bests)})")
    return (f"it is {what}: use or copy it as it is, or convert it for transformers with "
            "--format hf (bundles are made from pretraining runs)")


def export_run(run_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32",
               force: bool = False, tokenizer: str | Path | None = None) -> Path:
    """The newest complete checkpoint of a pretraining run -> a release bundle."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} {not_a_dir(run_dir)}; pass a pretraining run "
                        "directory (train.run_dir, holding checkpoints/)")
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir} has no checkpoints/ directory; {_not_a_run(run_dir)}")
    check_dtype(dtype)
    # Bad paths fail before the (slow) restore.
    out_dir = check_not_the_run(run_dir, Path(out_dir))
    out_dir = check_output_dir(out_dir, force, "OUT_DIR", MARKER, KIND)
    given = None if tokenizer is None else check_tokenizer_file(tokenizer, "--tokenizer")
    model, cfg, meta = restore_model(run_dir, None)
    tokenizer = tokenizer_for(
        model, given, tokenizer, tokenizer_of(cfg, run_dir),
        f"no tokenizer found in {run_dir} or at {Path(cfg.data.dir) / 'tokenizer.json'} (the "
        "run's data.dir, relative to the current directory); pass --tokenizer PATH")
    return save_bundle(model, cfg, tokenizer, out_dir, summary=training_summary(run_dir, meta),
                       dtype=dtype, force=force, key="OUT_DIR")


def check_not_the_run(run_dir: Path, out_dir: Path) -> Path:
    """`out_dir`, unless it is the run (or checkpoint) being exported or a directory holding it:
    writing the export there would replace it (links and relative paths resolved)."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run:
        raise UserError(f"OUT_DIR={out_dir} is the directory being exported; choose an empty "
                        "or new directory for the export, or a previous one")
    if out in run.parents:
        raise UserError(f"OUT_DIR={out_dir} contains the directory {run_dir} being exported, "
                        "which writing the export there would delete; choose an empty or new "
                        "directory, or a previous export")
    # A run owns its checkpoints/ (a GLUE run: each seedN/checkpoints/): a folder with a step's
    # name there is taken for a broken checkpoint (resume and export then fail), and Orbax or a
    # fine-tune starting over deletes old checkpoints with whatever they hold.
    managed = next((p for p in (out, *out.parents) if p.name == "checkpoints" and (
        p.parent == run or (p.parent / "config.yaml").is_file()
        or re.fullmatch(r"seed\d+", p.parent.name))), None)
    if managed is not None:
        raise UserError(f"OUT_DIR={out_dir} lies inside {managed}, the checkpoints a run "
                        "manages (a step-named folder there reads as a broken checkpoint, and old "
                        "ones are deleted with what they hold); choose a directory outside it")
    return out_dir


def hf_kind(model: Bert, norm: str) -> tuple[str, str]:
    """(bertjax.hf kind, what is left out) for a model's heads: a GLUE classifier is a sequence
    classifier; MLM + NSP/SOP is BertForPreTraining (post-LN; pre-LN has no such class in
    transformers, so its pair head stays behind); NSP alone BertForNextSentencePrediction
    (post-LN); else MLM."""
    if model.classifier is not None:
        return "cls", ""
    if model.mlm is None and model.nsp is not None and norm == "post":  # e.g. imported from one
        return "nsp", ""
    if model.mlm is None:
        raise UserError("the model has neither an MLM head nor a classifier; transformers has "
                        "no BERT class for an encoder alone here: export a pretraining run or a "
                        "fine-tuned seed's best/")
    if model.nsp is None:
        return "mlm", ""
    if norm == "post":
        return "pretrain", ""
    return "mlm", ("; its NSP/SOP head is left out (RobertaPreLayerNormForMaskedLM has none)")


def export_hf_dir(source: str | Path, out_dir: str | Path, *, force: bool = False,
                  tokenizer: str | Path | None = None) -> str:
    """Any checkpoint `load_pretrained` reads -> a Hugging Face directory at `out_dir`; returns
    how to load it."""
    source = Path(source)
    out_dir = check_not_the_run(source, Path(out_dir))
    # Bad paths fail before the (slow) load.
    out_dir = check_output_dir(out_dir, force, "OUT_DIR", HF_MARKER, HF_KIND)
    given = None if tokenizer is None else check_tokenizer_file(tokenizer, "--tokenizer")
    loaded = load_pretrained(source)
    tokenizer = tokenizer_for(
        loaded.model, given, tokenizer, loaded.tokenizer_path,
        f"no tokenizer found with {source}; pass --tokenizer PATH (the tokenizer.json the model "
        "was trained with)")
    kind, left_out = hf_kind(loaded.model, loaded.model_cfg.norm)
    # the classes' names as loaded: a fine-tuned seed's GLUE names (MNLI: contradiction,
    # entailment, neutral), a Hugging Face directory's id2label (they were LABEL_i again)
    labels = loaded.label_names if kind == "cls" else ()
    return export_hf(loaded.model, loaded.model_cfg, tokenizer, out_dir, kind, force=force,
                     label_names=labels, key="OUT_DIR",
                     multi_label=kind == "cls" and loaded.multi_label) + left_out


def main(argv: list[str]) -> None:
    parser = ArgParser(usage_line=USAGE, prog="python -m bertjax.export", doc=__doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR|CHECKPOINT", type=path_argument,
                        help="a pretraining run; with --format hf also a checkpoint or bundle")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=path_argument)
    parser.add_argument("--format", default="bundle", choices=FORMATS,
                        help="a bertjax release bundle, or a Hugging Face (transformers) directory")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="bundle weights")
    parser.add_argument("--force", action="store_true", help="replace a previous export at OUT_DIR")
    parser.add_argument("--tokenizer", default=None, type=path_argument,
                        help="tokenizer.json (default: the run's)")
    args = parser.parse_args(argv)
    if args.format == "hf":
        if args.dtype != "float32":
            raise UserError(f"--format hf writes float32 weights (load them in {args.dtype} with "
                            "transformers' torch_dtype=); drop --dtype")
        note = export_hf_dir(args.run_dir, args.out_dir, force=args.force,
                             tokenizer=args.tokenizer)
        print(f"wrote {note}")
        return
    out = export_run(args.run_dir, args.out_dir, dtype=args.dtype, force=args.force,
                     tokenizer=args.tokenizer)
    manifest = json.loads((out / "manifest.json").read_text())
    step, total = manifest["summary"]["step"], manifest["summary"].get("total_steps")
    unfinished = f" of {total} (the run is unfinished)" if total and step < total else ""
    print(f"wrote {out}: {manifest['parameters']:,} parameters ({args.dtype}), step "
          f"{step}{unfinished}; {os.path.getsize(out / 'model.safetensors'):,} bytes "
          f"of weights. Load it with bertjax.pretrained.load_pretrained or init.checkpoint={out}")


if __name__ == "__main__":
    cli(main)
