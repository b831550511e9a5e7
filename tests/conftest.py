"""Test environment: 8 forced CPU devices, strict dtype promotion, offline, wandb disabled, one
XLA compilation cache per session (for the CLI subprocesses), how pytest-xdist spreads the files;
and the helpers several test files share (corpora, tokenizers, GLUE rows, a fake wandb, a tiny
train step, compilation counts, processes and free ports).

The environment variables must be set before jax (or datasets/wandb) is first imported, which is
why they sit at the top of conftest.py; jaxtyping's runtime checks come from pyproject's addopts
(its plugin installs the import hook before this file is loaded, so bertjax is checked).
"""

import atexit
import functools
import os
import shutil
import tempfile

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # (tests/dist_worker.py sets its own count before it imports the helpers below)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The variables by which bertjax.processes.multi_process_reason takes a shell's launcher for a
# multi-process run: pytest started inside a SLURM job of several tasks (or under mpirun) made
# every run the tests start, in process or as a CLI, wait to join processes that never come
# (SLURM_NTASKS=2: 3 of test_runlock's 7 tests failed). The tests that want a multi-process
# run say so with mesh.* keys.
for _launcher in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
                  "TPU_WORKER_HOSTNAMES"):
    os.environ.pop(_launcher, None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
# One compilation cache for the whole session, inherited by the CLI subprocesses the tests start
# (the pytest processes themselves leave it alone: see below): the tests compile the same small
# programs again and again, in new processes (a 12-step tiny pretraining run: 19.4 s, 7.7 s with
# its programs cached). The executables are the ones XLA would compile (keyed by program, flags
# and devices), so results do not change. Fresh each session: nothing an earlier jax or flag set
# wrote is read.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="bertjax-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import NamedTuple  # noqa: E402

import compile_memo  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers  # noqa: E402

from bertjax import config, glue, glue_tasks, prepare, tokenizer  # noqa: E402
from bertjax.config import GlueConfig, TokenizerConfig  # noqa: E402
from bertjax.model import Bert  # noqa: E402
from bertjax.optim import make_optimizer, schedule_args  # noqa: E402
from bertjax.precision import Precision  # noqa: E402
from bertjax.step import StepSpec, init_state, make_train_step  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
# The pytest processes themselves do not write that cache (their CLI subprocesses do). Six times
# (sessions 22-26) a pytest worker died inside XLA:CPU (a segfault, once an abort): four times in
# jax's cache write (`put_executable_and_time`, serialising an executable), once in a compile,
# once where CI's log did not show; never in a CLI subprocess. Not reproduced alone, cause
# unknown (log.md, session 26). They keep their compiled programs in memory instead
# (compile_memo.py), or, where that cannot hook this jax, compile every repeat.
if not compile_memo.install():
    jax.config.update("jax_enable_compilation_cache", False)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ---- distributing the tests over pytest-xdist workers ----
# The tests of these files share module fixtures (CLI or in-process runs, made once per worker)
# and compile the same programs (the session's compile cache serves a program only once it is
# written, so two workers compiling it side by side both pay): each file runs in one worker.
# Under `-n 2` (--dist load) both workers made test_pretrain's 6-step run, each compiling it
# cold, at the same time. The other files' tests are spread one by one, as --dist load does.
# (xdist_group marks with --dist loadgroup would say this per test, but pytest 9.2's structured
# node ids break loadgroup silently: pytest-xdist issue 1386.)
# A LoadScope scheduler deadlocks once a crashed worker is replaced (pytest-xdist 3.8, issues
# 1323 and 1378): the Makefile's test targets pass --max-worker-restart=0.
ONE_WORKER_FILES = {"test_pretrain.py", "test_finetune.py", "test_rollback.py",
                    "test_train_step.py"}


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist load (what `-n N` means), with ONE_WORKER_FILES kept whole: a LoadScope scheduler
    whose scope is the file for those and the test itself for the rest. Its default reordering
    sends the largest scopes (these files) first. Another --dist is left to xdist."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).name in ONE_WORKER_FILES else nodeid

    return FilesTogether(config, log)


# The reproduction band is one test of 2.5 minutes. In collection order it came last but a few,
# and ran alone for ~2 minutes at the suite's end (session 39: one worker done at 824 s, the other
# running the band from 795 to 949 s). First of the one-test scopes, it starts once a worker is
# done with its file (above) and the small tests even out the end.
LONGEST_FIRST = ("tests/test_reproduction.py::test_one_seed_stays_in_the_band",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST_FIRST))  # else as collected


@pytest.fixture
def shared_data() -> Path:
    """../shared/data when present (tests that need it skip cleanly otherwise)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def wandb_never_started_in_the_test_process():
    """The real wandb starts only in subprocesses (CLI runs, test_metrics.in_fresh_python): in
    the process that started it, it leaves threads running for the rest of the worker's tests
    (its OpenTelemetry exporters survive wandb.teardown()). They were suspected of the workers'
    segfaults and cleared (a worker without them crashed alike: log.md, session 26), but no
    later test should run beside them. A test that starts it here fails, naming the threads."""
    def wandb_threads() -> set[tuple[int | None, str]]:
        return {(t.ident, t.name) for t in threading.enumerate()
                if t.name.startswith(("Otel", "wandb-"))}

    before = wandb_threads()
    yield
    started = sorted(name for _, name in wandb_threads() - before)
    assert not started, f"this test started wandb in the pytest process (threads {started}): " \
                        "start it in a subprocess"


@pytest.fixture
def no_wandb_key(tmp_path, monkeypatch):
    """An environment (this process's, and subprocesses started from os.environ) where
    wandb.mode=online has no API key to find, so wandb refuses to start, offline."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the tests' own "disabled" would win
    (tmp_path / "home").mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


class FakeWandbRun:
    """One `wandb.init` of FakeWandb: what the loops log into it and how they finish it."""

    def __init__(self, run_id: str, step: int, kwargs: dict):
        self.id, self.step, self.kwargs = run_id, step, kwargs
        self.logged: list[int] = []
        self.exit_code: int | None = None  # set by finish()
        self.finished = self.preempting = False

    def log(self, row: dict, step: int) -> None:
        # wandb drops (with a warning) a row for a step before the run's current one
        assert not self.finished and step >= self.step, (step, self.step)
        self.logged.append(step)
        self.step = step

    def mark_preempting(self) -> None:
        self.preempting = True

    def finish(self, exit_code: int | None = None) -> None:
        self.finished, self.exit_code = True, exit_code


class FakeWandb:
    """Stands in for the wandb module (`wandb.init`) with what a wandb server keeps: a run
    started again with its id (resume="allow") continues it, at the step after its last row."""

    def __init__(self):
        self.inits: list[FakeWandbRun] = []

    def init(self, *, id=None, **kwargs) -> FakeWandbRun:  # noqa: A002 (wandb's name)
        run_id = id or f"fresh{len(self.inits)}"
        earlier = [s for run in self.inits if run.id == run_id for s in run.logged]
        self.inits.append(FakeWandbRun(run_id, max(earlier, default=-1) + 1, kwargs))
        return self.inits[-1]


@pytest.fixture
def fake_wandb(monkeypatch) -> FakeWandb:
    """`import wandb` gives a FakeWandb while the test runs (wandb.mode=online then works
    offline, and the test sees every run the loops start)."""
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


# ---- text, corpora and tokenizers ----
WORDS = ("the cat dog sat on a mat ran far away quickly under blue green tree house river "
         "stone bird sang loudly while children played nearby").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + "." for _ in range(n)]


def bert_style_tokenizer(path, extra_words: int = 0) -> Tokenizer:
    """A tokenizer laid out like bert-base-uncased: [PAD]=0, [unused*], [UNK]=100 … [MASK]=103."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += WORDS + [".", "##s"] + [f"w{i}" for i in range(extra_words)]
    tok = tokenizer.build(TokenizerConfig())
    tok.model = models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]")
    for name in tokenizer.SPECIAL_NAMES:  # registered as special, like HF's own file
        tok.add_special_tokens([name])
    tok.save(str(path))
    return tok


def fake_gpu(kind: str, capability: str | None, platform: str = "cuda 12080") -> SimpleNamespace:
    """A GPU as jax describes one: a kind (NVIDIA's may not say NVIDIA: "Tesla T4"), a compute
    capability ("7.5"; ROCm's "gfx90a") and its client's platform version ("rocm ..." on AMD's;
    the CUDA plugin's says cuda, a deviceless H100's does not)."""
    return SimpleNamespace(platform="gpu", device_kind=kind, compute_capability=capability,
                           client=SimpleNamespace(platform_version=platform))


MEMORY_CAP = 16 << 30  # bytes; a tiny run's CLI peaks at ~2.2 GB of address space
HUGE_BATCH = 1 << 20  # a tiny model's step on this many rows asks XLA for 60 GB or more


def run_under_memory_cap(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python args` on one CPU device with its address space capped (a shell's ulimit, not a
    fork hook in this multithreaded process): XLA's allocations past MEMORY_CAP fail with
    RESOURCE_EXHAUSTED, as a GPU's allocator does past its memory, whatever this machine's RAM
    and overcommit policy. One device: the suite's 8 fake CPU devices share the host's memory,
    so two of them got their share and waited in a collective for the six that did not, until
    XLA:CPU aborted (a GPU's devices each have their own, and fail alike). glibc's arenas (64 MB
    of address space each, up to 8 per core) are kept few under the cap."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "XLA_FLAGS": "",
           "MALLOC_ARENA_MAX": "2"}
    return subprocess.run(["sh", "-c", f'ulimit -v {MEMORY_CAP >> 10} && exec "$@"', "sh",
                           sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def write_corpus(path: Path, n_docs: int, seed: int = 0) -> list[str]:
    """Plain text: one paragraph per line, a blank line between documents."""
    rng = np.random.default_rng(seed)
    docs = ["\n".join(" ".join(sentences(int(rng.integers(1, 4)), seed=seed * 1000 + i * 10 + p))
                      for p in range(int(rng.integers(1, 4)))) for i in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return docs


def tiny_run_config(base: Path, train: dict) -> Path:
    """base/run.yaml: a 2-layer, 64-wide model on a 120-document corpus of base/ (test_pretrain,
    test_rollback), with the given `train` section."""
    write_corpus(base / "corpus.txt", 120)
    path = base / "run.yaml"
    path.write_text(json.dumps({
        "model": {"size": "tiny", "num_layers": 2, "hidden_size": 64, "num_heads": 2,
                  "dropout": 0.1, "attention_dropout": 0.0},
        "tokenizer": {"vocab_size": 300},
        "data": {"dir": str(base / "prepared"), "sources": [str(base / "corpus.txt")],
                 "seq_len": 32, "validation_fraction": 0.1},
        "optim": {"lr": 3e-3, "warmup": 0.2},
        "train": train}))
    return path


def load_cfg(tmp_path: Path, sources_: list, **data) -> config.Config:
    overrides = [f"data.dir={tmp_path / 'prepared'}", "tokenizer.vocab_size=300",
                 "data.validation_fraction=0.1",
                 *(f"{k if '.' in k else 'data.' + k}={v}" for k, v in data.items())]
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(json.dumps({"data": {"sources": [str(s) for s in sources_]}}))
    return config.load([cfg_file], overrides)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared directory of a 120-document synthetic corpus (one per test module)."""
    tmp = tmp_path_factory.mktemp("data")
    write_corpus(tmp / "c.txt", 120)
    return prepare.ensure_prepared(load_cfg(tmp, [tmp / "c.txt"]))


# ---- GLUE ----
GLUE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "glue"


@pytest.fixture(scope="module")
def glue_tokenizer() -> Tokenizer:
    """A BERT-style tokenizer whose vocabulary is every word of the GLUE fixture rows (RTE,
    SST-2, STS-B). Built, not trained: WordPiece training breaks ties in hash-map order, so a
    trained vocabulary (and every length the tests count) changed from run to run."""
    splits = [glue.load_split(GlueConfig(data_dir=str(GLUE_FIXTURES), task=task), s)
              for task in ("rte", "sst2", "stsb") for s in ("train", "dev")]
    texts = [t for ex in splits for t in ex.text_a + (ex.text_b or [])]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for t in texts
                    for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))})
    vocab = {w: i for i, w in enumerate([*tokenizer.SPECIAL_NAMES, *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.add_bert_framing(tok)
    return tok


def rte_pairs(n: int) -> glue_tasks.Examples:
    """n RTE-style pairs of varied length, built from the real fixture rows."""
    rte = glue.load_split(GlueConfig(data_dir=str(GLUE_FIXTURES), task="rte"), "train")
    a = [" ".join(rte.text_a[i % 4].split()[: 1 + (7 * i) % 40]) for i in range(n)]
    b = [" ".join(rte.text_b[i % 4].split()[: 1 + i % 5]) for i in range(n)]
    return glue_tasks.Examples("rte", "train", a, b, np.arange(n, dtype=np.int32) % 2,
                         np.arange(n, dtype=np.int64), "synthetic")


# ---- processes ----
def communicate_all(procs: list[subprocess.Popen], timeout: float = 300
                    ) -> list[tuple[str, str]]:
    """Each process's (stdout, stderr) once all ended; a hang fails the test and kills the
    processes, instead of waiting forever or leaving them behind (a communicate that timed out
    left two GLUE processes waiting in a collective for the rest of the suite)."""
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        # What each wrote until then (communicate keeps what it read before the timeout): where
        # it hung is the first thing to know.
        said = [f"process {i}: ...{str(out)[-1500:]}" for i, (out, _) in
                enumerate(p.communicate() for p in procs)]
        pytest.fail(f"the processes were still running after {timeout:g} s\n" + "\n".join(said))


# Coordinator ports come from below the kernel's ephemeral range (32768 and up by default), so
# no outgoing connection (a gRPC client's, another test's) can take one between free_port's check
# and the coordinator's bind, and from a block of their own per pytest-xdist worker, so two
# workers never pick the same one. A port the OS picked (bind to 0) had neither guarantee. In a
# random order: a later pytest run takes other ports than an earlier one, whose processes (a
# killed run's) may still try to reach their coordinator.
PORT_BLOCK, FIRST_PORT = 1000, 20000
_port_offsets = iter(random.sample(range(PORT_BLOCK), PORT_BLOCK))


def free_port() -> int:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    for offset in _port_offsets:
        port = FIRST_PORT + (worker % 12) * PORT_BLOCK + offset
        with socket.socket() as s:
            try:  # every interface, as the coordinator binds it
                s.bind(("", port))
            except OSError:  # in use, or a finished run's still in TIME_WAIT
                continue
        return port
    raise RuntimeError(f"no free port left in worker {worker}'s block of {PORT_BLOCK}")


# ---- a tiny train step (test_train_step, test_distributed, dist_worker) ----
VOCAB, SEQ, PREDS = 61, 16, 4
STEPS = 3


class Masked(NamedTuple):
    input_ids: jax.Array
    positions: jax.Array
    labels: jax.Array
    weights: jax.Array


def key_mask(key, input_ids, attention_mask):
    """A simple keyed row mask (the real one is tested in test_masking.py): PREDS random
    positions among 1..SEQ-2, replaced by id 4; the last slot is a padding slot (weight 0)."""
    positions = jax.random.choice(key, jnp.arange(1, SEQ - 1), (PREDS,), replace=False)
    labels = input_ids[positions]
    weights = jnp.ones((PREDS,), jnp.float32).at[-1].set(0.0)
    return Masked(input_ids.at[positions].set(4), positions.astype(jnp.int32), labels, weights)


# Adam turns tiny gradient differences (reduction order across devices or micro-batches) into
# update differences of up to ~lr for near-zero gradients, hence the small lr.
SETUP_OPTIM = ("optim.warmup=0.0", "optim.lr=1e-3")
SCHEDULE = schedule_args(config.load([], list(SETUP_OPTIM)).optim, 10)  # setup's, for 10 steps


def setup(overrides=(), rows=8):
    cfg = config.load([], [f"model.vocab_size={VOCAB}", "model.dropout=0.0",
                           "model.attention_dropout=0.0", *SETUP_OPTIM, *overrides])
    model = Bert(cfg.model, key=jax.random.key(0), nsp=True)
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    state = init_state(model, optimizer, cfg.precision)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(5, VOCAB, (rows, SEQ)).astype(np.int32),
             "token_type_ids": np.zeros((rows, SEQ), np.int32),
             "attention_mask": np.ones((rows, SEQ), bool),
             "pair_labels": rng.integers(0, 2, rows).astype(np.int32)}
    precision = Precision.from_names(cfg.precision.compute)
    spec = StepSpec(precision, key_mask, True, False)
    return cfg, optimizer, state, batch, spec


@functools.partial(jax.jit, static_argnums=1)
def held_back(x: jax.Array, iterations: int = 400_000) -> jax.Array:
    """x again, from a program that runs `iterations` small matmuls first (2-3 s on a 2-core
    machine): an input that stays not ready while a call is made with it."""
    m = jax.lax.fori_loop(0, jnp.int32(iterations), lambda _, v: jnp.tanh(v @ v),
                          jnp.full((64, 64), 1e-3, jnp.float32))
    return x + (m[0, 0] > 1).astype(x.dtype)  # + 0, once the loop is done


def step_inputs(i: int):
    """first_row, mask key, dropout key and schedule of step i (as the pretraining loop derives
    them)."""
    return (jnp.int32(16 * i), jax.random.key(1), jax.random.fold_in(jax.random.key(2), i),
            SCHEDULE)


def flat_params(model) -> dict:
    """Parameters by tree path, for comparing runs made in other processes."""
    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_array))
    return {jax.tree_util.keystr(path): x for path, x in leaves}


def assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(eqx.filter(a, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(b, eqx.is_array)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def three_steps_on_one_device():
    _, optimizer, state, batch, spec = setup(rows=16)
    step = make_train_step(spec, optimizer, micro=8)
    losses = []
    for i in range(STEPS):
        state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()},
                              *step_inputs(i))
        losses.append(float(metrics["mlm_loss"]))
    return losses, {k: np.asarray(v) for k, v in flat_params(state.model).items()}


# ---- compilation counts ----
def count_calls(monkeypatch, owner, name: str) -> list:
    """Record every call of `owner.name` while the test runs. A function called inside a jitted
    one runs once per trace, so the length of the list is the number of compilations."""
    calls, original = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def count_encoded_rows(monkeypatch, encode_rows: int) -> list[int]:
    """Tokenize `encode_rows` rows at a time (tokenizer.ENCODE_ROWS) while the test runs, and
    record how many rows each call of tokenizer.encode_truncated gets."""
    seen, original = [], tokenizer.encode_truncated

    def counted(tok, texts, *args):
        seen.append(len(texts))
        return original(tok, texts, *args)

    monkeypatch.setattr(tokenizer, "ENCODE_ROWS", encode_rows)
    monkeypatch.setattr(tokenizer, "encode_truncated", counted)
    return seen


def trace_events(run_dir: Path) -> list[dict]:
    """The XLA ops of the one trace a run wrote, as {"name", "args": its stats}: from its
    XSpace file, which holds the whole trace (its perfetto_trace.json.gz keeps the first
    1,000,000 events)."""
    traces = sorted((run_dir / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1, traces
    assert len(list(traces[0].parent.glob("perfetto_trace.json.gz"))) == 1  # for ui.perfetto.dev
    from bertjax.step_trace import xspace_events

    return [{"name": e.name, "args": stats} for _, _, e in xspace_events(traces[0])
            if "hlo_op" in (stats := dict(e.stats))]
