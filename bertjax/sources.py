"""Text sources for `prepare`: local text, JSON lines (.jsonl, .json) and .parquet files (text and
JSON lines also as .gz, .bz2 or .xz), a streamed hub dataset, or the embedded `stdlib` corpus,
all read as a stream of (text, ends_document) pieces in bounded memory. Which local files, and
whether they can be read at all, is source_files.py's.

Plain text: one paragraph per line, a blank line between documents. Bad text is an error, never
silently replaced: a file with a NUL byte in its first 8 KiB is called binary, and invalid UTF-8
anywhere is reported with its file and line (see data/README.md).
"""

import ast
import contextlib
import json
import logging
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from bertjax.config import DataConfig
from bertjax.errors import UserError
from bertjax.files import utf8_error
from bertjax.source_files import (
    FIX,
    check_hub_name,
    check_not_binary,
    checked_local_files,
    compression,
    decompression_errors_named,
    format_suffix,
    is_json_lines,
    local_files,
    open_source,
    text_bytes,
)

Piece = tuple[str, bool]  # (text, whether this piece ends its document)

READ_CHUNK = 1 << 18  # characters read at a time; a longer document is emitted in pieces
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def _utf8_error(path: Path) -> UserError:
    return utf8_error(path, "convert it, e.g. iconv -f latin1 -t utf-8, or drop it from "
                            "data.sources", open_source if compression(path) else open)


def text_pieces(path: Path) -> Iterator[Piece]:
    """Documents of a plain-text file, split on blank lines, read 256 k characters at a time."""
    check_not_binary(path)
    carry, open_doc = "", False  # open_doc: part of the current document was already emitted
    try:
        with decompression_errors_named(path), open_source(path, "rt", encoding="utf-8-sig") as f:
            while chunk := f.read(READ_CHUNK):
                parts = _BLANK_LINE.split(carry + chunk)
                carry = parts.pop()
                for part in parts:
                    if open_doc or part.strip():
                        yield part, True
                    open_doc = False
                if len(carry) > READ_CHUNK:  # a long document: hand over whole lines, keep
                    yield carry[:(cut := _cut(carry))], False  # the tail
                    carry, open_doc = carry[cut:], True
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    if open_doc or carry.strip():
        yield carry, True


def _cut(text: str) -> int:
    """Where to cut a long document: at its last line break, else (one long line: text8, a
    minified dump) at its last space, else anywhere. Kept whole, such a line made every read
    rescan all of it (a 13 MB line read in 0.4 s, 52 MB in 7 s) and held it in memory."""
    cut = text.rfind("\n")
    cut = cut if cut > 0 else text.rfind(" ")  # no line break to cut at: cut between words
    return cut if cut > 0 else len(text)


def _column_text(value: object, where: str, column: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: column {column!r} holds {type(value).__name__}, not text; "
                        "set data.text_column to a text column")
    return value


def jsonl_pieces(path: Path, column: str) -> Iterator[Piece]:
    """One document per JSON line, its text in `column`."""
    check_not_binary(path)
    with decompression_errors_named(path), open_source(path) as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except UnicodeDecodeError:
                raise _utf8_error(path) from None
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {number}: not valid JSON ({e.msg}); "
                                "a JSON lines file holds one JSON object per line") from None
            if not isinstance(row, dict) or column not in row:
                keys = list(row) if isinstance(row, dict) else type(row).__name__
                raise UserError(f"{path} line {number}: no {column!r} field (found {keys}); "
                                "set data.text_column")
            text = _column_text(row[column], f"{path} line {number}", column)
            _check_no_lone_surrogate(text, f"{path} line {number}")
            yield text, True


def _check_no_lone_surrogate(text: str, where: str) -> None:
    """JSON can escape half of a UTF-16 pair ("\\ud800") that no character completes: such
    text cannot be encoded or tokenized. Like invalid UTF-8 it is refused, not replaced (a
    replacement would hide a broken export), naming the line so it can be fixed or dropped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where}: lone surrogate U+{ord(text[e.start]):04X} at character "
                        f"{e.start + 1} (half of a UTF-16 pair, not a character); fix or drop "
                        "that line") from None


def parquet_pieces(path: Path, column: str) -> Iterator[Piece]:
    """One document per row of `column`, read in record batches."""
    import pyarrow.parquet as pq  # imported here: pyarrow is heavy and only parquet needs it

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet files
        raise UserError(f"{path} is not a readable parquet file ({e}); {FIX}") from None
    if column not in pf.schema_arrow.names:
        raise UserError(f"{path} has no column {column!r} (columns: {pf.schema_arrow.names}); "
                        "set data.text_column")
    for values in _parquet_column(pf, column, path):
        for value in values:
            yield _column_text(value, str(path), column), True


def _parquet_column(pf, column: str, path: Path) -> Iterator[list]:
    """`column`'s values, a record batch at a time. ParquetFile reads only the footer: data
    pages that fail to decompress or decode, or string bytes that are not UTF-8 (parquet does
    not enforce it), show up here and are a UserError naming the file."""
    import pyarrow as pa

    try:
        for batch in pf.iter_batches(batch_size=1024, columns=[column]):
            yield batch.column(0).to_pylist()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: column {column!r} holds text that is not valid UTF-8 ({e}); "
                        "fix the file or drop it from data.sources") from None
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path} is corrupt: reading column {column!r} failed "
                        f"({str(e).splitlines()[0]}); write it again or drop it from "
                        "data.sources") from None


@contextlib.contextmanager
def quiet_hub():
    """huggingface_hub logs every retry of an unreachable hub as a warning, each printed twice
    (about 20 lines over 25 s before the error that the callers turn into one line)."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def hub_pieces(cfg: DataConfig) -> Iterator[Piece]:
    """Stream a Hugging Face hub dataset; an unreachable hub becomes one clear UserError."""
    import datasets  # imported here: heavy, and only the hub path needs it

    name = f"data.hf_dataset={cfg.hf_dataset}"
    fix = ("without network access download the data elsewhere and set data.hf_dataset=null "
           "data.sources=[files] (text, .jsonl or .parquet)")
    try:
        # Only around the call that reaches the hub first: a generator suspended at `yield`
        # would keep the logger quiet for whatever the caller does meanwhile.
        with quiet_hub():
            stream = datasets.load_dataset(cfg.hf_dataset, cfg.hf_config, split=cfg.hf_split,
                                           streaming=True)
        for row in stream:
            if cfg.text_column not in row:
                raise UserError(f"{name} has no column {cfg.text_column!r} (found "
                                f"{list(row)}); set data.text_column")
            yield _column_text(row[cfg.text_column], name, cfg.text_column), True
    except (ConnectionError, TimeoutError) as e:
        raise UserError(f"cannot reach the Hugging Face hub for {name} ({e}); {fix}") from None
    except datasets.exceptions.DatasetNotFoundError as e:
        raise UserError(f"{name} not found on the hub ({e}); check the name or {fix}") from None
    except ValueError as e:  # e.g. an unknown config or split
        raise UserError(f"{name}: {str(e).splitlines()[0]}; check data.hf_config and "
                        "data.hf_split") from None


def stdlib_pieces() -> Iterator[Piece]:
    """The embedded corpus (about 2 MB): kept once read in full, since prepare reads it twice."""
    if _STDLIB:
        yield from _STDLIB[0]
        return
    seen = []
    for piece in _read_stdlib():
        seen.append(piece)
        yield piece
    _STDLIB.append(tuple(seen))


_STDLIB: list[tuple[Piece, ...]] = []


def _read_stdlib() -> Iterator[Piece]:
    """pydoc's topic pages, then docstrings of the standard library, one document per module.

    Modules are parsed with `ast` (never imported) in sorted path order (module, class and
    function docstrings); tests and bundled apps are skipped.
    """
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name], True
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "turtledemo", "encodings", "pydoc_data"}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # e.g. lib2to3 test data written in Python 2
            continue
        text = "\n\n".join(_docstrings(tree))
        if text:
            yield text, True


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of a module and its classes and functions (not of nested function bodies)."""
    doc = ast.get_docstring(node)
    if doc:
        yield doc
    for child in getattr(node, "body", []):
        if isinstance(child, ast.ClassDef):
            yield from _docstrings(child)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            if doc := ast.get_docstring(child):
                yield doc


BUILTINS = {"stdlib": stdlib_pieces}


def check(cfg: DataConfig) -> list[Path]:
    """Validate the source settings early; returns the local files."""
    if cfg.builtin is not None and cfg.builtin not in BUILTINS:
        raise UserError(f"data.builtin={cfg.builtin!r} is unknown; use {list(BUILTINS)} or null")
    if cfg.hf_dataset is not None:
        check_hub_name(cfg.hf_dataset)
    files = checked_local_files(cfg)
    if not files and cfg.hf_dataset is None and cfg.builtin is None:
        raise UserError("no data source: set data.sources (files or globs), data.hf_dataset "
                        "or data.builtin=stdlib")
    return files


def pieces(cfg: DataConfig) -> Iterator[Piece]:
    """Every source in a fixed order (builtin, hub dataset, local files as listed), with long
    documents handed on in pieces of at most ~READ_CHUNK characters."""
    for text, ends in _all_pieces(cfg):
        start = 0  # an offset, not text = text[cut:], which copied the rest at every cut
        while len(text) - start > READ_CHUNK:  # e.g. a whole book in one jsonl row
            end = start + READ_CHUNK
            cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
            cut = cut if cut > start else end  # cut at whitespace: tokens do not change
            yield text[start:cut], False
            start = cut
        yield text[start:], ends


def _all_pieces(cfg: DataConfig) -> Iterator[Piece]:
    files = check(cfg)
    if cfg.builtin is not None:
        yield from BUILTINS[cfg.builtin]()
    if cfg.hf_dataset is not None:
        yield from hub_pieces(cfg)
    for path in files:
        if is_json_lines(path):  # any case: a.JSONL was read as plain text
            yield from jsonl_pieces(path, cfg.text_column)
        elif format_suffix(path) == ".parquet":
            yield from parquet_pieces(path, cfg.text_column)
        else:
            yield from text_pieces(path)


def fingerprint(cfg: DataConfig) -> list[dict]:
    """What identifies the inputs: file paths with sizes and mtimes; the hub name; the Python."""
    out: list[dict] = []
    if cfg.builtin is not None:
        out.append({"builtin": cfg.builtin, "python": sys.version,
                    "stdlib": sysconfig.get_paths()["stdlib"]})
    if cfg.hf_dataset is not None:  # a hub dataset is assumed immutable for a given name/config
        out.append({"hub": cfg.hf_dataset, "config": cfg.hf_config, "split": cfg.hf_split})
    for path in local_files(cfg):
        st = path.stat()
        out.append({"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def total_bytes(cfg: DataConfig) -> int | None:
    """Bytes of text in the input when it is known (local files only): for the progress bar and
    the stride of prepare's tokenizer sample."""
    if cfg.builtin is not None or cfg.hf_dataset is not None:
        return None
    return sum(text_bytes(p, cfg.text_column) for p in local_files(cfg))
