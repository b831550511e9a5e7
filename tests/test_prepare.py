"""prepare: the written format, dtype choice, idempotent and crash-safe re-runs, every source
kind, and one-line errors for bad input (also through the CLI: exit code 2, no traceback)."""

import bz2
import csv
import fcntl
import gzip
import json
import logging
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import bert_style_tokenizer, load_cfg, sentences, write_corpus

from bertjax import (
    config,
    files,
    prepare,
    pretrained,
    source_files,
    sources,
    token_files,
    tokenizer,
)
from bertjax.errors import UserError, cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[str]]:
    return tmp_path / "a.txt", write_corpus(tmp_path / "a.txt", 60)


def read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    meta = json.loads((directory / "meta.json").read_text())
    return (np.fromfile(directory / f"{split}.bin", meta["dtype"]),
            np.concatenate([[0], np.cumsum(np.fromfile(directory / f"{split}.lengths", np.uint32),
                                            dtype=np.int64)]))


def test_format_split_and_boundaries(tmp_path, corpus):
    path, docs = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    meta = prepare.read_meta(out)
    tok = tokenizer.load(out / "tokenizer.json")
    sep = meta["special_tokens"]["sep"]
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tokenizer.vocab_size(tok)
    assert meta["tokenizer_sha256"] == tokenizer.sha256_file(out / "tokenizer.json")
    split_of = [token_files.is_validation(i, 0.1) for i in range(len(docs))]
    assert sum(split_of) == 6
    for split, want in (("train", False), ("validation", True)):
        tokens, offsets = read_split(out, split)
        mine = [d for d, s in zip(docs, split_of, strict=True) if s == want]
        assert meta["splits"][split] == {"tokens": len(tokens), "documents": len(mine)}
        assert offsets[0] == 0 and offsets[-1] == len(tokens) and len(offsets) == len(mine) + 1
        for doc, a, b in zip(mine, offsets[:-1], offsets[1:], strict=True):
            assert tokens[b - 1] == sep  # each document ends with one [SEP] …
            assert tokens[a:b - 1].tolist() == tok.encode(doc, add_special_tokens=False).ids
    assert not list(out.glob("*.tmp"))


def test_dtype_choice(tmp_path, corpus):
    assert token_files.token_dtype(65536) == np.uint16
    assert token_files.token_dtype(65537) == np.uint32
    with pytest.raises(UserError, match="does not fit uint32"):
        token_files.token_dtype(2**32 + 1)
    big = bert_style_tokenizer(tmp_path / "big.json", extra_words=70_000)
    path, docs = corpus
    cfg = load_cfg(tmp_path, [path], **{"tokenizer.path": tmp_path / "big.json"})
    out = prepare.ensure_prepared(cfg)
    meta = prepare.read_meta(out)
    assert meta["dtype"] == "uint32" and meta["special_tokens"]["sep"] == 102
    tokens, offsets = read_split(out, "train")
    assert tokens[: offsets[1] - 1].tolist() == big.encode(docs[0], add_special_tokens=False).ids


def test_rerun_is_a_no_op_and_changes_rebuild(tmp_path, corpus, capsys):
    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    stamp = (out / "meta.json").stat().st_mtime_ns
    prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    assert "up to date" in capsys.readouterr().err
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    write_corpus(path, 61)  # changed input
    prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    assert prepare.read_meta(out)["inputs"]["sources"][0]["bytes"] == path.stat().st_size
    before = prepare.read_meta(out)["created"], (out / "meta.json").stat().st_mtime_ns
    prepare.ensure_prepared(load_cfg(tmp_path, [path], **{"tokenizer.vocab_size": 280}))
    assert "preparing" in capsys.readouterr().err  # changed tokenizer settings
    assert (out / "meta.json").stat().st_mtime_ns != before[1]


def test_touched_source_with_same_content_is_not_rebuilt(tmp_path, corpus, capsys):
    """A copy or checkout changes mtimes only: rebuilding would retrain the tokenizer (not
    reproducible) under every run trained on this directory."""
    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    tok_sha = prepare.read_meta(out)["tokenizer_sha256"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    assert "contents are unchanged" in capsys.readouterr().err
    meta = prepare.read_meta(out)
    assert meta["tokenizer_sha256"] == tok_sha
    assert meta["inputs"]["sources"][0]["mtime_ns"] == path.stat().st_mtime_ns
    text = path.read_text()  # same size, different content: rebuilt
    path.write_text(text.replace("a", "b", 1))
    assert path.stat().st_size == meta["inputs"]["sources"][0]["bytes"]
    prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    assert "preparing" in capsys.readouterr().err


def test_interrupted_run_is_never_taken_as_complete(tmp_path, corpus, monkeypatch, capsys):
    path, _ = corpus
    cfg = load_cfg(tmp_path, [path])
    out = prepare.ensure_prepared(cfg)
    old = {f.name: f.read_bytes() for f in out.iterdir()}
    write_corpus(path, 70, seed=1)

    def crash(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_stage_meta", crash)  # dies just before the renames
    with pytest.raises(KeyboardInterrupt):
        prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    # The earlier preparation is whole (and its meta names the old inputs, so it is rebuilt).
    assert {f.name: f.read_bytes() for f in out.iterdir()} == old
    monkeypatch.undo()
    capsys.readouterr()
    prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    assert "preparing" in capsys.readouterr().err
    # A file cut short after the fact (e.g. a copy that died) is caught by its size.
    with open(out / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError, match="wrong size"):
        prepare.read_meta(out)


def test_a_killed_preparers_temporaries_go_even_when_nothing_is_rebuilt(tmp_path, corpus,
                                                                        capsys):
    # SIGKILL leaves corpus-sized *.tmp files; a rerun that found the data up to date kept them.
    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    for name in ("train.bin.tmp", "validation.lengths.tmp", "tokenizer.json.tmp"):
        (out / name).write_bytes(b"left by a killed prepare")
    (out / "notes.tmp").write_text("not ours")
    prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    assert "up to date" in capsys.readouterr().err
    assert [p.name for p in out.glob("*.tmp")] == ["notes.tmp"]


def start_big_prepare(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A prepare of 10,000 documents (~3 MB), returned once it is writing its token file."""
    path = tmp_path / "big.txt"
    block = "\n\n".join(" ".join(sentences(6, seed=i)) for i in range(100))
    path.write_text("\n\n".join([block] * 100))
    out = tmp_path / "killed"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"data": {"dir": str(out), "sources": [str(path)]},
                               "tokenizer": {"vocab_size": 300}}))
    proc = subprocess.Popen([sys.executable, "-m", "bertjax.prepare", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "train.bin.tmp").exists() or not (out / "train.bin.tmp").stat().st_size:
        assert proc.poll() is None and time.monotonic() < deadline, "prepare ended too soon"
        time.sleep(0.01)
    return proc, out, cfg


@pytest.mark.slow
def test_sigterm_while_tokenizing_removes_the_temporaries(tmp_path):
    """SIGTERM (a scheduler's time limit, kill) stops as Ctrl-C does: one line, exit 143 as a
    training loop's (it was 130, Ctrl-C's), and the cleanup runs (without it the process
    vanished and left corpus-sized .tmp files)."""
    proc, out, _ = start_big_prepare(tmp_path)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted (SIGTERM)"), stderr
    assert "Traceback" not in stderr
    assert not list(out.glob("*.tmp")) and not (out / "meta.json").exists()


@pytest.mark.parametrize("stop, code", [
    (lambda: os.kill(os.getpid(), signal.SIGTERM), 143), (KeyboardInterrupt, 130)])
def test_a_command_stopped_by_a_signal_exits_with_its_code(stop, code, capsys):
    """prepare, export and predict exit as a shell reports a process a signal ended, as the
    training loops do after saving: SIGTERM 143 (it was 130), Ctrl-C 130."""
    def main(argv):
        if stop is KeyboardInterrupt:
            raise KeyboardInterrupt
        stop()
        time.sleep(5)  # the handler raises here

    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            cli(main)
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert stopped.value.code == code
    assert capsys.readouterr().err.startswith("error: interrupted (SIG")


def test_a_sigterm_once_the_work_is_done_ends_nothing_and_exits_0():
    """A SIGTERM in the interpreter's last half second (jax's teardown, after an export's bundle
    was complete and reported) exited 143 and said nothing. Here the teardown is an atexit
    sleep: the signal came into it as an interruption (a traceback)."""
    code = ("import atexit, time; from bertjax.errors import cli; atexit.register(time.sleep, 3); "
            "atexit.register(print, 'done', flush=True); cli(lambda argv: None)")  # done, sleep
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "done\n"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (0, "")


@pytest.mark.slow
def test_killed_process_leaves_nothing_that_looks_complete(tmp_path):
    """A real SIGKILL in the middle of tokenizing (no cleanup code runs)."""
    proc, out, cfg = start_big_prepare(tmp_path)
    proc.kill()
    proc.wait()
    assert list(out.glob("*.tmp")) and not (out / "meta.json").exists()
    with pytest.raises(UserError, match="no meta.json"):
        prepare.read_meta(out)
    prepare.ensure_prepared(config.load([cfg]))  # the next run rebuilds and cleans up
    assert prepare.read_meta(out)["splits"]["train"]["documents"] == 9_900
    assert not list(out.glob("*.tmp"))


def test_jsonl_parquet_and_max_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = sentences(30)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    pq.write_table(pa.table({"body": texts}), tmp_path / "b.parquet")
    out = prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "a.jsonl", tmp_path / "b.parquet"],
                                           text_column="body", max_documents=50))
    meta = prepare.read_meta(out)
    assert sum(s["documents"] for s in meta["splits"].values()) == 50
    with pytest.raises(UserError, match="no 'text' field"):
        list(sources.jsonl_pieces(tmp_path / "a.jsonl", "text"))
    with pytest.raises(UserError, match="has no column 'text'"):
        list(sources.parquet_pieces(tmp_path / "b.parquet", "text"))


def test_the_tokenizer_sample_spans_every_parquet_source(tmp_path, monkeypatch):
    """The sample's stride came from the files' sizes, and parquet is compressed: on the
    shared Wikipedia + Gutenberg as parquet it stopped at 103,164 of 114,937 documents, and the
    tokenizer never saw the last 37 % of the second source. Here a.parquet compresses ~10x."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = {name: [f"{name} {i} " + " ".join(sentences(2, seed=i)) * 20 for i in range(40)]
            for name in ("alpha", "omega")}
    for name, texts in docs.items():
        pq.write_table(pa.table({"text": texts}), tmp_path / f"{name}.parquet")
    cfg = load_cfg(tmp_path, [tmp_path / "alpha.parquet", tmp_path / "omega.parquet"]).data
    chars = sum(len(t) for texts in docs.values() for t in texts)
    monkeypatch.setattr(prepare, "TOKENIZER_SAMPLE_CHARS", chars // 3)
    assert chars <= sources.total_bytes(cfg) < 1.1 * chars
    sample = [text for text, _, _ in prepare._tokenizer_sample(cfg)]
    assert sum(text.startswith("omega") for text in sample) > 5


def test_the_tokenizer_sample_reads_every_document_under_max_documents(tmp_path, monkeypatch):
    """The stride came from the whole corpus's size while only data.max_documents were read:
    200 of the shared Wikipedia + Gutenberg sampled 50 documents for the tokenizer."""
    write_corpus(tmp_path / "c.txt", 400)
    cfg = load_cfg(tmp_path, [tmp_path / "c.txt"], max_documents=30).data
    monkeypatch.setattr(prepare, "TOKENIZER_SAMPLE_CHARS", (tmp_path / "c.txt").stat().st_size // 4)
    assert sum(ends for _, ends, _ in prepare._tokenizer_sample(cfg)) == 30


def test_long_documents_stream_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHUNK", 64)
    text = "one two three\nfour five\n\n\n  \nsix seven\neight\n\nnine"
    (tmp_path / "t.txt").write_text(text)
    pieces = list(sources.text_pieces(tmp_path / "t.txt"))
    docs = "".join(t if not end else t + "\x00" for t, end in pieces).split("\x00")[:-1]
    assert [d.split() for d in docs] == [["one", "two", "three", "four", "five"],
                                        ["six", "seven", "eight"], ["nine"]]
    monkeypatch.setattr(sources, "READ_CHUNK", 8)  # documents longer than a read come in pieces
    pieces = list(sources.text_pieces(tmp_path / "t.txt"))
    assert any(not end for _, end in pieces) and sum(end for _, end in pieces) == 3
    assert " ".join(t for t, _ in pieces).split() == text.split()
    rows = [{"text": "alpha beta gamma delta epsilon zeta eta theta"}, {"text": "iota"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_cfg(tmp_path, [tmp_path / "t.jsonl"]).data
    cut = list(sources.pieces(cfg))  # a long row is cut at whitespace, never inside a word
    assert all(len(t) <= 8 for t, _ in cut) and [end for _, end in cut].count(True) == 2
    joined = "".join(t + "\x00" * end for t, end in cut).split("\x00")[:-1]
    assert [d.split() for d in joined] == [r["text"].split() for r in rows]


def test_one_long_line_streams_in_pieces_cut_between_words(tmp_path, monkeypatch):
    """A corpus of one line (text8, a minified dump) was held whole and rescanned on every read:
    quadratic (52 MB took 7 s, 13 MB 0.4 s). Now cut at spaces, else anywhere (CJK)."""
    monkeypatch.setattr(sources, "READ_CHUNK", 64)
    for text in (" ".join(sentences(100)), "\u4e2d\u6587" * 1000 + "\n\nnext"):
        (tmp_path / "t.txt").write_text(text)
        pieces = list(sources.text_pieces(tmp_path / "t.txt"))
        assert "".join(t for t, _ in pieces).replace("\n\n", "") == text.replace("\n\n", "")
        assert max(len(t) for t, _ in pieces) <= 2 * 64 and len(pieces) > 10
        assert [end for _, end in pieces].count(True) == 1 + ("next" in text)
        if "next" not in text:  # between words: each piece after the first starts at a space
            assert all(t.startswith(" ") for t, _ in pieces[1:])


@pytest.mark.slow
def test_stdlib_builtin_is_deterministic_and_prepares(tmp_path):
    first = [p for p, _ in zip(sources._read_stdlib(), range(120), strict=False)]
    again = [p for p, _ in zip(sources._read_stdlib(), range(120), strict=False)]
    assert first == again and all(end for _, end in first)
    cfg = config.load([ROOT / "configs" / "demo.yaml"],
                      [f"data.dir={tmp_path / 'demo'}", "data.max_documents=120",
                       "tokenizer.vocab_size=1000"])
    meta = prepare.read_meta(prepare.ensure_prepared(cfg))
    assert meta["splits"]["train"]["tokens"] > 10_000


def test_suffixes_match_in_any_case_and_json_documents_are_named(tmp_path):
    """a.JSONL was read as plain text (JSON syntax trained on, exit 0); a .json file was read as
    text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.JSONL").write_text(json.dumps({"text": "one"}) + "\n")
    pq.write_table(pa.table({"text": ["two"]}), tmp_path / "b.Parquet")
    cfg = load_cfg(tmp_path, [tmp_path / "a.JSONL", tmp_path / "b.Parquet"])
    assert list(sources.pieces(cfg.data)) == [("one", True), ("two", True)]
    (tmp_path / "d.json").write_text(json.dumps([{"text": "three"}]))
    with pytest.raises(UserError, match=r"d.json: its first line is not one JSON object, and a "
                                        r".json source is read as JSON lines .*jq -c '.\[\]'"):
        prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "d.json"], dir=tmp_path / "p"))
    assert not (tmp_path / "p").exists()  # refused before data.dir is created


COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def test_gz_bz2_and_xz_sources_prepare_as_their_plain_text(tmp_path):
    """A .gz file was refused ("decompress it first"): a Wikipedia .txt.bz2 or C4-style
    .jsonl.gz had to be written out in full first. Now they are read as they stream, text and
    .jsonl alike, into the same token files as their plain copies."""
    plain, compressed = tmp_path / "plain", tmp_path / "compressed"
    plain.mkdir(), compressed.mkdir()
    docs = write_corpus(plain / "a.txt", 60)
    (plain / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:20]))
    names = {"a.txt": ".gz", "b.jsonl": ".bz2"}
    for name, suffix in names.items():
        (compressed / (name + suffix)).write_bytes(COMPRESSORS[suffix]((plain / name).read_bytes()))
    (plain / "c.txt").write_text("Ünïcode text, BOM first.\n", encoding="utf-8-sig")
    (compressed / "c.TXT.xz").write_bytes(lzma.compress((plain / "c.txt").read_bytes()))
    # One tokenizer for both: WordPiece training can differ between two runs on the same text
    # (upstream), which would change the tokens, not the text read.
    bert_style_tokenizer(tmp_path / "tokenizer.json")
    out, read = {}, {}
    for where, names_there in ((plain, ["a.txt", "b.jsonl", "c.txt"]),
                               (compressed, ["a.txt.gz", "b.jsonl.bz2", "c.TXT.xz"])):
        cfg = load_cfg(tmp_path, [where / f for f in names_there], dir=where / "prepared",
                       **{"tokenizer.path": tmp_path / "tokenizer.json"})
        read[where] = list(sources.pieces(cfg.data))
        out[where] = prepare.ensure_prepared(cfg)
    assert read[plain] == read[compressed] and len(read[plain]) == 81
    for name in ("train.bin", "validation.bin"):
        assert (out[plain] / name).read_bytes() == (out[compressed] / name).read_bytes(), name
    assert (prepare.read_meta(out[plain])["splits"]
            == prepare.read_meta(out[compressed])["splits"])


def test_json_lines_named_json_are_read_as_c4_ships_them(tmp_path):
    """C4's c4-train.*.json.gz (and Dolma's, and many exports) hold JSON lines under .json:
    refused, they had to be renamed one by one."""
    rows = [{"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.com/"}
            for t in sentences(20)]
    lines = "\n" + "".join(json.dumps(row) + "\n" for row in rows)  # a blank line first
    (tmp_path / "c4-train.00000-of-01024.json.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "plain.JSON").write_text(lines)
    for name in ("c4-train.00000-of-01024.json.gz", "plain.JSON"):
        cfg = load_cfg(tmp_path, [tmp_path / name])
        assert list(sources.pieces(cfg.data)) == [(t, True) for t in sentences(20)], name


def test_a_compressed_sources_size_is_its_texts_for_the_tokenizer_sample(tmp_path):
    """The sample's stride and the progress bar's total come from the sources' sizes: a
    compressed file's is its text's, estimated from its first MiB (not 3-4 times too small)."""
    write_corpus(tmp_path / "c.txt", 15_000)
    text = (tmp_path / "c.txt").read_bytes()
    assert len(text) > 2 << 20  # more than the MiB the estimate reads
    for suffix, compress in COMPRESSORS.items():
        (tmp_path / f"c.txt{suffix}").write_bytes(compress(text))
        cfg = load_cfg(tmp_path, [tmp_path / f"c.txt{suffix}"]).data
        assert 0.9 * len(text) < sources.total_bytes(cfg) < 1.1 * len(text), suffix
    (tmp_path / "s.txt.gz").write_bytes(gzip.compress(b"short\n"))
    assert sources.total_bytes(load_cfg(tmp_path, [tmp_path / "s.txt.gz"]).data) == 6


@pytest.mark.parametrize("case, message", [
    ("c.txt.zst", r"c.txt.zst is compressed \(.zst\); decompress it first \(e.g. unzstd "
                  r".*c.txt.zst\) .*or compress it as .gz, .bz2 or .xz"),
    ("c.parquet.gz", r"c.parquet.gz: a parquet file compresses its own pages .*\(e.g. gunzip -k "
                     r".*c.parquet.gz\)"),
    ("c.json.gz", r"c.json.gz: its first line is not one JSON object"),  # one document
    ("pretty.json", r"pretty.json: its first line is not one JSON object"),
    ("utf16.json", r"utf16.json is UTF-16 text; .*iconv -f utf-16 -t utf-8"),
    ("c.tar.gz", r"c.tar.gz is an archive of files; extract it \(e.g. tar xf .*c.tar.gz\)"),
    ("c.tgz", r"c.tgz is an archive of files; extract it"),
    ("c.csv.bz2", r"c.csv.bz2: .csv is not read; .*c.read_csv\('.*c.csv.bz2'\), '.*c.parquet'\)"),
    ("cut.txt.gz", r"cut.txt.gz does not decompress as .gz \(Compressed file ended before the "
                   r"end-of-stream marker was reached\): it is damaged, cut short or not .gz at "
                   r"all; download or compress it again, or drop it from data.sources"),
    ("cut.txt.bz2", r"cut.txt.bz2 does not decompress as .bz2 \(Compressed file ended before"),
    ("cut.txt.xz", r"cut.txt.xz does not decompress as .xz \(Compressed file ended before"),
    ("plain.txt.bz2", r"plain.txt.bz2 does not decompress as .bz2 \(Invalid data stream\)"),
    ("damaged.jsonl.xz", r"damaged.jsonl.xz does not decompress as .xz \(.*\)"),
    ("latin1.txt.gz", r"latin1.txt.gz line 2: not valid UTF-8 \(byte 0xe9 at column 4, offset "
                      r"in the decompressed text 7\); convert it"),
])
def test_a_bad_compressed_source_is_one_line_and_nothing_is_prepared(tmp_path, case, message):
    body = "".join(json.dumps({"text": t}) + "\n" for t in sentences(3000)).encode()

    def cut(data: bytes) -> bytes:  # a download cut short
        return data[:len(data) // 2]

    def overwritten(data: bytes) -> bytes:  # 64 bytes in the middle damaged
        middle = len(data) // 2
        return data[:middle] + b"\xff" * 64 + data[middle + 64:]

    contents = {
        **{f"cut.txt{suffix}": cut(compress(body)) for suffix, compress in COMPRESSORS.items()},
        "plain.txt.bz2": body,  # named .bz2, never compressed
        "damaged.jsonl.xz": overwritten(lzma.compress(body)),
        "latin1.txt.gz": gzip.compress("one\ncaf\xe9\n".encode("latin-1")),
        "c.json.gz": gzip.compress(json.dumps([{"text": t} for t in sentences(3)]).encode()),
        "pretty.json": json.dumps({"text": "one"}, indent=2).encode(),
        "utf16.json": (json.dumps({"text": "one"}) + "\n").encode("utf-16"),
    }
    (tmp_path / case).write_bytes(contents.get(case, gzip.compress(body)))
    with pytest.raises(UserError, match=message):
        prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / case]))
    assert not (tmp_path / "prepared").exists()


def test_a_tokenizer_saved_with_truncation_or_padding_on_cuts_no_document(tmp_path):
    """tokenizer.path saved after enable_truncation / enable_padding: each document was cut to
    16 tokens and padded with [PAD] written into train.bin as text (a CLI run: 954 [PAD] of
    2,700 tokens, 3,892 without the settings), exit 0."""
    write_corpus(tmp_path / "c.txt", 40)
    plain = bert_style_tokenizer(tmp_path / "plain.json")
    plain.enable_truncation(16)
    plain.enable_padding(pad_id=0, pad_token="[PAD]", length=24)
    plain.save(str(tmp_path / "set.json"))
    bins = []
    for name in ("plain", "set"):
        out = prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "c.txt"], dir=tmp_path / name,
                                               **{"tokenizer.path": tmp_path / f"{name}.json"}))
        bins.append((out / "train.bin").read_bytes())
    assert bins[0] == bins[1]


def test_a_cased_request_with_an_uncased_tokenizer_path_warns(tmp_path):
    """tokenizer.lowercase=false beside an uncased tokenizer.path: prepared lowercased, silently
    (the setting only trains a tokenizer)."""
    write_corpus(tmp_path / "c.txt", 20)
    bert_style_tokenizer(tmp_path / "uncased.json")
    cfg = load_cfg(tmp_path, [tmp_path / "c.txt"], **{"tokenizer.path": tmp_path / "uncased.json",
                                                      "tokenizer.lowercase": "false"})
    with pytest.warns(UserWarning, match=r"tokenizer.lowercase=false does not apply to "
                                         r"tokenizer.path=.*uncased.json, which lowercases"):
        prepare.ensure_prepared(cfg)



def test_a_bert_vocab_txt_as_tokenizer_path_prepares_as_its_tokenizer_json(tmp_path, corpus,
                                                                          capsys):
    """tokenizer.path=vocab.txt (BERT's own vocabulary, to pretrain as original BERT did): the
    prepared tokenizer.json is the tokenizer it stands for, and its tokenizer_config.json counts
    as an input (a changed lowercasing prepares again)."""
    path, _ = corpus
    shutil.copytree(ROOT / "tests" / "fixtures" / "vocab_txt" / "uncased", tmp_path / "bert")
    vocab = tmp_path / "bert" / "vocab.txt"
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path], **{"tokenizer.path": vocab}))
    tok = tokenizer.load(out / "tokenizer.json")
    assert (out / "tokenizer.json").read_bytes() == tokenizer.file_bytes(vocab, tok)
    assert tokenizer.lowercases(tok) and tokenizer.special_tokens(tok) == (0, 11, 12, 13, 14)
    prepare.ensure_prepared(load_cfg(tmp_path, [path], **{"tokenizer.path": vocab}))
    assert "up to date" in capsys.readouterr().err
    (tmp_path / "bert" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    prepare.ensure_prepared(load_cfg(tmp_path, [path], **{"tokenizer.path": vocab}))
    assert "preparing" in capsys.readouterr().err
    assert not tokenizer.lowercases(tokenizer.load(out / "tokenizer.json"))


def test_a_directory_as_tokenizer_path_stands_for_its_tokenizer_file(tmp_path, corpus):
    """Google's BERT release folder or a Hugging Face model directory, as a hub id would be
    read: it was "is a directory, not a file; set tokenizer.path to a tokenizer.json", not even
    naming vocab.txt."""
    path, _ = corpus
    shutil.copytree(ROOT / "tests" / "fixtures" / "vocab_txt" / "uncased", tmp_path / "bert")
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path],
                                           **{"tokenizer.path": tmp_path / "bert"}))
    vocab = tmp_path / "bert" / "vocab.txt"
    assert (out / "tokenizer.json").read_bytes() == \
        tokenizer.file_bytes(vocab, tokenizer.load(vocab))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"tokenizer.path=.*empty is a directory without a "
                                        r"tokenizer.json or vocab.txt; set tokenizer.path to "):
        prepare.ensure_prepared(load_cfg(tmp_path, [path], **{"tokenizer.path": tmp_path /
                                                              "empty"}))


def test_a_lowercasing_normalizer_is_told_by_what_it_does():
    """Only BertNormalizer's `lowercase` field was read: a Sequence holding Lowercase (how the
    tokenizers library's WordPiece examples build one) lowercased a cased request silently, and
    its Hugging Face export said do_lower_case false."""
    from tokenizers import Tokenizer, models
    from tokenizers import normalizers as n

    cases = {n.BertNormalizer(lowercase=True): True, n.BertNormalizer(lowercase=False): False,
             n.Sequence([n.NFD(), n.Lowercase(), n.StripAccents()]): True,
             n.Sequence([n.NFD(), n.StripAccents()]): False, None: False}
    for normalizer, lowercases in cases.items():
        tok = Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
        if normalizer is not None:
            tok.normalizer = normalizer
        assert tokenizer.lowercases(tok) == lowercases, normalizer


def test_a_csv_or_tsv_source_is_refused_with_a_conversion_that_works(tmp_path):
    """A .csv was read as plain text: its header, ids and quotes trained on (one document of a
    60-document table), exit 0. The message's own conversion command makes a parquet file."""
    import pyarrow.parquet as pq

    docs = write_corpus(tmp_path / "c.txt", 6)
    with open(tmp_path / "c.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "text"], *enumerate(docs)])
    (tmp_path / "t.tsv").write_text("id\ttext\n0\tA \"quoted\" cat.\n")
    for name in ("c.csv", "t.tsv"):
        with pytest.raises(UserError, match=rf"{name}: \.[ct]sv is not read; .*python -c ") as e:
            prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / name], dir=tmp_path / "p"))
        assert not (tmp_path / "p").exists()
        command = re.search(r'python -c "(.*)", and set data.text_column', str(e.value))[1]
        subprocess.run([sys.executable, "-c", command], check=True)
    assert pq.read_table(tmp_path / "c.parquet")["text"].to_pylist() == docs
    assert pq.read_table(tmp_path / "t.parquet")["text"].to_pylist() == ['A "quoted" cat.']


def test_a_glob_matching_directories_names_them(tmp_path):
    """`text/*` over WikiExtractor's text/AA/wiki_00 layout: "matches no file; check the path"
    though the path was right; with a file beside them, the directories' files were skipped
    without a word. `**` reads them."""
    (tmp_path / "text" / "AA").mkdir(parents=True)
    write_corpus(tmp_path / "text" / "AA" / "wiki_00", 5)
    deeper = str(tmp_path / "text" / "**" / "*")
    with pytest.raises(UserError, match=rf"matches no file, only 1 directory \(AA\); write "
                                        rf"'{re.escape(deeper)}' to read the files under them"):
        source_files.local_files(load_cfg(tmp_path, [tmp_path / "text" / "*"]).data)
    write_corpus(tmp_path / "text" / "top.txt", 5)
    with pytest.warns(UserWarning, match=rf"matches 1 directory \(AA\), whose files are not "
                                         rf"read; write '{re.escape(deeper)}' to read them too"):
        assert source_files.local_files(load_cfg(tmp_path, [tmp_path / "text" / "*"]).data) == \
            [tmp_path / "text" / "top.txt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(source_files.local_files(load_cfg(tmp_path, [deeper]).data)) == 2
    with pytest.raises(UserError, match=r"pattern '.*\*\.nothing' matches no file"):
        # after a good one
        source_files.local_files(load_cfg(tmp_path, [deeper, tmp_path / "*.nothing"]).data)


def test_a_file_name_holding_glob_characters_is_that_file(tmp_path):
    """'book[1].txt' was read as a pattern: it trained on book1.txt (exit 0), or "matches no
    file" though it existed."""
    write_corpus(tmp_path / "book[1].txt", 3)
    assert source_files.local_files(load_cfg(tmp_path, [tmp_path / "book[1].txt"]).data) == \
        [tmp_path / "book[1].txt"]
    write_corpus(tmp_path / "book1.txt", 3, seed=1)
    assert source_files.local_files(load_cfg(tmp_path, [tmp_path / "book[1].txt"]).data) == \
        [tmp_path / "book[1].txt"]


def test_a_glob_over_the_prepared_directory_reads_none_of_its_files(tmp_path):
    """data.dir inside `corpus/**/*`: the tokenizer.json.tmp being written was tokenized into
    the corpus (a CLI run: one more document, 1,897 tokens of JSON, exit 0); a rerun then
    failed on its meta.json. Its files are no source now, and the rerun is up to date."""
    (tmp_path / "corpus").mkdir()
    docs = write_corpus(tmp_path / "corpus" / "c.txt", 20)
    cfg = load_cfg(tmp_path, [tmp_path / "corpus" / "**" / "*"], dir=tmp_path / "corpus" / "p")
    out = prepare.ensure_prepared(cfg)
    assert prepare.read_meta(out)["splits"]["train"]["documents"] + \
        prepare.read_meta(out)["splits"]["validation"]["documents"] == len(docs)
    stamp = (out / "meta.json").stat().st_mtime_ns
    prepare.ensure_prepared(cfg)
    assert (out / "meta.json").stat().st_mtime_ns == stamp


def test_a_pipe_as_a_source_is_named_as_one(tmp_path):
    """`data.sources=[<(zcat corpus.gz)]` (a /dev/fd pipe) or a FIFO: "does not exist", though
    it did; prepare reads each source twice, so a pipe cannot serve."""
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match=r"pipe is not a regular file \(a pipe or a device\); "
                                        "prepare reads its sources twice"):
        source_files.local_files(load_cfg(tmp_path, [tmp_path / "pipe"]).data)
    # predict --file <(cmd), a GLUE TSV, a tokenizer: the same, with each one's own fix
    with pytest.raises(UserError, match=r"--file .*pipe is not a regular file \(a pipe or a "
                                        r"device\); or - for standard input"):
        files.check_file(tmp_path / "pipe", "--file", "or - for standard input")


def test_a_file_listed_twice_is_refused(tmp_path):
    # c.txt and a glob matching it: every document was read twice, validation ones into train.
    write_corpus(tmp_path / "c.txt", 5)
    for second in (tmp_path / "*.txt", tmp_path / ".." / tmp_path.name / "c.txt"):
        with pytest.raises(UserError, match=r"data.sources names .*c.txt twice \(.*c.txt and "
                                            r".*c.txt\); list each file once"):
            prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "c.txt", second]))


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("glob", "matches no file"),
    ("empty", "the corpus is empty"),
    ("binary", "looks binary"),
    ("utf16", r"x.txt is UTF-16 text; .*: convert it, e.g. iconv -f utf-16 -t utf-8 .*x.txt > "
              r".*x-utf8.txt"),  # was "looks binary" (Windows editors' "Unicode" text)
    ("latin1", "line 3: not valid UTF-8"),
    ("no_source", "no data source"),
])
def test_bad_input_errors(tmp_path, case, message):
    target = tmp_path / "x.txt"
    if case == "empty":
        target.write_text("\n\n   \n\n")
    elif case == "binary":
        target.write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)))
    elif case == "utf16":
        target.write_text("some text\n", encoding="utf-16")
    elif case == "latin1":
        target.write_bytes("ok line\nfine\ncaf\xe9 au lait\n".encode("latin-1"))
    srcs = {"glob": [tmp_path / "*.nothing"], "no_source": []}.get(case, [target])
    with pytest.raises(UserError, match=message):
        prepare.ensure_prepared(load_cfg(tmp_path, srcs))


def test_prepared_dir_is_used_without_its_sources(tmp_path, corpus):
    """A prepared directory copied to a machine without the corpus trains as it is, and a config
    without sources never rebuilds (which would first invalidate the directory)."""
    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    path.unlink()
    assert prepare.ensure_prepared(load_cfg(tmp_path, [])) == out
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    (out / "train.bin").write_bytes(b"")  # but it is still checked
    with pytest.raises(UserError, match="missing or has the wrong size"):
        prepare.ensure_prepared(load_cfg(tmp_path, []))


def test_tokenizer_mismatch_and_vocab_too_large_for_dtype(tmp_path, corpus):
    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "vocab_size": 70_000}))
    with pytest.raises(UserError, match="does not fit its uint16"):
        prepare.read_meta(out)
    (out / "meta.json").write_text(json.dumps(meta))
    bert_style_tokenizer(out / "tokenizer.json")  # someone swapped the tokenizer
    with pytest.raises(UserError, match="does not match the tokenizer"):
        prepare.read_meta(out)


def test_hub_offline_is_one_clear_error(tmp_path, monkeypatch, caplog):
    cfg = load_cfg(tmp_path, [], hf_dataset="wikitext", hf_config="wikitext-2-raw-v1")
    with pytest.raises(UserError, match="cannot reach the Hugging Face hub.*data.sources"):
        prepare.ensure_prepared(cfg)
    # Without HF_HUB_OFFLINE huggingface_hub logged ~20 retry lines before the error.
    datasets = pytest.importorskip("datasets")

    def unreachable(*args, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 8s [Retry 5/5].")
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    caplog.clear()
    with pytest.raises(UserError, match="cannot reach the Hugging Face hub"):
        list(sources.hub_pieces(cfg.data))
    assert not caplog.records


def test_a_local_path_as_hf_dataset_is_refused(tmp_path, monkeypatch):
    """datasets.load_dataset reads a local directory too (line by line), and prepare, which
    fingerprints a hub name only, said "up to date" after a file was added there: the old data
    trained on, exit 0. A missing path was a FileNotFoundError traceback."""
    (tmp_path / "texts").mkdir()
    write_corpus(tmp_path / "texts" / "a.txt", 5)
    monkeypatch.chdir(tmp_path)
    for name, message in ((tmp_path / "texts", r"is a local path; set data.hf_dataset=null and "
                                               r"list its files in data.sources \(e.g. .*texts/"
                                               r"\*\.txt;"),
                          ("texts", "is a local path"),
                          (tmp_path / "texts" / "a.txt", r"is a local path; .*texts/a\.txt;"),
                          ("./gone", r"does not exist \(in the current directory, .*\); local "
                                     "files go in data.sources")):
        with pytest.raises(UserError, match=rf"data.hf_dataset={name} {message}"):
            prepare.ensure_prepared(load_cfg(tmp_path, [], hf_dataset=name))
        assert not (tmp_path / "prepared").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "bertjax.prepare", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_success_and_errors(tmp_path, corpus):
    path, _ = corpus
    out = tmp_path / "cli"
    ok = run_cli(str(ROOT / "configs" / "demo.yaml"), f"data.dir={out}", "data.builtin=null",
                 f"data.sources=[{path}]", "tokenizer.vocab_size=300")
    assert ok.returncode == 0, ok.stderr
    assert prepare.read_meta(out)["splits"]["train"]["documents"] > 0
    for args, message in (([f"data.sources=[{tmp_path}/nope.txt]"], "does not exist"),
                          (["data.hf_dataset=wikitext"], "cannot reach the Hugging Face hub"),
                          ([], "usage")):
        cfg = [str(ROOT / "configs" / "demo.yaml"), f"data.dir={out}", "data.builtin=null"]
        bad = run_cli(*(cfg + args if args else []))
        assert bad.returncode == 2, bad.stderr
        errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0]  # progress lines may come before it
        assert bad.stderr.strip().splitlines()[-1] == errors[0]
        assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_shared_corpus_subset(shared_data, tmp_path):
    wiki = shared_data / "corpus" / "wikipedia_en" / "wiki_00.txt"
    out = prepare.ensure_prepared(load_cfg(tmp_path, [wiki], **{"tokenizer.vocab_size": 2000}))
    meta = prepare.read_meta(out)
    tokens, offsets = read_split(out, "train")
    assert meta["splits"]["train"]["documents"] > 500 and tokens.max() < meta["vocab_size"]
    text = tokenizer.load(out / "tokenizer.json").decode(tokens[: offsets[1]].tolist())
    assert text.startswith("jarred shaw")


def test_disk_full_keeps_the_earlier_preparation(tmp_path, corpus, monkeypatch):
    import errno

    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    old = {f.name: f.read_bytes() for f in out.iterdir()}
    write_corpus(path, 70, seed=1)  # the corpus changed: a rebuild, which runs out of space
    flush = token_files.SplitWriter.flush

    def full(self):
        flush(self)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(token_files.SplitWriter, "flush", full)
    with pytest.raises(UserError, match=r"no space left on the disk holding .*prepared while "
                                        r"writing the prepared data; nothing was half-written"):
        prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    assert {f.name: f.read_bytes() for f in out.iterdir()} == old  # no .tmp left either


def test_a_full_disk_leaves_no_token_file_open(tmp_path, corpus, monkeypatch):
    """The split files' writes fail for real (they go to /dev/full): the error closes them.
    They stayed open with their buffers until collected, where Python 3.14 reports each one
    ("Exception ignored while finalizing file ... No space left on device") after the
    one-line error (test_faults' disk-full prepare failed there)."""
    import builtins

    path, _ = corpus
    monkeypatch.setattr(token_files, "open", lambda _, mode: builtins.open("/dev/full", mode),
                        raising=False)
    with pytest.raises(UserError, match="no space left on the disk holding") as error:
        prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    # Checked while the error is held (its context's frames hold the writers), as the CLI holds
    # it until it exits: the files are closed by then, not left to the collector.
    assert error.value.__context__ is not None
    fds = Path("/proc/self/fd")
    assert [fd for fd in fds.iterdir() if os.path.realpath(fd) == "/dev/full"] == []


def test_a_data_dir_that_is_a_file_is_named(tmp_path, corpus):
    path, _ = corpus
    with pytest.raises(UserError, match=r"data.dir=.*a.txt is a file, not a directory"):
        prepare.ensure_prepared(load_cfg(tmp_path, [path], dir=path))
    with pytest.raises(UserError, match=r"data.sources entry .* is a directory; name its files"):
        prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path]))


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:"
               f"{'0' * 64}\nsize 1234\n")


def test_bad_jsonl_and_parquet_content_names_the_file(tmp_path):
    """Text JSON escapes as half a UTF-16 pair, and parquet data pages under a valid footer
    that fail to decode, are one line naming the file (and line), never a traceback from the
    tokenizer or pyarrow; nothing is prepared."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "s.jsonl").write_text('{"text": "fine"}\n{"text": "a \\ud800 b"}\n')
    with pytest.raises(UserError, match=r"s.jsonl line 2: lone surrogate U\+D800 at character 3"):
        prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "s.jsonl"]))
    assert not (tmp_path / "prepared" / "meta.json").exists()
    corrupt = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": sentences(200)}), corrupt, compression="snappy",
                   use_dictionary=False)
    column = pq.ParquetFile(corrupt).metadata.row_group(0).column(0)
    data = bytearray(corrupt.read_bytes())
    middle = column.data_page_offset + column.total_compressed_size // 2
    data[middle:middle + 40] = b"\xff" * 40
    corrupt.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"c.parquet is corrupt: reading column 'text' failed"):
        list(sources.parquet_pieces(corrupt, "text"))
    raw = pa.array([b"caf\xe9"], pa.binary())  # parquet does not enforce UTF-8 in strings
    pq.write_table(pa.table({"text": pa.Array.from_buffers(pa.string(), 1, raw.buffers())}),
                   tmp_path / "latin1.parquet")
    with pytest.raises(UserError, match=r"latin1.parquet: column 'text' holds text that is not "
                                        "valid UTF-8"):
        list(sources.parquet_pieces(tmp_path / "latin1.parquet", "text"))


def test_a_failed_preparation_leaves_no_data_dir_it_created(tmp_path):
    """A source found bad while tokenizing left data.dir holding only its .lock file."""
    (tmp_path / "s.jsonl").write_text('{"text": "fine"}\n{"text": "a \\ud800 b"}\n')
    for data_dir in (tmp_path / "new" / "prepared", tmp_path / "kept"):
        cfg = load_cfg(tmp_path, [tmp_path / "s.jsonl"], dir=data_dir)
        if data_dir.name == "kept":
            data_dir.mkdir()
        with pytest.raises(UserError, match="lone surrogate"):
            prepare.ensure_prepared(cfg)
    assert not (tmp_path / "new").exists()  # data.dir and the parent made for it
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [".lock"]  # the user's, kept


def test_a_preparer_waiting_on_a_removed_lock_starts_over(tmp_path):
    """A preparer that waits while the holder's preparation fails and removes the directory
    takes the lock on a file no longer there: it must make the directory and lock anew."""
    directory, got = tmp_path / "prepared", []
    directory.mkdir()
    holder = open(directory / files.LOCK_NAME, "a+")  # noqa: SIM115
    fcntl.flock(holder, fcntl.LOCK_EX)

    def prepare_after_the_holder():
        with prepare._locked(directory):
            got.append((directory / files.LOCK_NAME).is_file())

    waiter = threading.Thread(target=prepare_after_the_holder)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # waiting for the lock
    (directory / files.LOCK_NAME).unlink()  # what a failed holder that created it does
    directory.rmdir()
    holder.close()  # releases the lock
    waiter.join(30)
    assert got == [True]


@pytest.mark.parametrize("name", ["a.txt", "a.jsonl", "a.parquet"])
def test_an_lfs_pointer_source_is_named_before_anything_is_written(tmp_path, name):
    (tmp_path / name).write_text(LFS_POINTER)
    with pytest.raises(UserError, match=rf"{name} is a git LFS pointer.*git lfs pull"):
        prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / name]))
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("name", ["meta.json", "tokenizer.json", "train.lengths"])
def test_an_lfs_pointer_in_a_prepared_dir_is_named(tmp_path, corpus, name):
    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    (out / name).write_text(LFS_POINTER)
    with pytest.raises(UserError, match=rf"{name} is a git LFS pointer.*git lfs pull"):
        prepare.ensure_prepared(load_cfg(tmp_path, []))


def edited_meta(meta: dict, case: str) -> object:
    if case == "list":
        return [1, 2]
    if case == "no_dtype":
        return {k: v for k, v in meta.items() if k != "dtype"}
    changes = {"float32": {"dtype": "float32"}, "one_special": {"special_tokens": {"pad": 0}},
               "special_past_vocab": {"special_tokens": {**meta["special_tokens"], "sep": 10**6}},
               "negative_count": {"splits": {**meta["splits"], "train": {"tokens": -1,
                                                                        "documents": 1}}},
               "no_sources": {"inputs": {}}}
    return {**meta, **changes[case]}


@pytest.mark.parametrize("case, message", [
    ("list", "holds a JSON list, not an object"),
    ("no_dtype", "field 'dtype' is missing, not a str"),
    ("float32", r"field 'dtype' is 'float32', not one of \('uint16', 'uint32'\)"),
    ("one_special", r"field 'special_tokens' is \{'pad': 0\}"),
    ("special_past_vocab", "field 'special_tokens' is .* not ids below vocab_size"),
    ("negative_count", "field 'splits' is .* not token and document counts"),
    ("no_sources", "field 'inputs' has no list of 'sources'"),
])
def test_a_meta_json_of_the_wrong_shape_is_one_line(tmp_path, corpus, case, message):
    """Parsed but wrong (a hand edit, a mangled copy): one line naming the file and the field,
    and a fix that works (prepare rebuilds only with a source set), never a KeyError later."""
    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps(edited_meta(meta, case)))
    with pytest.raises(UserError, match=rf"meta.json: {message}.*; prepare it again: python -m "
                                        rf"bertjax.prepare CONFIG data.dir={out} with "
                                        r"data.sources \(or data.builtin"):
        prepare.ensure_prepared(load_cfg(tmp_path, []))
    prepare.ensure_prepared(load_cfg(tmp_path, [path]))  # with its source set it is rebuilt
    assert prepare.read_meta(out)["dtype"] == "uint16"


def test_lengths_that_do_not_tile_the_tokens_are_refused(tmp_path, corpus):
    """Random bytes of the right size in train.lengths once trained on billions of garbage
    'documents' at loss 0."""
    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    lengths = out / "train.lengths"
    good = lengths.read_bytes()
    lengths.write_bytes(np.random.default_rng(0).bytes(len(good)))
    with pytest.raises(UserError, match=r"train.lengths does not match its token file: the "
                                        r"document lengths sum to [\d,]+ tokens"):
        prepare.read_meta(out)
    shuffled = np.frombuffer(good, np.uint32).copy()
    shuffled[:2] = shuffled[0] + shuffled[1] - 1, 1  # same sum, but a 1-token document
    lengths.write_bytes(shuffled.tobytes())
    with pytest.raises(UserError, match=r"shortest 1; a document has at least 2"):
        prepare.read_meta(out)


def test_a_directory_that_cannot_be_created_is_one_line(tmp_path, corpus, monkeypatch):
    path, _ = corpus
    with pytest.raises(UserError, match=r"data.dir=.*a.txt/sub cannot be created: .*a.txt is a "
                                        "file, not a directory"):
        prepare.ensure_prepared(load_cfg(tmp_path, [path], dir=path / "sub"))
    with pytest.raises(UserError, match=r"train.run_dir=.*a.txt/x/y cannot be created"):
        files.check_dir_path(path / "x" / "y", "train.run_dir")
    if Path("/proc/self").is_dir():  # a pseudo file system refuses mkdir, root or not
        with pytest.raises(UserError, match=r"cannot create data.dir=/proc/bertjax-test \(No "
                                            r"such file or directory\); set data.dir to a"):
            prepare.ensure_prepared(load_cfg(tmp_path, [path], dir="/proc/bertjax-test"))
        with pytest.raises(UserError, match=r"cannot create train.run_dir=/proc/bertjax-test"):
            files.lock_dir("/proc/bertjax-test")


def test_a_full_disk_while_writing_an_open_file_names_the_file(tmp_path, monkeypatch):
    """A write to an open file that fails names no file (OSError.filename None), so the CLI's
    disk-full line said "the disk holding the output"; write_atomic names its temporary and
    removes it. (The lock file's pid: test_faults' real full disk.)"""
    import errno
    import pathlib

    def full(self, data):
        self.open("wb").close()  # created, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space left") as e:
        files.write_atomic(tmp_path / "weights.bin", b"x")
    assert e.value.filename == str(tmp_path / "weights.bin.tmp")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_prepared_dir_is_one_line(tmp_path, corpus, monkeypatch):
    """Root ignores permissions, so the refusal to open .lock for writing is injected."""
    import builtins
    import errno

    path, _ = corpus
    out = prepare.ensure_prepared(load_cfg(tmp_path, [path]))

    def read_only(file, *args, **kwargs):
        if Path(file).name != files.LOCK_NAME:
            return builtins.open(file, *args, **kwargs)
        raise OSError(errno.EROFS, "Read-only file system", str(file))

    monkeypatch.setattr(files, "open", read_only, raising=False)
    with pytest.raises(UserError, match=rf"cannot write the lock file {out}/.lock \(Read-only "
                                        r"file system\); make data.dir writable; or.*set "
                                        r"data.sources=\[\] data.builtin=null"):
        prepare.ensure_prepared(load_cfg(tmp_path, [path]))
    assert prepare.ensure_prepared(load_cfg(tmp_path, [])) == out  # the way round it


def test_bad_builtin_or_tokenizer_path_is_refused_before_data_dir_is_created(tmp_path, capsys):
    with pytest.raises(UserError, match=r"data.builtin='nope' is unknown"):
        prepare.ensure_prepared(load_cfg(tmp_path, [], builtin="nope"))
    with pytest.raises(UserError, match=r"tokenizer file .*nope.json does not exist"):
        prepare.ensure_prepared(load_cfg(tmp_path, [], builtin="stdlib",
                                         **{"tokenizer.path": tmp_path / "nope.json"}))
    assert not (tmp_path / "prepared").exists()
    assert "training the WordPiece tokenizer" not in capsys.readouterr().err


def test_a_missing_relative_path_says_it_was_looked_for_in_the_current_directory(tmp_path,
                                                                                 monkeypatch):
    """Paths in a config are read from the current directory, include: from the config's own
    folder: `cd elsewhere && prepare /repo/configs/band.yaml` said only "configs/... does not
    exist"."""
    monkeypatch.chdir(tmp_path)
    where = re.escape(f"(in the current directory, {tmp_path})")
    for sources_, fragment in (["configs/c.txt"], "entry configs/c.txt does not exist "), \
                              (["configs/*.txt"], "pattern 'configs/\\*.txt' matches no file "):
        with pytest.raises(UserError, match=fragment + where):
            prepare.ensure_prepared(load_cfg(tmp_path, sources_))
    with pytest.raises(UserError, match=r"tokenizer file configs/t.json does not exist " + where):
        prepare.ensure_prepared(load_cfg(tmp_path, [], builtin="stdlib",
                                         **{"tokenizer.path": "configs/t.json"}))
    with pytest.raises(UserError, match=r"checkpoint path runs/x does not exist " + where):
        pretrained.load_pretrained("runs/x")
    (tmp_path / "runs").mkdir()  # a path under a folder that is there: not a hub id
    with pytest.raises(UserError, match=r"model\.safetensors\) or a Hugging Face hub model id$"):
        pretrained.load_pretrained("runs/x")
    with pytest.raises(UserError, match=rf"entry {tmp_path}/c.txt does not exist; give"):
        prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "c.txt"]))  # absolute: no hint


def test_a_tokenizer_smaller_than_asked_is_said(tmp_path, corpus):
    """A corpus with too few distinct words trained a smaller vocabulary than
    tokenizer.vocab_size, and only the closing summary's "vocab N" showed it."""
    path, _ = corpus
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 100 tokens fit the 60-document corpus: nothing said
        prepare.ensure_prepared(load_cfg(tmp_path, [path], **{"tokenizer.vocab_size": 100}))
    with pytest.warns(UserWarning, match=r"the trained tokenizer has \d+ tokens, fewer than "
                                         r"tokenizer.vocab_size=50000: .* use more text") as said:
        out = prepare.ensure_prepared(load_cfg(tmp_path, [path], **{
            "tokenizer.vocab_size": 50000, "data.dir": tmp_path / "big"}))
    assert prepare.read_meta(out)["vocab_size"] < 50000
    # the tokenizer reads its sample twice; the warning counts one reading
    sample_chars = int(re.search(r"the sample of ([\d,]+) characters", str(said[0].message))
                       .group(1).replace(",", ""))
    assert 0 < sample_chars <= path.stat().st_size


def test_two_preparations_of_the_same_text_are_the_same_bytes(tmp_path, corpus):
    path, _ = corpus
    dirs = [prepare.ensure_prepared(load_cfg(tmp_path, [path], **{"data.dir": tmp_path / name}))
            for name in ("a", "b")]
    for name in ("tokenizer.json", "train.bin", "validation.bin"):
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name


def test_the_progress_bar_has_no_total_under_max_documents(tmp_path, corpus, monkeypatch):
    """Its total was every file's size while only data.max_documents were read: the bar
    stopped at a few per cent."""
    totals = []

    class Bar(token_files.tqdm):
        def __init__(self, *args, **kwargs):
            totals.append(kwargs["total"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(token_files, "tqdm", Bar)
    path, _ = corpus
    prepare.ensure_prepared(load_cfg(tmp_path, [path], max_documents=10))
    prepare.ensure_prepared(load_cfg(tmp_path, [path], **{"data.dir": tmp_path / "all"}))
    assert totals == [None, path.stat().st_size]
