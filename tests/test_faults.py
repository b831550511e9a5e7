"""Bad input through the front doors (issue 19): every case below runs the real CLI
(`python -m bertjax.train|predict|export|prepare`) in a subprocess on a broken config,
checkpoint, bundle, corpus or GLUE directory, and must exit 2 with exactly one `error:` line on
stderr, no traceback, and every file it was given (and every directory it writes) byte for byte
as before. Disk-full cases run on a small tmpfs (a user + mount namespace; skipped where
`unshare` cannot mount one) and check that the earlier data is intact and no temporary is left.

One small prepared corpus, one tiny run (two Orbax checkpoints, written directly: no training),
its release bundle and a GLUE RTE directory are shared by the module. With BERTJAX_FAULTS_REPORT
set to a file, each case appends its outcome as a JSON line (log.md's tables, issue 19b).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import pytest
from conftest import HUGE_BATCH, run_under_memory_cap, write_corpus

from bertjax import config, prepare
from bertjax.checkpoint import Checkpoints
from bertjax.export import export_run
from bertjax.model import Bert
from bertjax.optim import make_optimizer
from bertjax.step import init_state

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PY = sys.executable
TOTAL_STEPS = 2


@dataclasses.dataclass(frozen=True)
class World:
    """The shared, never-modified inputs (cases copy what they break)."""

    root: Path
    data: Path  # prepared data (tokenizer.json, token files, meta.json)
    run: Path  # a pretraining run: checkpoints 1 and 2, config.yaml, tokenizer.json
    bundle: Path  # the run exported
    glue: Path  # GLUE TSVs (RTE)
    pretrain_yaml: Path  # tiny pretraining config writing to a run under the case directory
    glue_yaml: Path  # RTE fine-tuning from the bundle


def tiny_overrides(root: Path) -> dict:
    return {
        "data": {"dir": str(root / "data"), "seq_len": 16, "validation_fraction": 0.1},
        "tokenizer": {"vocab_size": 300},
        "model": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
                  "max_position_embeddings": 32, "dropout": 0.0, "attention_dropout": 0.0},
        "train": {"steps": TOTAL_STEPS, "micro_batch": 8, "log_every": 1, "eval_every": 0,
                  "checkpoint_every": 1, "eval_sequences": 8},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    write_corpus(root / "corpus.txt", 60)
    (root / "prepare.yaml").write_text(json.dumps(
        {**tiny_overrides(root), "data": {**tiny_overrides(root)["data"],
                                          "sources": [str(root / "corpus.txt")]}}))
    cfg = config.load([root / "prepare.yaml"])
    prepare.ensure_prepared(cfg)
    vocab = json.loads((root / "data" / "meta.json").read_text())["vocab_size"]
    cfg = config.load([root / "prepare.yaml"], [f"model.vocab_size={vocab}",
                                                f"train.run_dir={root / 'run'}"])
    # A run as pretraining leaves it, without the minute of compiling a train step.
    model = Bert(cfg.model, key=jax.random.key(0))
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    state = init_state(model, optimizer, cfg.precision)
    (root / "run").mkdir()
    (root / "run" / "config.yaml").write_text(config.to_yaml(cfg))
    shutil.copyfile(root / "data" / "tokenizer.json", root / "run" / "tokenizer.json")
    checkpoints = Checkpoints(root / "run")
    for step in range(1, TOTAL_STEPS + 1):
        checkpoints.save(step, state, {"config_yaml": config.to_yaml(cfg), "total_steps":
                                       TOTAL_STEPS, "tokens_seen": step * 128,
                                       "tokens_before": 0, "config_hash": "x"})
    checkpoints.close()
    export_run(root / "run", root / "bundle")
    shutil.copytree(FIXTURES / "glue" / "RTE", root / "glue" / "RTE")
    (root / "pretrain.yaml").write_text(json.dumps(tiny_overrides(root)))
    (root / "glue.yaml").write_text(json.dumps({
        "include": str(ROOT / "configs" / "rte.yaml"),
        "init": {"checkpoint": str(root / "bundle")},
        "glue": {"data_dir": str(root / "glue"), "buckets": [16, 32], "batch_size": 8,
                 "epochs": 1, "seeds": [0]},
        "model": {"dropout": 0.0, "attention_dropout": 0.0}}))
    return World(root, root / "data", root / "run", root / "bundle", root / "glue",
                 root / "pretrain.yaml", root / "glue.yaml")


# ---- making broken inputs (each returns the path it broke, inside the case directory) ----
def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def array_files(step_dir: Path) -> list[Path]:
    """The files holding array data (a file may hold only optimizer moments, which loading a
    model never reads, so the cases break all of them)."""
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def broken_run(w: World, case: Path, how: str) -> Path:
    run = copy(w.run, case / "run")
    step = run / "checkpoints" / str(TOTAL_STEPS)
    if how == "array files missing":
        for f in array_files(step):
            f.unlink()
    elif how == "array files truncated":
        for f in array_files(step):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "meta missing":
        (step / "meta" / "metadata").unlink()
    elif how == "meta not json":
        (step / "meta" / "metadata").write_text("{not json")
    elif how == "meta not a dict":
        (step / "meta" / "metadata").write_text("[1, 2]")
    elif how == "state metadata missing":
        (step / "state" / "_METADATA").unlink()
    return run


def rehash(bundle: Path) -> None:
    """Recompute manifest.json's sha256 and size entries, as a careless repackaging would."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        entry["sha256"] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
        entry["size"] = (bundle / name).stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def broken_bundle(w: World, case: Path, how: str) -> Path:
    bundle = copy(w.bundle, case / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    if how == "files missing":
        del manifest["files"]
    elif how == "size not a number":
        manifest["files"]["model.safetensors"]["size"] = "big"
    elif how == "manifest a list":
        manifest = [manifest]
    elif how == "summary not a dict":
        manifest["summary"] = 5
    if how == "other tokenizer":  # the same size, two tokens' ids swapped, manifest re-hashed
        spec = json.loads((bundle / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        a, b = [t for t in vocab if not t.startswith("[")][-2:]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (bundle / "tokenizer.json").write_text(json.dumps(spec))
        rehash(bundle)
    else:
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def broken_hf(case: Path, how: str) -> Path:
    hf = copy(FIXTURES / "hf_tiny" / "mlm", case / "hf")
    c = json.loads((hf / "config.json").read_text())
    if how == "layers a string":
        c["num_hidden_layers"] = str(c["num_hidden_layers"])
    elif how == "config a list":
        c = [c]
    elif how == "dropout a string":
        c["hidden_dropout_prob"] = "none"
    (hf / "config.json").write_text(json.dumps(c))
    return hf


def broken_glue(w: World, case: Path, how: str) -> Path:
    glue = copy(w.glue, case / "glue")
    rte = glue / "RTE"
    if how == "test row short":
        with open(rte / "test.tsv", "a") as f:
            f.write("7\tonly one sentence\n")
    elif how == "test index not a number":
        with open(rte / "test.tsv", "a") as f:
            f.write("seven\tA sentence.\tAnother one.\n")
    elif how == "train header only":
        (rte / "train.tsv").write_text((rte / "train.tsv").read_text().splitlines()[0] + "\n")
    elif how == "dev not utf-8":
        with open(rte / "dev.tsv", "ab") as f:
            f.write(b"9\tCaf\xe9\tx\tentailment\n")
    elif how == "train a directory":
        (rte / "train.tsv").unlink()
        (rte / "train.tsv").mkdir()
    elif how == "test a directory":  # was skipped as absent: no submission, no word
        (rte / "test.tsv").unlink()
        (rte / "test.tsv").mkdir()
    elif how in ("test a broken link", "train a broken link"):
        name = how.split()[0] + ".tsv"
        (rte / name).unlink()
        (rte / name).symlink_to(case / "nowhere.tsv")
    return glue


def glue_args(w: World, case: Path, glue: Path | None = None, *extra: str) -> list[str]:
    return ["-m", "bertjax.train", str(w.glue_yaml), f"glue.data_dir={glue or w.glue}",
            f"train.run_dir={case / 'glue_run'}", *extra]


def pretrain_args(w: World, case: Path, *extra: str) -> list[str]:
    return ["-m", "bertjax.train", str(w.pretrain_yaml), f"train.run_dir={case / 'new_run'}",
            *extra]


def predict_args(checkpoint: Path, *extra: str) -> list[str]:
    text = [] if "--file" in extra else ["the [MASK] sat ."]  # TEXT and --file: one or the other
    return ["-m", "bertjax.predict", "fill-mask", str(checkpoint), *text, *extra]


def yaml_file(case: Path, text: str) -> Path:
    (case / "bad.yaml").write_text(text)
    return case / "bad.yaml"


@dataclasses.dataclass(frozen=True)
class Case:
    category: str
    name: str
    args: Callable[[World, Path], list[str]]  # builds the inputs under the case dir; CLI argv
    expect: str  # a fragment the error line must hold


CASES = [
    # ---- impossible values (issue 19.1): each key's domain, checked at load ----
    *[Case("impossible value", override, lambda w, c, o=override: pretrain_args(w, c, o), key)
      for override, key in [
          ("train.steps=-5", "train.steps=-5"), ("optim.lr=-1", "optim.lr=-1"),
          ("train.tokens=-100", "train.tokens"), ("optim.b2=1.5", "optim.b2=1.5"),
          ("train.micro_batch=0", "train.micro_batch=0"), ("model.num_heads=0", "model.num_heads"),
          ("model.num_layers=0", "model.num_layers=0"), ("train.log_every=0", "train.log_every"),
          ("train.seed=-1", "train.seed"),
          ("train.xla_flags=xla_gpu_enable_triton_gemm=false", "--xla_name=value"),
          # XLA's own check, before anything is prepared
          ("train.xla_flags=--xla_no_such_option=1", "No such compile option: 'xla_no_such_")]],
    *[Case("impossible value", override, lambda w, c, o=override: glue_args(w, c, None, o), key)
      for override, key in [("glue.buckets=[]", "glue.buckets"), ("glue.seeds=[]", "glue.seeds"),
                            ("glue.epochs=-1", "glue.epochs"),
                            ("glue.max_train_examples=0", "glue.max_train_examples"),
                            ("train.xla_flags=--xla_gpu_enable_triton_gemm=maybe",
                             "'maybe' is not a valid bool value")]],
    # ---- found too late (19.2): everything a run needs is read before training ----
    Case("found too late", "fill_mask sentence without [MASK]",
         lambda w, c: pretrain_args(w, c, "train.fill_mask=[a sentence]"), "[MASK]"),
    Case("found too late", "test.tsv row too short",
         lambda w, c: glue_args(w, c, broken_glue(w, c, "test row short")), "test.tsv"),
    Case("found too late", "test.tsv index not a number",
         lambda w, c: glue_args(w, c, broken_glue(w, c, "test index not a number")), "test.tsv"),
    Case("found too late", "header-only train.tsv",
         lambda w, c: glue_args(w, c, broken_glue(w, c, "train header only")), "train.tsv"),
    # ---- corrupt or incomplete checkpoints (19.3) ----
    *[Case("corrupt checkpoint", f"predict: {how}",
           lambda w, c, h=how: predict_args(broken_run(w, c, h)), "checkpoints")
      for how in ("array files missing", "array files truncated", "meta missing", "meta not json",
                  "meta not a dict", "state metadata missing")],
    Case("corrupt checkpoint", "init.checkpoint: array files missing",
         lambda w, c: glue_args(w, c, None, "init.checkpoint="
                                f"{broken_run(w, c, 'array files missing')}"), "checkpoints"),
    Case("corrupt checkpoint", "export: meta not json",
         lambda w, c: ["-m", "bertjax.export", str(broken_run(w, c, "meta not json")),
                       str(c / "out")], "checkpoints"),
    # ---- malformed bundles and Hugging Face directories (19.3, 19.4) ----
    *[Case("malformed bundle", f"manifest: {how}",
           lambda w, c, h=how: predict_args(broken_bundle(w, c, h)), "manifest.json")
      for how in ("files missing", "size not a number", "manifest a list", "summary not a dict")],
    Case("malformed bundle", "another tokenizer of the same size, manifest re-hashed",
         lambda w, c: predict_args(broken_bundle(w, c, "other tokenizer")), "tokenizer"),
    *[Case("malformed bundle", f"HF config.json: {how}",
           lambda w, c, h=how: predict_args(broken_hf(c, h)), "config.json")
      for how in ("layers a string", "config a list", "dropout a string")],
    Case("impossible value", "glue.epochs past an int32 step count",
         lambda w, c: glue_args(w, c, None, "glue.epochs=1e12"), "2**31"),
    Case("impossible value", "train.tokens past the masking's int32 row numbers",
         lambda w, c: pretrain_args(w, c, "train.steps=null", f"train.tokens={10**12}"), "2**31"),
    # ---- paths and includes (19.3, 19.5) ----
    Case("path", "train.run_dir is a file",
         lambda w, c: pretrain_args(w, c, f"train.run_dir={w.root / 'corpus.txt'}"),
         "train.run_dir"),
    Case("path", "data.dir is train.run_dir (each would wait for the other's lock)",
         lambda w, c: pretrain_args(w, c, f"data.dir={c / 'same'}", f"train.run_dir={c / 'same'}"),
         "same directory"),
    Case("path", "prepare into a run directory (its tokenizer.json)",
         lambda w, c: ["-m", "bertjax.prepare", str(w.root / "prepare.yaml"), f"data.dir={w.run}"],
         "holds a run"),
    Case("path", "data.dir is a file",
         lambda w, c: pretrain_args(w, c, f"data.dir={w.root / 'corpus.txt'}"), "data.dir"),
    Case("path", "include: 5",
         lambda w, c: ["-m", "bertjax.train", str(yaml_file(c, "include: 5\n"))], "include"),
    Case("path", "config file is a directory",
         lambda w, c: ["-m", "bertjax.train", str(c)], "directory"),
    Case("path", "glue.data_dir's train.tsv is a directory",
         lambda w, c: glue_args(w, c, broken_glue(w, c, "train a directory")), "directory"),
    Case("path", "glue.data_dir's test.tsv is a directory",
         lambda w, c: glue_args(w, c, broken_glue(w, c, "test a directory")), "directory"),
    Case("path", "glue.data_dir's test.tsv is a broken link",
         lambda w, c: glue_args(w, c, broken_glue(w, c, "test a broken link")),
         "nowhere.tsv, which does not exist"),
    Case("path", "glue.data_dir's train.tsv is a broken link",
         lambda w, c: glue_args(w, c, broken_glue(w, c, "train a broken link")),
         "nowhere.tsv, which does not exist"),
    Case("path", "predict --file is a directory",
         lambda w, c: predict_args(w.bundle, "--file", str(c)), "directory"),
    # ---- text that is not UTF-8 (19.3) ----
    Case("not UTF-8", "GLUE dev.tsv",
         lambda w, c: glue_args(w, c, broken_glue(w, c, "dev not utf-8")), "line 5"),
    Case("not UTF-8", "predict --file",
         lambda w, c: predict_args(w.bundle, "--file", str(bytes_file(c, b"a [MASK] caf\xe9\n"))),
         "line 1"),
    # ---- weak messages (19.5) ----
    Case("message", "override '=5'", lambda w, c: pretrain_args(w, c, "=5"), "=5"),
    Case("message", "model: tiny (a scalar for a section)",
         lambda w, c: ["-m", "bertjax.train", str(yaml_file(c, "model: tiny\n"))], "model"),
    Case("message", "predict --top-k x",
         lambda w, c: predict_args(w.bundle, "--top-k", "x"), "--top-k"),
    Case("message", "predict with no arguments", lambda w, c: ["-m", "bertjax.predict"],
         "usage"),
]


def bytes_file(case: Path, data: bytes) -> Path:
    (case / "inputs.txt").write_bytes(data)
    return case / "inputs.txt"


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (directories by name, so an empty new one counts)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def outcome(rc: int, stderr: str, changed: list[str], mid_run: bool = False) -> str:
    """clear | traceback | silently wrong | data changed | unclear (rc 1 or several lines)."""
    lines = stderr.strip().splitlines()
    errors = [x for x in lines if x.startswith("error:")]
    if "Traceback" in stderr:
        return "traceback"
    if rc == 0:
        return "silently wrong"
    if changed:
        return "data changed"
    one_line = len(errors) == 1 and lines[-1] == errors[0] and (mid_run or len(lines) == 1)
    return "clear" if rc == 2 and one_line else "unclear"


def record(case: str, category: str, result: str, rc: int, stderr: str,
           changed: list[str]) -> None:
    report = os.environ.get("BERTJAX_FAULTS_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"category": category, "case": case, "outcome": result, "rc": rc,
                                "traceback": "Traceback" in stderr, "changed": len(changed),
                                "stderr": stderr.strip().splitlines()[-1:]}) + "\n")


def check(case_name: str, category: str, rc: int, stderr: str, changed: list[str], expect: str,
          mid_run: bool = False) -> None:
    result = outcome(rc, stderr, changed, mid_run)
    record(case_name, category, result, rc, stderr, changed)
    assert result == "clear", (result, rc, stderr[-3000:], changed[:5])
    assert expect in stderr.strip().splitlines()[-1], stderr


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.category}: {c.name}")
def test_bad_input_is_one_line_and_changes_nothing(case, world, tmp_path):
    args = case.args(world, tmp_path)
    before = tree_hashes(world.root, tmp_path)
    out = subprocess.run([PY, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    after = tree_hashes(world.root, tmp_path)
    changed = sorted(set(before.items()) ^ set(after.items()))
    check(case.name, case.category, out.returncode, out.stderr, [k for k, _ in changed],
          case.expect)


def test_a_run_directory_no_longer_writable_is_one_line_and_keeps_the_run(world, tmp_path):
    """Resuming a run whose directory this user can no longer write (chmod a-w; for root, which
    permissions do not stop, chattr +i) was a PermissionError traceback at config.yaml.tmp: the
    lock file it already has still opens, the first new file does not."""
    run = copy(world.run, tmp_path / "run")
    (run / ".lock").touch()
    lock = ["chattr", "+i", str(run)] if os.geteuid() == 0 else ["chmod", "a-w", str(run)]
    if subprocess.run(lock, capture_output=True).returncode != 0:
        pytest.skip(f"{lock[0]} cannot lock a directory here (file system or permissions)")
    try:
        before = tree_hashes(run)
        out = subprocess.run([PY, "-m", "bertjax.train", str(world.pretrain_yaml),
                              f"train.run_dir={run}", f"train.steps={TOTAL_STEPS + 1}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        changed = sorted(set(before.items()) ^ set(tree_hashes(run).items()))  # the lock's pid:
        changed = [(k, v) for k, v in changed if not k.endswith("/.lock")]  # holding it writes it
    finally:
        subprocess.run(["chattr", "-i", str(run)] if os.geteuid() == 0 else
                       ["chmod", "u+w", str(run)], check=True)
    check("resume in a directory no longer writable", "path", out.returncode, out.stderr,
          [k for k, _ in changed], f"cannot access {run}/", mid_run=True)


# ---- disk full: a real ENOSPC on a small tmpfs ----
def can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "sh", "-c",
                               "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


HASH = ("import hashlib, json, pathlib, sys; r = pathlib.Path(sys.argv[1]); print(json.dumps("
        "{str(p.relative_to(r)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else"
        " 'dir' for p in sorted(r.rglob('*')) if 'filler' not in p.name}))")


def on_full_disk(mount: Path, setup: str, args: list[str], watch: str, free_kb: int,
                 out: Path) -> tuple[int, str, list[str]]:
    """Mount a tmpfs at `mount`, run `setup` (shell), fill the disk up to `free_kb` KiB, then
    run the CLI; returns (exit code, stderr, files under mount/watch that changed)."""
    py = f"{PY} -c \"{HASH}\" {mount / watch}"
    script = f"""set -e
mount -t tmpfs -o size=16m tmpfs {mount}
{setup}
avail=$(df --output=avail -k {mount} | tail -1)
dd if=/dev/zero of={mount}/filler bs=1k count=$((avail - {free_kb})) status=none
{py} > {out}/before.json
set +e
{PY} {' '.join(f"'{a}'" for a in args)} 2> {out}/stderr.txt
rc=$?
{py} > {out}/after.json
exit $rc
"""
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=out, timeout=600,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    stderr = (out / "stderr.txt").read_text() if (out / "stderr.txt").exists() else proc.stderr
    before = json.loads((out / "before.json").read_text())
    after = json.loads((out / "after.json").read_text())
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return proc.returncode, stderr, changed


@pytest.fixture(scope="module")
def tmpfs():
    if not can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs here (unshare -Urm); the injected ENOSPC tests in "
                    "test_export/test_prepare cover the code path")


def test_disk_full_while_preparing_keeps_the_old_data(world, tmp_path, tmpfs):
    """A rebuild (the corpus grew) hits ENOSPC: the old prepared data stays complete."""
    mount = tmp_path / "disk"
    write_corpus(tmp_path / "big.txt", 4000, seed=1)
    setup = (f"cp -r {world.data} {mount}/data && cp {world.root / 'corpus.txt'} "
             f"{tmp_path}/corpus.txt && cat {tmp_path}/big.txt >> {tmp_path}/corpus.txt")
    (tmp_path / "cfg.yaml").write_text(json.dumps({"data": {
        "dir": str(mount / "data"), "sources": [str(tmp_path / "corpus.txt")],
        "validation_fraction": 0.1}, "tokenizer": {"vocab_size": 300}}))
    rc, stderr, changed = on_full_disk(mount, setup, ["-m", "bertjax.prepare",
                                                      str(tmp_path / "cfg.yaml")],
                                       "data", 60, tmp_path)
    check("prepare: disk full", "disk full", rc, stderr, changed, "space", mid_run=True)


def test_disk_full_while_exporting_keeps_the_old_bundle(world, tmp_path, tmpfs):
    mount = tmp_path / "disk"
    setup = f"cp -r {world.bundle} {mount}/bundle"
    rc, stderr, changed = on_full_disk(mount, setup, ["-m", "bertjax.export", str(world.run),
                                                      str(mount / "bundle"), "--force"],
                                       "bundle", 30, tmp_path)
    check("export: disk full", "disk full", rc, stderr, changed, "space", mid_run=True)


def test_disk_full_at_a_checkpoint_keeps_the_earlier_ones(world, tmp_path, tmpfs):
    """Resume the run for one more step on a disk without room for its checkpoint: refused
    before writing (less room than the latest checkpoint takes), the two earlier checkpoints
    stay. (The cleanup after a write that fails midway: test_export's disk-full tests.)"""
    mount = tmp_path / "disk"
    setup = f"cp -r {world.run} {mount}/run"
    args = ["-m", "bertjax.train", str(world.pretrain_yaml), f"train.run_dir={mount / 'run'}",
            f"train.steps={TOTAL_STEPS + 1}"]
    rc, stderr, changed = on_full_disk(mount, setup, args, "run/checkpoints", 60, tmp_path)
    check("checkpoint save: disk full", "disk full", rc, stderr, changed, "space",
          mid_run=True)


@pytest.mark.parametrize("job", ["pretrain", "finetune"])
def test_disk_full_for_a_new_runs_checkpoints_stops_before_its_first_step(job, world, tmp_path,
                                                                          tmpfs):
    """A new run on a disk with less room than one checkpoint of its state (parameters and
    AdamW moments) stops before its first step, not at its first checkpoint."""
    mount = tmp_path / "disk"
    yaml = world.pretrain_yaml if job == "pretrain" else world.glue_yaml
    args = ["-m", "bertjax.train", str(yaml), f"train.run_dir={mount / 'run'}"]
    rc, stderr, changed = on_full_disk(mount, "", args, "run", 60, tmp_path)
    written = [c for c in changed if "checkpoints/" in c]
    check(f"{job}: no room for a first checkpoint", "disk full", rc, stderr, written,
          "no step was run", mid_run=True)


@pytest.mark.parametrize("job", ["pretrain", "finetune"])
def test_a_disk_with_no_room_at_all_is_named(job, world, tmp_path, tmpfs):
    """Not a byte free: the lock file's first write failed on an open file, which names no path,
    so the message said "the disk holding the output"."""
    mount = tmp_path / "disk"
    yaml = world.pretrain_yaml if job == "pretrain" else world.glue_yaml
    args = ["-m", "bertjax.train", str(yaml), f"train.run_dir={mount / 'run'}"]
    rc, stderr, changed = on_full_disk(mount, "", args, "run", 0, tmp_path)
    changed = [c for c in changed if c != ".lock"]  # created empty: its pid found no room
    check(f"{job}: no room at all", "disk full", rc, stderr, changed,
          f"no space left on the disk holding {mount / 'run' / '.lock'}", mid_run=True)


# ---- out of memory: XLA's RESOURCE_EXHAUSTED or numpy's MemoryError, real, under a cap ----
@pytest.mark.parametrize("job, batch, says", [
    ("pretrain", HUGE_BATCH, "RESOURCE_EXHAUSTED: "),
    ("finetune", HUGE_BATCH, "RESOURCE_EXHAUSTED: "),
    # the batch's row numbers alone (int64) take 16 GiB on the host: numpy's MemoryError
    ("finetune", 2**31 - 1, "Unable to allocate ")])
def test_a_step_too_large_for_memory_is_one_line_and_keeps_the_run(job, batch, says, world,
                                                                  tmp_path):
    """A batch too large for the device's memory was XLA's RESOURCE_EXHAUSTED (or numpy's
    MemoryError) under a 30-line traceback: now one line naming the keys that shrink the step,
    exit 2, and the run's checkpoints as they were (pretraining resumes the world's run for a
    third step)."""
    if job == "pretrain":
        run = copy(world.run, tmp_path / "run")
        args = ["-m", "bertjax.train", str(world.pretrain_yaml), f"train.run_dir={run}",
                f"train.steps={TOTAL_STEPS + 1}", f"train.micro_batch={batch}"]
        watched, key = run / "checkpoints", "train.micro_batch"
    else:
        watched = tmp_path / "glue_run"
        args, key = glue_args(world, tmp_path, None, f"glue.batch_size={batch}"), \
            "glue.batch_size"
    before = tree_hashes(watched) if watched.exists() else {}
    out = run_under_memory_cap(args, tmp_path)
    changed = sorted(set(before.items()) ^ set(tree_hashes(watched).items()))
    if job == "finetune":  # a new run: no file of a seed may be written (its folders are made)
        changed = [c for c in changed if "seed" in c[0] and c[1] != "dir"]
    check(f"{job}: a batch too large for memory", "out of memory", out.returncode, out.stderr,
          [k for k, _ in changed], f"out of memory ({says}", mid_run=True)
    assert key in out.stderr.strip().splitlines()[-1]
