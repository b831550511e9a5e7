"""Data-pipeline benchmark: `python -m bertjax.prepare` vs the Hugging Face way, and loader+masking.

    .venv/bin/python bench/data.py [--sizes 10 40] [--hf-python .venv-bench/bin/python]

Same text (subsets of ../shared/data/corpus), same tokenizer.json on both sides. The HF way is
transformers' run_mlm.py: load_dataset("text") + .map(tokenize, num_proc=2) + .map(group_texts,
num_proc=2); --hf-python needs datasets + transformers (`make bench-env` makes .venv-bench).
Each side runs in its own subprocess: wall time, peak RSS (os.wait4), bytes on disk per text
token. Loader + masking run pinned to one core with single-threaded XLA.
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "corpus"

HF_SCRIPT = r'''
import json, sys, time
from itertools import chain
t0 = time.perf_counter()
from datasets import load_dataset
from transformers import PreTrainedTokenizerFast
files, tok_file, cache, seq = json.loads(sys.argv[1])
tok = PreTrainedTokenizerFast(tokenizer_file=tok_file, unk_token="[UNK]", pad_token="[PAD]",
                              cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
raw = load_dataset("text", data_files={"train": files}, cache_dir=cache)
def tokenize_function(examples):  # run_mlm.py, line_by_line=False
    return tok(examples["text"], return_special_tokens_mask=True)
tokenized = raw.map(tokenize_function, batched=True, num_proc=2, remove_columns=["text"])
def group_texts(examples):  # run_mlm.py, verbatim apart from names
    concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
    total = len(concatenated[list(examples.keys())[0]])
    total = (total // seq) * seq
    return {k: [t[i : i + seq] for i in range(0, total, seq)] for k, t in concatenated.items()}
grouped = tokenized.map(group_texts, batched=True, num_proc=2)
n = sum(len(x) for x in tokenized["train"].with_format("arrow")["input_ids"].to_pylist())
print(json.dumps({"tokens": n, "sequences": len(grouped["train"]),
                  "seconds_after_imports": time.perf_counter() - t0}))
'''


def subset(megabytes: float) -> list[Path]:
    """Corpus files round-robin over its directories (so every size has a similar mix of
    Wikipedia, Gutenberg and the Bible) until their size reaches `megabytes`."""
    per_dir = [sorted(d.glob("*.txt")) for d in sorted(CORPUS.iterdir()) if d.is_dir()]
    order = [f for group in itertools.zip_longest(*per_dir) for f in group if f is not None]
    files, total = [], 0
    for path in order:
        if total >= megabytes * 1e6:
            break
        files.append(path)
        total += path.stat().st_size
    return files


def run(cmd: list[str], env: dict | None = None) -> tuple[float, float, str, str]:
    """Wall seconds, peak RSS in MB (its largest process, workers included), stdout, stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not a running max
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"{cmd[:3]} failed:\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout, stderr


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_tokenizer(work: Path, files: list[Path]) -> Path:
    sys.path.insert(0, str(ROOT))
    from bertjax import tokenizer
    from bertjax.config import TokenizerConfig

    path = work / "tokenizer.json"
    if not path.exists():
        def texts():  # tokenizer.train reads them twice
            for f in files:
                with open(f, encoding="utf-8") as lines:
                    yield from lines

        tokenizer.save(tokenizer.train(texts, TokenizerConfig(vocab_size=8192)), path)
    return path


def ours(work: Path, files: list[Path], tok: Path | None, name: str) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = work / f"{name}.yaml"
    cfg.write_text(json.dumps({"data": {"dir": str(out), "sources": [str(f) for f in files]},
                               "tokenizer": {"path": str(tok) if tok else None}}))
    seconds, rss, _, _ = run([sys.executable, "-m", "bertjax.prepare", str(cfg)])
    meta = json.loads((out / "meta.json").read_text())
    parts = {kind: sum(p.stat().st_size for p in out.glob(f"*{kind}"))
             for kind in (".bin", ".lengths", ".json")}
    return {"seconds": seconds, "rss_mb": rss, "tokens": meta["text_tokens"],
            "disk": dir_bytes(out), "parts": parts, "dir": out}


def huggingface(work: Path, files: list[Path], tok: Path, hf_python: str) -> dict:
    cache = work / "hf_cache"
    shutil.rmtree(cache, ignore_errors=True)
    arg = json.dumps([[str(f) for f in files], str(tok), str(cache), 128])
    seconds, rss, out, _ = run([hf_python, "-c", HF_SCRIPT, arg],
                               {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    result = json.loads(out.strip().splitlines()[-1])
    return {"seconds": seconds, "rss_mb": rss, "tokens": result["tokens"],
            "disk": dir_bytes(cache), "inner_seconds": result["seconds_after_imports"]}


LOADER_SCRIPT = r'''
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from bertjax.data import PretrainData
from bertjax.masking import mask_tokens
from bertjax.tokenizer import continuation_pieces, load
directory, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = PretrainData(directory, "train", 128, "mlm", seed=0)
meta = json.load(open(f"{directory}/meta.json"))
def masker(continuation=None):
    return jax.jit(lambda k, i, a: mask_tokens(k, i, a, rate=0.15, max_predictions=20,
                   vocab_size=meta["vocab_size"], special=data.special, continuation=continuation))
mask = masker()
whole_words = masker(continuation_pieces(load(f"{directory}/tokenizer.json")))
key = jax.random.key(0)
def step(s):
    rows = data.rows(s * batch, batch)
    return mask(jax.random.fold_in(key, s), jnp.asarray(rows["input_ids"]),
                jnp.asarray(rows["attention_mask"]))
jax.block_until_ready(step(0))
def timed(fn):
    t = time.perf_counter()
    for s in range(1, steps + 1):
        out = fn(s)
    jax.block_until_ready(out)
    return batch * 128 * steps / (time.perf_counter() - t)
loader = timed(lambda s: data.rows(s * batch, batch)["input_ids"])
rows = data.rows(0, batch)
ids, att = jnp.asarray(rows["input_ids"]), jnp.asarray(rows["attention_mask"])
masking = timed(lambda s: mask(jax.random.fold_in(key, s), ids, att))
jax.block_until_ready(whole_words(key, ids, att))
masking_wwm = timed(lambda s: whole_words(jax.random.fold_in(key, s), ids, att))
both = timed(step)
pairs = {}
for objective in ("mlm+nsp", "mlm+sop"):  # sentence-pair rows: cut at sentence ends
    pair_data = PretrainData(directory, "train", 128, objective, seed=0)
    pairs[objective] = timed(lambda s: pair_data.rows(s * batch, batch)["input_ids"])
print(json.dumps({"loader": loader, "masking": masking, "masking_wwm": masking_wwm, "both": both,
                  **pairs}))
'''


def loader_and_masking(directory: Path, batch: int, steps: int) -> dict:
    env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
           "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"}
    _, _, out, _ = run(["taskset", "-c", "0", sys.executable, "-c", LOADER_SCRIPT,
                        str(directory), str(batch), str(steps)], env)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[10, 40], help="MB subsets")
    parser.add_argument("--hf-python", default=sys.executable, help="python with transformers")
    parser.add_argument("--work", default="/tmp/bertjax_bench_data", help="scratch directory")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"{CORPUS} is missing: this benchmark reads ../shared/data/corpus")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(work, subset(min(args.sizes)))
    rows = []
    for size in args.sizes:
        files = subset(size)
        mb = sum(f.stat().st_size for f in files) / 1e6
        for f in files:  # same warm page cache for both sides
            f.read_bytes()
        a = ours(work, files, tok, f"ours_{size:g}")
        b = huggingface(work, files, tok, args.hf_python)
        c = ours(work, files, None, f"ours_train_{size:g}")  # tokenizer trained too
        rows.append((mb, a, b, c))
    print_table(rows)
    speed = loader_and_masking(rows[-1][1]["dir"], args.batch, args.steps)
    print(f"\nloader + masking, 1 core, batch {args.batch} x 128, {rows[-1][0]:.1f} MB data: "
          f"loader {speed['loader'] / 1e6:.1f} M tok/s, masking {speed['masking'] / 1e6:.1f} "
          f"M tok/s (whole words {speed['masking_wwm'] / 1e6:.1f}), both "
          f"{speed['both'] / 1e6:.1f} M tok/s (target >= 10); NSP rows "
          f"{speed['mlm+nsp'] / 1e6:.1f}, SOP rows {speed['mlm+sop'] / 1e6:.1f} M tok/s")


def print_table(rows: list) -> None:
    head = (f"{'MB':>6} {'side':<24} {'s':>7} {'MB/s':>6} {'M tok/s':>8} {'peak RSS MB':>12} "
            f"{'bytes/token':>12}")
    print(head)
    print("-" * len(head))
    for mb, a, b, c in rows:
        # Text tokens: HF uses our tokenizer on the same text, so ours is the common count (its
        # own also counts a [CLS]/[SEP] per line); the trained tokenizer gives its own count.
        sides = (("ours", a, a["tokens"]), ("HF run_mlm (num_proc=2)", b, a["tokens"]),
                 ("ours + train tokenizer", c, c["tokens"]))
        for name, r, text_tokens in sides:
            print(f"{mb:6.1f} {name:<24} {r['seconds']:7.1f} {mb / r['seconds']:6.2f} "
                  f"{text_tokens / r['seconds'] / 1e6:8.3f} {r['rss_mb']:12.0f} "
                  f"{r['disk'] / text_tokens:12.2f}")
        per = {k: v / a["tokens"] for k, v in a["parts"].items()}
        print(f"{'':6} ours on disk per text token: token files {per['.bin']:.3f} (2 bytes a "
              f"token + one [SEP] a document), lengths {per['.lengths']:.3f}, tokenizer.json + "
              f"meta.json {per['.json']:.3f}")
        print(f"{'':6} ours / HF throughput: {b['seconds'] / a['seconds']:.2f}x (target >= 1.7); "
              f"HF without its imports: {b['inner_seconds']:.1f} s; HF tokens incl. per-line "
              f"[CLS]/[SEP]: {b['tokens']:,} vs our text tokens {a['tokens']:,}")


if __name__ == "__main__":
    main()
