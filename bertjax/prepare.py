"""Corpus -> prepared data: tokenizer.json, flat token files, document lengths and meta.json.

`python -m bertjax.prepare [CONFIG.yaml ...] [key=value ...]`; the trainer calls
`ensure_prepared(cfg)`. The input is streamed and tokens are written as they come
(token_files.py), so memory does not grow with the corpus. Outputs get temporary names and are
renamed when complete, meta.json last: a run that dies half-way is never taken as finished.
Format: data/README.md. Reading and checking a prepared directory (meta.json and its files) is
in prepared.py.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenizers import Tokenizer

from bertjax import config as config_lib
from bertjax import hub_models, sources, tokenizer
from bertjax.config import Config, DataConfig
from bertjax.config_help import (
    asks_for_help,
    help_text,
    nothing_given,
    split_print_flag,
    usage_line,
)
from bertjax.errors import UserError, cli
from bertjax.files import (
    LOCK_NAME,
    check_dir_path,
    disk_full_error,
    from_cwd,
    is_disk_full,
    make_dir,
    open_lock_file,
    sha256_file,
    write_atomic,
)
from bertjax.prepared import FORMAT_VERSION, SPLITS, read_meta
from bertjax.token_files import split_pieces, token_dtype, write_token_files

# The tokenizer is trained on at most this much text: the WordPiece (BPE) trainer's memory grows
# with the distinct words it sees (~1.7 MB per MB of English text here), and 20 M characters are
# ample for an 8 k-30 k vocabulary while keeping prepare near 100 MB.
TOKENIZER_SAMPLE_CHARS = 20_000_000


def _say(message: str) -> None:
    print(f"prepare: {message}", file=sys.stderr, flush=True)


def _tokenizer_sample(cfg: DataConfig) -> Iterator[tuple[str, bool, int]]:
    """Up to TOKENIZER_SAMPLE_CHARS of text, from every k-th document when the input size is
    known (local files), so that the sample spans all sources; else from the start. Under
    data.max_documents, from the start too: the stride came from every file's size, so 200 of
    the shared Wikipedia and Gutenberg documents gave a sample of 50 (10,000 of a 10 GB corpus
    would give 20)."""
    total = sources.total_bytes(cfg) if cfg.max_documents is None else None
    stride = max(1, -(-total // TOKENIZER_SAMPLE_CHARS)) if total else 1
    doc, chars = 0, 0
    for text, ends, split in split_pieces(cfg):
        if doc % stride == 0:
            yield text, ends, split
            chars += len(text)
            if chars >= TOKENIZER_SAMPLE_CHARS:
                return
        doc += ends


def _given_tokenizer(cfg: Config) -> Path:
    """tokenizer.path as a local file; a directory stands for its tokenizer.json, else its
    vocab.txt (a Hugging Face model's, Google's BERT release, a run or bundle); a Hugging Face
    hub model id (not a name ending in .json or .txt) for that model's tokenizer file,
    downloaded (`hub_models`)."""
    path = Path(cfg.tokenizer.path)
    if path.is_dir():  # as a hub id is read: was "is a directory, not a file"
        return hub_models.file_of_tokenizer_path(path)
    if (path.exists() or path.suffix in (".json", ".txt")
            or not hub_models.looks_like_hub_id(path)):
        return path
    return hub_models.tokenizer_file(str(path), f"tokenizer file {path} does not exist"
                                                f"{from_cwd(path)}")


def _make_tokenizer(cfg: Config, directory: Path) -> Tokenizer:
    """Copy tokenizer.path, or train on the training documents; written as tokenizer.json.tmp."""
    tmp = directory / "tokenizer.json.tmp"
    if cfg.tokenizer.path is not None:
        given = _given_tokenizer(cfg)
        tok = tokenizer.load(given)
        # tokenizer.lowercase trains a tokenizer; a given one keeps its own normalizer, so a
        # request for cased text was lowercased without a word by an uncased file.
        if not cfg.tokenizer.lowercase and tokenizer.lowercases(tok):
            warnings.warn(f"tokenizer.lowercase=false does not apply to tokenizer.path="
                          f"{cfg.tokenizer.path}, which lowercases: the text "
                          "is prepared lowercased; give a cased tokenizer.json, or "
                          "tokenizer.path=null to train one", stacklevel=2)
        tmp.write_bytes(tokenizer.file_bytes(given, tok))  # vocab.txt: as JSON
        return tok
    seen = [0]

    def texts() -> Iterator[str]:  # read twice by tokenizer.train; `seen` counts one pass
        seen[0] = 0
        for text, _, split in _tokenizer_sample(cfg.data):
            if split == 0 and text.strip():
                yield text
                seen[0] += len(text)

    _say("training the WordPiece tokenizer")
    tok = tokenizer.train(texts, cfg.tokenizer)
    if not seen[0]:
        raise UserError(f"the corpus is empty: {_describe(cfg.data)} holds no text")
    trained = tokenizer.vocab_size(tok)
    if trained < cfg.tokenizer.vocab_size:  # the model takes the tokenizer's size, not the ask
        warnings.warn(f"the trained tokenizer has {trained} tokens, fewer than tokenizer."
                      f"vocab_size={cfg.tokenizer.vocab_size}: the sample of "
                      f"{seen[0]:,} characters holds too few distinct words and pairs "
                      f"(tokenizer.min_frequency={cfg.tokenizer.min_frequency}); use more text, "
                      "or a smaller tokenizer.vocab_size to silence this", stacklevel=2)
    tok.save(str(tmp), pretty=True)
    return tok


def _describe(cfg: DataConfig) -> str:
    named = [f"data.builtin={cfg.builtin}"] if cfg.builtin else []
    named += [f"data.hf_dataset={cfg.hf_dataset}"] if cfg.hf_dataset else []
    if len(cfg.sources) > 3:
        named.append(f"data.sources=[{cfg.sources[0]}, … {cfg.sources[-1]}] "
                     f"({len(cfg.sources)} entries)")
    elif cfg.sources:
        named.append(f"data.sources={list(cfg.sources)}")
    return ", ".join(named)


def _inputs(cfg: Config) -> dict:
    """Everything the prepared files depend on; a change in any of it means a rebuild."""
    if cfg.tokenizer.path is not None:
        path = _given_tokenizer(cfg)
        given = tokenizer.load(path)  # fails early, with one line, on a bad path
        tok = {"path": str(path.resolve()), "sha256": hashlib.sha256(
            tokenizer.file_bytes(path, given)).hexdigest()}
    else:
        tok = {"vocab_size": cfg.tokenizer.vocab_size, "lowercase": cfg.tokenizer.lowercase,
               "min_frequency": cfg.tokenizer.min_frequency,
               "sample_chars": TOKENIZER_SAMPLE_CHARS}
    d = cfg.data
    return {"format_version": FORMAT_VERSION, "sources": sources.fingerprint(d), "tokenizer": tok,
            "text_column": d.text_column, "validation_fraction": d.validation_fraction,
            "max_documents": d.max_documents}


def _is_current(directory: Path, inputs: dict) -> bool:
    """Built from these inputs. Local files whose mtime alone changed (a fresh copy, a checkout,
    rsync without -t) are compared by content and meta.json takes the new mtimes: a needless
    rebuild would cost a tokenizer training and a full pass (and with another `tokenizers`
    release could change every token id, and the meaning of every run trained on them)."""
    try:
        meta = read_meta(directory)
    except UserError:
        return False
    if meta["inputs"] == inputs:
        return True
    if _without_mtimes(meta["inputs"]) != _without_mtimes(inputs):
        return False
    hashes = meta.get("source_sha256", {})
    for old, new in zip(meta["inputs"]["sources"], inputs["sources"], strict=True):
        if old != new and hashes.get(new["path"]) != sha256_file(new["path"]):
            return False
    _write_meta(directory, {**meta, "inputs": inputs})
    _say(f"{directory}: source files were touched but their contents are unchanged")
    return True


def _without_mtimes(inputs: dict) -> dict:
    return {**inputs, "sources": [{k: v for k, v in source.items() if k != "mtime_ns"}
                                  for source in inputs["sources"]]}


def _source_hashes(inputs: dict) -> dict[str, str]:
    """sha256 of each local source file (cheap next to tokenizing it), for _is_current."""
    return {s["path"]: sha256_file(s["path"]) for s in inputs["sources"] if "path" in s}


def _build(cfg: Config, directory: Path, inputs: dict) -> dict:
    """Write everything, meta.json too, under .tmp names; then rename, meta.json last. Until the
    renames an earlier preparation stays whole (a full disk or a crash costs nothing)."""
    start = time.perf_counter()
    try:
        tok = _make_tokenizer(cfg, directory)
        vocab = tokenizer.vocab_size(tok)
        dtype = token_dtype(vocab)
        stats = write_token_files(cfg.data, tok, directory, dtype)
        if not stats["splits"]["train"]["tokens"]:
            raise UserError(f"the corpus is empty: {_describe(cfg.data)} yields no tokens")
        meta = {"format_version": FORMAT_VERSION, "inputs": inputs,
                "source_sha256": _source_hashes(inputs),
                "tokenizer_sha256": sha256_file(directory / "tokenizer.json.tmp"),
                "vocab_size": vocab, "dtype": dtype.name,
                "special_tokens": tokenizer.special_tokens(tok)._asdict(), **stats,
                "seconds": round(time.perf_counter() - start, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _stage_meta(directory, meta)
        (directory / "meta.json").unlink(missing_ok=True)  # from here on it is incomplete
        for tmp in sorted(directory.glob("*.tmp"), key=lambda p: p.name == "meta.json.tmp"):
            os.replace(tmp, tmp.with_suffix(""))
        return meta
    except Exception as e:  # the tokenizers library raises a bare Exception for ENOSPC
        if is_disk_full(e):
            raise disk_full_error(directory, "while writing the prepared data") from None
        raise
    finally:
        for tmp in directory.glob("*.tmp"):
            tmp.unlink()


def _stage_meta(directory: Path, meta: dict) -> None:
    """meta.json.tmp: the new preparation's meta, renamed after its data files."""
    (directory / "meta.json.tmp").write_text(json.dumps(meta, indent=1))


def _write_meta(directory: Path, meta: dict) -> None:
    """The last step: until meta.json exists the directory counts as unprepared."""
    write_atomic(directory / "meta.json", json.dumps(meta, indent=1))


@contextmanager
def _locked(directory: Path):
    """data.dir, created if missing, held by one preparer at a time (several processes of one
    run may call us). A preparation that fails in a directory it created leaves no directory
    behind (it would hold only the lock file), nor the parents it made; a preparer that was
    waiting on that lock finds its file gone and starts over."""
    while True:
        created = [d for d in (directory, *directory.parents) if not d.exists()]  # leaf first
        make_dir(directory, "data.dir")
        f = open_lock_file(directory, "make data.dir writable; or, to use its prepared data as "
                           "it is (nothing is written then), set data.sources=[] "
                           "data.builtin=null data.hf_dataset=null")
        fcntl.flock(f, fcntl.LOCK_EX)
        if _still_the_lock_file(f, directory):
            break
        f.close()
    try:
        yield
    except BaseException:
        if created and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
            (directory / LOCK_NAME).unlink()
            for made in created:  # data.dir, then the parents it was created with
                with contextlib.suppress(OSError):  # one that is no longer empty stays
                    made.rmdir()
        raise
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _still_the_lock_file(f, directory: Path) -> bool:
    """Whether the locked file `f` is still directory/.lock (not removed by a failed preparer)."""
    try:
        return os.stat(directory / LOCK_NAME).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def _remove_leftovers(directory: Path) -> None:
    """A preparer killed outright (SIGKILL, a crash) leaves its corpus-sized .tmp files behind;
    under the lock none is being written, and an up-to-date rerun would otherwise keep them."""
    for name in ("tokenizer.json", "meta.json",
                 *(f"{split}.{kind}" for split in SPLITS for kind in ("bin", "lengths"))):
        (directory / f"{name}.tmp").unlink(missing_ok=True)


def names_a_source(cfg: DataConfig) -> bool:
    return bool(cfg.sources) or cfg.hf_dataset is not None or cfg.builtin is not None


# What a run directory or a release bundle holds, and prepared data never does.
RUN_FILES = ("checkpoints", "config.yaml", "manifest.json", "metrics.jsonl")


def check_not_a_run(directory: Path) -> None:
    """A data.dir that holds a run or a bundle is refused: preparing there would replace its
    tokenizer.json, which its weights' rows are numbered by (the run itself takes the lock on
    its directory, so a run whose data.dir is its own run_dir would also wait forever)."""
    found = [name for name in RUN_FILES if (directory / name).exists()]
    if found:
        raise UserError(f"data.dir={directory} holds a run or a release bundle ({found[0]}); "
                        "preparing there would replace its tokenizer.json: set data.dir to a "
                        "directory of its own (e.g. data/NAME)")


def ensure_prepared(cfg: Config) -> Path:
    """Prepare cfg.data.dir unless it is complete and built from the same inputs; returns it.
    With no data source set, cfg.data.dir must already be prepared and is used as it is."""
    directory = check_dir_path(cfg.data.dir, "data.dir")
    if not names_a_source(cfg.data):
        # A prepared directory copied without its corpus (say, to a GPU node): use it as it is.
        if not (directory / "meta.json").is_file():
            raise UserError(f"{directory} holds no prepared data and no data source is set: set "
                            "data.sources (files or globs), data.hf_dataset or data.builtin=stdlib")
        read_meta(directory)
        _say(f"{directory}: no data source set; using the prepared data as it is")
        return directory
    check_not_a_run(directory)
    sources.check(cfg.data)  # bad sources or tokenizer.path fail before data.dir is created
    inputs = _inputs(cfg)
    with _locked(directory):
        _remove_leftovers(directory)
        if _is_current(directory, inputs):
            _say(f"{directory} is up to date (same inputs and tokenizer); nothing to do")
            return directory
        _say(f"preparing {directory} from {_describe(cfg.data)}")
        meta = _build(cfg, directory, inputs)
    mb, s = meta["text_bytes"] / 1e6, meta["seconds"]
    train, valid = meta["splits"]["train"], meta["splits"]["validation"]
    _say(f"{meta['text_tokens'] / 1e6:.2f} M tokens from {mb:.1f} MB in {s:.1f} s "
         f"({mb / s:.2f} MB/s, {meta['text_tokens'] / s / 1e6:.2f} M tokens/s); "
         f"train {train['tokens']:,} tokens / {train['documents']:,} docs, validation "
         f"{valid['tokens']:,} / {valid['documents']:,}; vocab {meta['vocab_size']} "
         f"({meta['dtype']}) -> {directory}")
    return directory


USAGE = usage_line("prepare")


def main(argv: list[str]) -> None:
    if asks_for_help(argv):
        print(help_text(USAGE))
        return
    argv, print_only = split_print_flag(argv)
    if not argv:  # overrides alone are a config, as for train (over the schema's defaults)
        raise nothing_given(USAGE)
    files, overrides = config_lib.split_args(argv)
    cfg = config_lib.load(files, overrides)
    if print_only:
        print(config_lib.to_yaml(cfg), end="")
        return
    ensure_prepared(cfg)


if __name__ == "__main__":
    cli(main)
