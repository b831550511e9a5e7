"""A prepared data directory, read: meta.json and the files it names, checked before anyone
indexes them (field types, file sizes, document lengths against tokens, the tokenizer's sha256,
Git LFS pointers), so a broken or hand-edited copy fails in one line saying how to rebuild it.
`identity` is what names its token stream (checkpoints record it; a resume on other data says so).
`prepare` writes the directory; data/README.md describes the format.
"""

import json
from pathlib import Path

import numpy as np

from bertjax import tokenizer
from bertjax.errors import UserError
from bertjax.files import check_not_lfs_pointer, sha256_file

FORMAT_VERSION = 1
SPLITS = ("train", "validation")


def reprepare_hint(directory: Path) -> str:
    """How to rebuild `directory`: prepare only rebuilds with a data source set."""
    return (f"prepare it again: python -m bertjax.prepare CONFIG data.dir={directory} with "
            "data.sources (or data.builtin / data.hf_dataset) naming its corpus")


def read_meta(directory: str | Path) -> dict:
    """meta.json of a complete preparation, its fields and every file checked; else a
    UserError naming the file, what is wrong and how to prepare it again."""
    directory = Path(directory)
    fix = reprepare_hint(directory)
    meta = _load_meta(directory / "meta.json", fix)
    itemsize = np.dtype(meta["dtype"]).itemsize
    for name, split in meta["splits"].items():
        _check_data_file(directory / f"{name}.bin", split["tokens"] * itemsize, fix)
        _check_data_file(directory / f"{name}.lengths", split["documents"] * 4, fix)
        _check_lengths(directory / f"{name}.lengths", split["tokens"], fix)
    tok_path = directory / "tokenizer.json"
    if tok_path.is_file():
        check_not_lfs_pointer(tok_path)
    if not tok_path.is_file() or sha256_file(tok_path) != meta["tokenizer_sha256"]:
        raise UserError(f"{tok_path} does not match the tokenizer the data was prepared with "
                        f"(sha256 {meta['tokenizer_sha256'][:12]}…); {fix}")
    return meta


def _load_meta(path: Path, fix: str) -> dict:
    try:
        check_not_lfs_pointer(path)
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path.parent} holds no prepared data (no meta.json); {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is corrupt (not JSON); {fix}") from None
    if isinstance(meta, dict) and meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path.parent} was prepared in format {meta.get('format_version')}, "
                        f"this code reads format {FORMAT_VERSION}; {fix}")
    problem = _meta_problem(meta)
    if problem:
        raise UserError(f"{path}: {problem}; {fix}")
    return meta


# The fields readers index, and their JSON types (format_version is checked first, by value).
_META_TYPES = {"inputs": dict, "source_sha256": dict, "tokenizer_sha256": str, "vocab_size": int,
               "dtype": str, "special_tokens": dict, "splits": dict}
_DTYPES = ("uint16", "uint32")


def _meta_problem(meta: object) -> str | None:
    """What makes a parsed meta.json unusable (None: nothing), checked here so that its readers
    can index it freely: a hand edit or a corrupted copy fails in one line, not deep inside."""
    if not isinstance(meta, dict):
        return f"holds a JSON {type(meta).__name__}, not an object"
    for field, kind in _META_TYPES.items():
        if not isinstance(meta.get(field), kind):
            found = "missing" if field not in meta else f"{meta[field]!r}"
            return f"field {field!r} is {found}, not a {kind.__name__}"
    if meta["dtype"] not in _DTYPES:
        return f"field 'dtype' is {meta['dtype']!r}, not one of {_DTYPES}"
    if meta["vocab_size"] > np.iinfo(meta["dtype"]).max + 1:
        return f"vocabulary of {meta['vocab_size']} does not fit its {meta['dtype']} token files"
    specials, names = meta["special_tokens"], tokenizer.SpecialTokens._fields
    if sorted(specials) != sorted(names) or not all(
            isinstance(i, int) and 0 <= i < meta["vocab_size"] for i in specials.values()):
        return f"field 'special_tokens' is {specials}, not ids below vocab_size for {names}"
    if sorted(meta["splits"]) != sorted(SPLITS) or not all(
            _is_count(split, "tokens") and _is_count(split, "documents")
            for split in meta["splits"].values()):
        return f"field 'splits' is {meta['splits']}, not token and document counts of {SPLITS}"
    sources_ = meta["inputs"].get("sources")
    if not isinstance(sources_, list) or not all(isinstance(s, dict) for s in sources_):
        return f"field 'inputs' has no list of 'sources' ({meta['inputs']})"
    return None


def _is_count(split: object, key: str) -> bool:
    return isinstance(split, dict) and isinstance(split.get(key), int) and split[key] >= 0


def _check_data_file(path: Path, size: int, fix: str) -> None:
    if path.is_file():
        check_not_lfs_pointer(path)
    if not path.is_file() or path.stat().st_size != size:
        raise UserError(f"{path} is missing or has the wrong size; {fix}")


def _check_lengths(path: Path, n_tokens: int, fix: str) -> None:
    """The document lengths must tile the token file, as the loader assumes: each at least 2
    (a token and its [SEP]), summing to the split's token count. A file of the right size but
    wrong content (bytes flipped in a copy) would else yield garbage documents silently. One
    pass over 4 bytes a document, through a memmap: cheap next to reading the tokens."""
    lengths = np.memmap(path, np.uint32, mode="r") if path.stat().st_size else np.zeros(0)
    total = int(lengths.sum(dtype=np.int64))
    shortest = int(lengths.min()) if len(lengths) else 2
    if total != n_tokens or shortest < 2:
        raise UserError(f"{path} does not match its token file: the document lengths sum to "
                        f"{total:,} tokens (shortest {shortest}; a document has at least 2), "
                        f"the split holds {n_tokens:,}; {fix}")


# The inputs besides the texts and the tokenizer that decide what the token files hold.
_SPLIT_SETTINGS = ("text_column", "validation_fraction", "max_documents")


def identity(meta: dict) -> dict:
    """What identifies the token stream of a prepared directory (its meta.json, read): the
    splits' token and document counts, the tokenizer's sha256, each source in order (a local
    file by its sha256 and size, not its path or mtime: a corpus moved or touched is the same
    text) and the settings that split it. Not `created` or `seconds`: an identical rebuild has
    the same identity. Checkpoints record it, so that a resume on other data is said."""
    hashes = meta["source_sha256"]
    sources_ = [{"sha256": hashes.get(s["path"]), "bytes": s.get("bytes")} if "path" in s
                else {k: v for k, v in s.items() if k != "mtime_ns"}
                for s in meta["inputs"]["sources"]]
    settings = {k: meta["inputs"].get(k) for k in _SPLIT_SETTINGS}
    return {"splits": {name: {"tokens": split["tokens"], "documents": split["documents"]}
                       for name, split in sorted(meta["splits"].items())},
            "tokenizer_sha256": meta["tokenizer_sha256"], "sources": sources_, **settings}


def describe_change(old: dict, new: dict) -> str | None:
    """A few words on how identity `new` differs from `old` ('train 143 -> 285 documents,
    validation 7 -> 15 documents, the source texts differ'); None when they are the same."""
    if old == new:
        return None
    said = []
    for name in SPLITS:
        was, now = old.get("splits", {}).get(name, {}), new["splits"][name]
        for unit in ("documents", "tokens"):  # documents when they changed, else tokens
            if was.get(unit) != now[unit]:
                said.append(f"{name} {_count(was.get(unit))} -> {now[unit]:,} {unit}")
                break
    if old.get("sources") != new["sources"]:
        said.append("the source texts differ")
    if old.get("tokenizer_sha256") != new["tokenizer_sha256"]:
        said.append("the tokenizer differs")
    said += [f"data.{k} {old.get(k)} -> {new[k]}" for k in _SPLIT_SETTINGS if old.get(k) != new[k]]
    return ", ".join(said) or "its meta.json differs"


def _count(n: object) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"
