"""Which local files `data.sources` names, and whether `prepare` can read them: globs expanded
(never into data.dir), each file checked to exist once, be text (not UTF-16 or binary), not an
LFS pointer, and of a format sources.py reads (plain text, JSON lines as .jsonl or .json,
.parquet; text and JSON lines also compressed as .gz, .bz2 or .xz, read as they stream; other
compressions, JSON documents and tables are refused with the command that converts them). A
local path given as data.hf_dataset is refused too: `datasets` would read it line by line.
"""

import bz2
import contextlib
import functools
import glob
import gzip
import io
import json
import lzma
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from bertjax.config import DataConfig
from bertjax.errors import UserError
from bertjax.files import UTF16_BOMS, check_not_lfs_pointer, from_cwd, utf16_error

FIX = ("data.sources takes plain UTF-8 text, JSON lines (.jsonl, .json) or .parquet files "
       "(text and JSON lines also as .gz, .bz2 or .xz)")


def local_files(cfg: DataConfig) -> list[Path]:
    """data.sources expanded (globs sorted), each checked to exist."""
    files: list[Path] = []
    for pattern in cfg.sources:
        if Path(pattern).is_file():  # first: a name holding [ ] * ? was read as a glob (so
            files.append(Path(pattern))  # book[1].txt trained on book1.txt, exit 0)
        elif glob.has_magic(pattern):
            # Never data.dir's own files: under `corpus/**/*` the tokenizer.json.tmp being
            # written was tokenized into the corpus (exit 0), and a rerun read meta.json.
            prepared = Path(cfg.dir).resolve()
            matches = [p for p in sorted(glob.glob(pattern, recursive=True))
                       if prepared not in (resolved := Path(p).resolve(), *resolved.parents)]
            found = [Path(p) for p in matches if Path(p).is_file()]
            _check_glob_dirs(pattern, [p for p in matches if Path(p).is_dir()], bool(found))
            if not found:
                raise UserError(f"data.sources pattern {pattern!r} matches no file"
                                f"{from_cwd(pattern)}; check the path (globs are expanded by "
                                "bertjax, quote them in the shell)")
            files += found
        elif Path(pattern).is_dir():
            raise UserError(f"data.sources entry {pattern} is a directory; name its files, e.g. "
                            f"{Path(pattern) / '*.txt'} (bertjax expands the glob)")
        elif Path(pattern).exists():  # a pipe (`<(zcat x.gz)`) or device: was "does not exist"
            raise UserError(f"data.sources entry {pattern} is not a regular file (a pipe or a "
                            "device); prepare reads its sources twice (the tokenizer, then the "
                            "tokens): write it to a file and list that")
        else:
            raise UserError(f"data.sources entry {pattern} does not exist{from_cwd(pattern)}; "
                            "give a file, a glob, or remove it")
    # A file listed twice (a glob and a name, say) was read twice: every document twice, and a
    # validation document's copy in the training split.
    seen: dict[Path, Path] = {}
    for path in files:
        if (first := seen.setdefault(path.resolve(), path)) is not path:
            raise UserError(f"data.sources names {path.resolve()} twice ({first} and {path}); "
                            "list each file once (globs included)")
    return files


def _check_glob_dirs(pattern: str, dirs: list[str], any_file: bool) -> None:
    """Directories a glob matched (WikiExtractor's text/AA/wiki_00 under `text/*`): their files
    were skipped without a word, or the pattern was said to match nothing, as if mistyped."""
    if not dirs or "**" in pattern:  # ** walks into directories itself
        return
    names = ", ".join(Path(d).name for d in dirs[:3]) + (", ..." if len(dirs) > 3 else "")
    deeper = Path(pattern).parent / "**" / Path(pattern).name
    dirs_named = f"{len(dirs)} director{'y' if len(dirs) == 1 else 'ies'} ({names})"
    if not any_file:
        raise UserError(f"data.sources pattern {pattern!r} matches no file, only {dirs_named}; "
                        f"write {str(deeper)!r} to read the files under them")
    warnings.warn(f"data.sources pattern {pattern!r} matches {dirs_named}, whose files are not "
                  f"read; write {str(deeper)!r} to read them too", stacklevel=2)


# Compressions the standard library reads as it streams: a name is <name>.<format>.<compression>
# (wiki.txt.bz2, c4.jsonl.gz); the others must be decompressed first.
DECOMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_DECOMPRESS_COMMANDS = {".gz": "gunzip -k", ".bz2": "bunzip2 -k", ".xz": "unxz -k",
                        ".zst": "unzstd", ".zip": "unzip", ".7z": "7z x"}


def compression(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return suffix if suffix in DECOMPRESSORS else None


def format_suffix(path: Path) -> str:
    """The lowercased suffix that says how the text is laid out: .jsonl for c4.jsonl.gz."""
    return (path.with_suffix("") if compression(path) else path).suffix.lower()


def open_source(path: Path, mode: str = "rb", **kwargs) -> io.IOBase:
    """`path` opened as `open` would, decompressed as it is read when it is compressed."""
    return DECOMPRESSORS.get(compression(path), open)(path, mode, **kwargs)


@contextlib.contextmanager
def decompression_errors_named(path: Path) -> Iterator[None]:
    """Inside the block, a compressed file that does not decompress (damaged, cut short by an
    interrupted download, or not that compression at all) is a UserError naming it, not the
    decompressor's traceback."""
    if compression(path) is None:
        yield
        return
    try:
        yield
    except (EOFError, zlib.error, lzma.LZMAError) as e:
        raise _not_decompressible(path, e) from None
    except OSError as e:  # gzip's BadGzipFile, bz2's "Invalid data stream": no errno, as a
        if e.errno is not None:  # failing disk's has
            raise
        raise _not_decompressible(path, e) from None


def _not_decompressible(path: Path, e: Exception) -> UserError:
    suffix = compression(path)
    return UserError(f"{path} does not decompress as {suffix} ({e}): it is damaged, cut short "
                     f"or not {suffix} at all; download or compress it again, or drop it from "
                     "data.sources")


def check_not_binary(path: Path) -> None:
    """UTF-16, or a NUL byte in the first 8 KiB (binary), is refused before reading."""
    with decompression_errors_named(path), open_source(path) as f:
        head = f.read(8192)
    if head.startswith(UTF16_BOMS):  # Windows editors' "Unicode": was "binary"
        raise utf16_error(path, FIX)
    if b"\0" in head:
        line = head[: head.index(b"\0")].count(b"\n") + 1
        raise UserError(f"{path} looks binary (NUL byte on line {line}); {FIX}")


def checked_local_files(cfg: DataConfig) -> list[Path]:
    """`local_files`, each checked before anything is read (a checkout without `git lfs pull`
    would else be read as text)."""
    files = local_files(cfg)
    for path in files:
        check_not_lfs_pointer(path)
        _check_format(path)
    return files


def check_hub_name(name: str) -> None:
    """`datasets` also loads a local path, first if one of that name exists (a text file line
    by line, not by document), and prepare fingerprints a hub name only: a file added there
    later left prepare "up to date" on the old data. A missing path was a traceback."""
    where = Path(name).expanduser()
    if where.exists():
        example = where / "*.txt" if where.is_dir() else where
        raise UserError(f"data.hf_dataset={name} is a local path; set data.hf_dataset=null and "
                        f"list its files in data.sources (e.g. {example}; text, .jsonl "
                        "or .parquet), which prepare reads by document and checks for changes")
    if name.startswith(("/", ".", "~")):  # no hub name starts so
        raise UserError(f"data.hf_dataset={name} does not exist{from_cwd(name)}; local files go "
                        "in data.sources, hub datasets are named like wikitext or org/name")


def _check_format(path: Path) -> None:
    """Any other suffix is read as plain text: a compressed file would be called binary or
    latin-1, and a JSON document or a table (.csv, .tsv) would be trained on as text, braces,
    keys, headers and quotes included."""
    suffix, compressed = format_suffix(path), compression(path) or ""
    command = _DECOMPRESS_COMMANDS.get(path.suffix.lower())
    if command and not compressed:
        raise UserError(f"{path} is compressed ({path.suffix}); decompress it first (e.g. "
                        f"{command} {path}) and list the result in data.sources, or compress "
                        "it as .gz, .bz2 or .xz, which are read as they are")
    if suffix == ".tar" or path.suffix.lower() == ".tgz":  # its headers were called binary
        raise UserError(f"{path} is an archive of files; extract it (e.g. tar xf {path}) and "
                        "list the files it holds in data.sources")
    if suffix == ".parquet" and compressed:
        raise UserError(f"{path}: a parquet file compresses its own pages and is read only "
                        f"as it is; decompress it (e.g. {command} {path})")
    if suffix == ".json":
        _check_json_lines(path)
    if suffix in (".csv", ".tsv"):  # as text, its header, ids and quotes were trained on
        tab = ", parse_options=c.ParseOptions(delimiter='\\t')" if suffix == ".tsv" else ""
        table = (path.with_suffix("") if compressed else path).with_suffix(".parquet")
        raise UserError(f"{path}: {suffix} is not read; {FIX}: convert it, e.g. python -c "
                        "\"import pyarrow.csv as c, pyarrow.parquet as p; p.write_table("
                        f"c.read_csv('{path}'{tab}), '{table}')\", "
                        "and set data.text_column to its text column")


JSON_LINE_LIMIT = 1 << 24  # characters of a .json file's first line read to tell its layout


def is_json_lines(path: Path) -> bool:
    """Whether `path` is read one JSON object per line: .jsonl, or .json whose first line is
    one (C4's c4-train.*.json.gz, Dolma and many exports name JSON lines so)."""
    return format_suffix(path) in (".jsonl", ".json")


def _check_json_lines(path: Path) -> None:
    """A .json file is read as JSON lines when its first line is one whole JSON object; one
    JSON document (an array, an object over many lines) was trained on as text, braces and
    keys included."""
    check_not_binary(path)  # UTF-16 said as such, not as a first line that is no JSON
    with decompression_errors_named(path), open_source(path) as f:
        first = b""
        while not first.strip() and (line := f.readline(JSON_LINE_LIMIT)):
            first = line
    try:
        whole_object = isinstance(json.loads(first), dict)
    except ValueError:  # not JSON, half a document, or not UTF-8 (reading names the byte)
        whole_object = False
    if not whole_object:
        raise UserError(f"{path}: its first line is not one JSON object, and a .json source is "
                        "read as JSON lines (one object per line); convert it to .jsonl (e.g. "
                        "jq -c '.[]' for an array) or give another format: " + FIX)


def text_bytes(path: Path, column: str) -> int:
    """A file's size; for parquet (compressed: the shared Wikipedia 1.7 times) the text
    column's uncompressed size from its footer, else the tokenizer sample's stride came out too
    small and the sample stopped before the last sources, which the tokenizer never saw."""
    if compression(path):
        st = path.stat()
        return _decompressed_size(path, st.st_size, st.st_mtime_ns)
    if path.suffix.lower() != ".parquet":
        return path.stat().st_size
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # parquet_pieces names the damage when the file is read
        return path.stat().st_size
    return sum(chunk.total_uncompressed_size for r in range(meta.num_row_groups)
               for chunk in map(meta.row_group(r).column, range(meta.num_columns))
               if chunk.path_in_schema == column) or path.stat().st_size


@functools.lru_cache
def _decompressed_size(path: Path, size: int, mtime_ns: int) -> int:
    """A compressed file's text size, estimated from how much room its first MiB or so of text
    took (its compressed size was 3-4 times too small a total for English). Kept per file
    version: prepare asks twice (the tokenizer sample, the progress bar), and a bz2 file's
    estimate costs up to 0.2 s."""
    produced = 0
    with (decompression_errors_named(path), open(path, "rb") as raw,
          DECOMPRESSORS[compression(path)](raw) as text):
        while True:
            consumed = raw.tell()
            chunk = text.read(1 << 16)
            if not chunk:
                return produced  # all of it
            if raw.tell() > consumed and produced >= 1 << 20:
                # This read needed more input: what came out before it is all that the first
                # `consumed` bytes hold (bz2 gives out its text a 900 kB block at a time: a
                # ratio taken mid-block was 40 % low).
                return round(size * produced / consumed)
            produced += len(chunk)
