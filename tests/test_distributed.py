"""Two jax.distributed processes on 127.0.0.1 (2 CPU devices each, FSDP) reproduce the losses
and parameters of the same 3 train steps on one device; processes left alone at the start,
losing another mid-run, failing alone (bad input on one host, a bug, a Ctrl-C: every process
says it), not sharing the run directory, listing it differently or loading different weights
end within seconds, in one line each (a bug: its traceback)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from conftest import (
    GLUE_FIXTURES,
    bert_style_tokenizer,
    communicate_all,
    free_port,
    three_steps_on_one_device,
    tiny_run_config,
)
from safetensors.numpy import load_file, save_file
from test_hf import HF_TINY, with_vocab_txt

from bertjax import config, prepare
from bertjax.errors import LostProcess, UserError
from bertjax.processes import losing_a_process_is_fatal

pytestmark = pytest.mark.slow  # two jax.distributed processes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HF_TINY_MLM = HF_TINY / "mlm"


def two_train_processes(cfg: Path, port: int, per_process, patch_1: str = ""
                        ) -> list[subprocess.Popen]:
    """`python -m bertjax.train cfg` as the 2 processes of a run on 127.0.0.1:port, 1 CPU device
    each; `per_process(i)`: process i's other arguments; `patch_1`: a line process 1 runs first
    (what its host alone sees)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    patched = ["-c", f"import runpy\n{patch_1}\n"
                     "runpy.run_module('bertjax.train', run_name='__main__', alter_sys=True)"]
    return [subprocess.Popen(
        [sys.executable, *(patched if i and patch_1 else ["-m", "bertjax.train"]), str(cfg),
         *per_process(i),
         f"mesh.coordinator_address=127.0.0.1:{port}", "mesh.num_processes=2",
         f"mesh.process_id={i}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]


def test_two_processes_match_one_device(tmp_path):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), str(port), str(i),
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outputs = [out for out, _ in communicate_all(procs)]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
    result = load_file(str(tmp_path / "result.safetensors"))
    losses, params = three_steps_on_one_device()
    np.testing.assert_allclose(result.pop("losses"), losses, rtol=1e-5)
    assert result.keys() == params.keys()
    for name, value in params.items():
        np.testing.assert_allclose(result[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    assert losses[-1] < losses[0]  # the three steps really trained


def test_a_lost_process_is_one_line_and_exit_1_in_seconds(tmp_path):
    # A dead host makes the survivor's next collective fail with JAX's runtime error. That was
    # a traceback, then a wait at exit for the dead process's heartbeat to time out (~100 s)
    # and JAX's abort (134) with a C++ stack trace. Now: one line naming what to do, exit 1,
    # and no exit handlers (jax.distributed's unbounded shutdown is one): the process leaves
    # within errors.LEAVE_WAIT_S (here at once: the faked run has no barrier to wait at).
    script = tmp_path / "lost.py"
    script.write_text(
        "import atexit, jax\n"
        "from bertjax import errors, processes\n"
        "jax.process_count = lambda: 2\n"
        "jax.distributed.is_initialized = lambda: True\n"
        "atexit.register(print, 'exit handlers ran')\n"
        "def main(argv):\n"
        "    with processes.losing_a_process_is_fatal():\n"
        "        raise jax.errors.JaxRuntimeError('UNKNOWN: Gloo all-reduce failed: Connection "
        "reset by peer\\nmore detail')\n"
        "errors.cli(main)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "error: a collective operation of this 2-process run failed (UNKNOWN: Gloo all-reduce "
        "failed: Connection reset by peer); if another process died or lost its network (see its "
        "log), start every process again with the same command to resume: what the run saved "
        "(checkpoints, finished seeds) is kept"], done.stderr
    assert "exit handlers ran" not in done.stdout


def test_one_process_keeps_jaxs_own_error():
    with pytest.raises(jax.errors.JaxRuntimeError):  # a bug or an OOM: its traceback stays
        with losing_a_process_is_fatal():
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")


def test_a_collective_failing_as_a_value_error_is_a_lost_process(monkeypatch):
    # process_allgather's jit (and Orbax's syncs through it) raised the dead peer as a ValueError
    # carrying XLA's status; a ValueError without one is a bug and keeps its traceback.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(LostProcess, match=r"^a collective operation of this 2-process run "
                                          r"failed \(UNKNOWN: Gloo AllGather failed: .* "
                                          r"Connection reset by peer\)"):
        with losing_a_process_is_fatal():
            raise ValueError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/"
                             "pair.cc:538] Read error [127.0.0.1]:46284: Connection reset by peer")
    with pytest.raises(ValueError, match="^operands could not be broadcast"):
        with losing_a_process_is_fatal():
            raise ValueError("operands could not be broadcast together")


def test_a_bug_in_one_process_ends_every_process_in_seconds(tmp_path):
    # After a bug's traceback, a process waited at jax.distributed's shutdown barrier until the
    # others were gone, then aborted (SIGABRT) with a C++ stack trace. Now every process ends
    # with exit 1 in seconds: the buggy one after its traceback, the others in one line that
    # names it and where its traceback is.
    procs = two_joined_processes(tmp_path, lambda i: (
        "    import jax\n"
        "    if jax.process_index() == 1:\n"
        "        raise RuntimeError('a bug')\n"
        "    with processes.losing_a_process_is_fatal():\n"
        "        processes.same_on_every_process([b'x'])\n"))
    errors = [err for _, err in communicate_all(procs)]
    assert [p.returncode for p in procs] == [1, 1], errors
    assert errors[1].rstrip().endswith("RuntimeError: a bug"), errors[1]
    assert said_lines(errors[0]) == [
        "error: process 1 of this 2-process run failed, so every process stops: a bug, "
        "RuntimeError: a bug (its traceback is in that process's log)"], errors[0]


def test_an_error_met_by_one_process_ends_every_process_in_one_line(tmp_path):
    # Process 1's data.dir holds no prepared data (copied to host 0 only). Process 1 printed its
    # error, then waited in jax.distributed's shutdown while process 0 waited for it in a
    # collective: both 5 minutes, then aborted (134) with C++ stack traces. Now both say process
    # 1's error, exit 2, in seconds.
    cfg, port = tiny_run_config(tmp_path, {"steps": 4, "micro_batch": 2}), free_port()
    prepare.ensure_prepared(config.load([cfg], ["tokenizer.vocab_size=100"]))  # 117 trained
    procs = two_train_processes(cfg, port, lambda i: (
        f"train.run_dir={tmp_path / 'run'}", "data.sources=[]",
        f"data.dir={tmp_path / ('prepared' if i == 0 else 'nothing')}"))
    errors = [err for _, err in communicate_all(procs)]
    message = (f"{tmp_path / 'nothing'} holds no prepared data and no data source is set: set "
               "data.sources (files or globs), data.hf_dataset or data.builtin=stdlib")
    assert [p.returncode for p in procs] == [2, 2], errors
    lines = [[line for line in err.splitlines() if line.startswith("error: ")] for err in errors]
    assert lines == [["error: process 1 of this 2-process run failed, so every process stops: "
                      f"{message}"], [f"error: {message}"]], errors
    for err in errors:  # the error line is the last, after the progress lines
        assert said_lines(err)[-1].startswith("error: ") and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def one_host_with_a_bad_glue_file(tmp_path: Path) -> tuple[Path, object, str]:
    """RTE, process 1's copy of the GLUE files holding a test split that is not UTF-8."""
    for i in range(2):
        shutil.copytree(GLUE_FIXTURES / "RTE", tmp_path / f"glue{i}" / "RTE")
    bad = tmp_path / "glue1" / "RTE" / "test.tsv"
    bad.write_bytes(b"index\tsentence1\tsentence2\n0\tbad \xff byte\tx\n")
    bert_style_tokenizer(tmp_path / "tokenizer.json")
    return ROOT / "configs" / "rte.yaml", lambda i: (
        f"glue.data_dir={tmp_path / f'glue{i}'}", f"train.run_dir={tmp_path / 'run'}",
        f"tokenizer.path={tmp_path / 'tokenizer.json'}", "model.num_layers=2",
        "model.hidden_size=64", "model.num_heads=2", "glue.batch_size=8",
        "glue.buckets=[16,32,64]"), (
        f"{bad} line 2: not valid UTF-8 (byte 0xff at column 7, file offset 32); GLUE files are "
        "UTF-8: convert it (e.g. iconv -t utf-8) or download it again")


def one_host_with_data_in_the_run_dir(tmp_path: Path) -> tuple[Path, object, str]:
    """Pretraining, process 1 given its run directory as data.dir."""
    cfg = tiny_run_config(tmp_path, {"steps": 4, "micro_batch": 2})
    run = tmp_path / "run"
    return cfg, lambda i: (f"train.run_dir={run}", f"data.dir={run if i else tmp_path / 'data'}"), (
        f"data.dir and train.run_dir are the same directory ({run}); the prepared data needs a "
        "directory of its own (e.g. data/NAME)")


@pytest.mark.parametrize("setup", [one_host_with_a_bad_glue_file,
                                   one_host_with_data_in_the_run_dir])
def test_bad_input_on_one_host_found_before_training_is_said_by_every_process(tmp_path, setup):
    # The checks of a host's own paths (the run directory, GLUE's test splits) ran before the
    # processes joined: process 1 said its error and left, and process 0 waited 5 minutes for
    # it to join, then said "not every process joined". Now they run once the processes have
    # joined, and process 0 says process 1's error within seconds (and leaves no run directory:
    # the collective after its lock failed outside the lock's clean-up).
    cfg, per_process, message = setup(tmp_path)
    procs = two_train_processes(cfg, free_port(), per_process)
    started = time.monotonic()
    errors = [err for _, err in communicate_all(procs)]
    took = time.monotonic() - started
    assert [p.returncode for p in procs] == [2, 2], errors
    assert [said_lines(err) for err in errors] == [
        [f"error: process 1 of this 2-process run failed, so every process stops: {message}"],
        [f"error: {message}"]], errors
    assert took < 60, took
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def write_join_script(script: Path, port: int, process_id: int, setup: str = "",
                      then: str = "", join_timeout: int = 300) -> None:
    """A CLI that joins a 2-process jax.distributed run on 127.0.0.1:port (after `setup`), then
    runs `then` (lines of its main, indented)."""
    script.write_text(
        f"from bertjax import config, errors, processes\n{setup}"
        "def main(argv):\n"
        "    processes.initialize_distributed(config.MeshConfig(coordinator_address="
        f"'127.0.0.1:{port}', num_processes=2, process_id={process_id}, "
        f"join_timeout={join_timeout}))\n"
        f"{then}"
        "errors.cli(main)\n")


def two_joined_processes(tmp_path: Path, then=lambda i: "", devices=(1, 1), setup="") -> list[
        subprocess.Popen]:
    """The 2 processes of `write_join_script` runs, process i with `devices[i]` CPU devices and
    `then(i)` after joining."""
    port, procs = free_port(), []
    for i in range(2):
        write_join_script(tmp_path / f"join{i}.py", port, i, setup, then(i))
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices[i]}"}
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / f"join{i}.py")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def said_lines(err: str) -> list[str]:
    """A process's stderr lines, Gloo's own chatter left out."""
    return [line for line in err.splitlines() if not line.startswith("[Gloo]")]


def assert_each_says_one_line(procs, errors, message_of, code=2, after_progress=False) -> None:
    """Each process exited `code` with one line: its own error, `message_of(i)`, or (a process
    that heard first) the error another process posted, relayed. `after_progress`: the line
    ends what the run printed before it (preparing the data), the only error and no traceback."""
    assert [p.returncode for p in procs] == [code] * len(procs), errors
    for i, err in enumerate(errors):
        relayed = [f"error: process {j} of this {len(procs)}-process run failed, so every process "
                   f"stops: {message_of(j)}" for j in range(len(procs)) if j != i]
        said = said_lines(err)
        if after_progress:
            assert [line.startswith("error: ") for line in said].count(True) == 1, err
            assert "Traceback" not in err, err
            said = said[-1:]
        assert said in ([f"error: {message_of(i)}"], *([r] for r in relayed)), err


@pytest.mark.parametrize("process_id", [0, 1])
def test_a_process_alone_says_so_and_stops_in_one_line(tmp_path, process_id):
    # The other process never starts (or another port, or the same process_id twice): JAX
    # waited 5 minutes in silence, then aborted (134) with a C++ stack trace.
    script, port = tmp_path / "alone.py", free_port()
    write_join_script(script, port, process_id, "processes.JOIN_NOTICE_S = 1\n",
                      join_timeout=3)  # mesh.join_timeout
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == (f"mesh: mesh.coordinator_address=127.0.0.1:{port}: waiting up to 3 s "
                        "for every process to join")
    assert lines[1].startswith("error: not every process joined within 3 s"), done.stderr
    assert "a process that failed before joining (a config error on its host) said why in its " \
        "own output" in lines[1], done.stderr
    assert "each with its own mesh.process_id" in lines[1] and len(lines) == 2, done.stderr
    assert lines[1].endswith("(where hosts start minutes apart, raise mesh.join_timeout)")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_waiting_to_join_ends_the_process_at_once(tmp_path, sig):
    # JAX's wait to join is one C++ call: Ctrl-C or a scheduler's SIGTERM on a process left
    # alone was ignored until the join timed out (5 minutes), then "not every process joined",
    # exit 2.
    script, port = tmp_path / "alone.py", free_port()
    # Ctrl-C as a terminal delivers it. A process started in the background of a shell without
    # job control (`(pytest ... &)`) inherits SIGINT ignored, as nohup's do: there the process
    # rightly ignored it, and this test waited out its 30 s (a flake, session 52).
    write_join_script(script, port, 0, "import signal\n"
                                       "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                                       "processes.JOIN_NOTICE_S = 1\n", join_timeout=90)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        notice = proc.stderr.readline()  # it waits inside the join now
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert notice == (f"mesh: mesh.coordinator_address=127.0.0.1:{port}: waiting up to 90 s for "
                      "every process to join\n")
    assert proc.returncode == 128 + sig, err
    assert err.splitlines() == [f"error: interrupted ({sig.name}) while waiting for every process "
                                f"to join (mesh.coordinator_address=127.0.0.1:{port}); run the "
                                "same command again"], err


@pytest.mark.parametrize("launch_keys_in", ["overrides", "yaml"])
def test_a_config_error_on_one_host_is_said_by_every_process(tmp_path, launch_keys_in):
    # Process 1's config did not load: it ended before joining, and process 0 waited 5 minutes
    # at the join, then said only that a process had not come. "yaml": the run's mesh keys and
    # process 1's typo are in each host's copy of a YAML file (the error was relayed only when
    # the mesh keys were overrides).
    port = free_port()
    launch = ["mesh.num_processes=2", f"mesh.coordinator_address=127.0.0.1:{port}"]
    typo = {"train": {"stepz": 5}}
    files = []
    for i in range(2):
        files.append(tmp_path / f"host{i}.yaml")
        mesh = {"mesh": {"num_processes": 2, "coordinator_address": f"127.0.0.1:{port}"}}
        files[i].write_text(yaml.safe_dump({"include": str(ROOT / "configs" / "demo.yaml"),
                                            **(mesh if launch_keys_in == "yaml" else {}),
                                            **(typo if i and launch_keys_in == "yaml" else {})}))
    if launch_keys_in == "yaml":
        with pytest.raises(UserError) as e:
            config.load([files[1]])
        message = str(e.value)
        assert "train.stepz" in message, message
    else:
        message = ("unknown config key 'train.stepz' in override 'train.stepz=5'; did you mean "
                   "'train.steps'?")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bertjax.train", str(files[i]), f"train.run_dir={tmp_path / 'run'}",
         f"data.dir={tmp_path / 'data'}", *(launch if launch_keys_in == "overrides" else []),
         f"mesh.process_id={i}", *(["train.stepz=5"] if i and launch_keys_in == "overrides"
                                   else [])], cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [err for _, err in communicate_all(procs, 240)]
    assert [p.returncode for p in procs] == [2, 2], errors
    assert said_lines(errors[1]) == [f"error: {message}"], errors[1]
    assert said_lines(errors[0]) == ["error: process 1 of this 2-process run failed, so every "
                                     f"process stops: {message}"], errors[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("task", ["pretrain", "glue"])
def test_processes_started_with_different_configs_are_refused(tmp_path, task):
    # Process 1 given another learning rate: both trained, exit 0, each process applying its own
    # rate to its replicas of the parameters (with another train.steps, one process waited
    # forever for the other). Now both refuse in one line before anything is prepared. Each
    # process's own wait to join (mesh.join_timeout) is not a difference.
    cfg, port = tiny_run_config(tmp_path, {"task": task, "steps": 4, "micro_batch": 2}), free_port()
    procs = two_train_processes(cfg, port, lambda i: (
        f"train.run_dir={tmp_path / 'run'}", f"optim.lr={0.003 * (i + 1)}", "glue.data_dir=.",
        f"mesh.join_timeout={300 + i}"))
    errors = [err for _, err in communicate_all(procs)]
    assert_each_says_one_line(procs, errors, lambda i: (
        f"the 2 processes were started with different configs (process {i} has "
        f"optim.lr={0.003 * (i + 1)}); start every process with the same config files and "
        "overrides (only mesh.process_id, mesh.join_timeout and paths may differ between them)"))
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", ["pretrain", "glue"])
def test_a_run_dir_that_is_not_shared_by_every_host_is_refused(tmp_path, task):
    # Each process given a run_dir of its own (as on hosts with their own disks): process 1 ended
    # in a FileNotFoundError traceback (no checkpoints/ where it looked), process 0 in a Gloo
    # timeout after 30 s (2 devices each) or both hung (1 device each, as here); checkpoints
    # would have held one host's shards. Now both refuse in one line, before anything is
    # prepared, and leave no run directory behind.
    cfg, port = tiny_run_config(tmp_path, {"task": task, "steps": 4, "micro_batch": 2}), free_port()
    procs = two_train_processes(cfg, port, lambda i: (
        f"train.run_dir={tmp_path / f'run{i}'}", "glue.data_dir=."))
    errors = [err for _, err in communicate_all(procs)]
    assert_each_says_one_line(procs, errors, lambda i: (
        f"train.run_dir={tmp_path / f'run{i}'} is not one directory shared by every host: "
        "process 1 does not see the file process 0 wrote there, and checkpoints must gather "
        "every host's share in one place; put train.run_dir on storage that every host mounts "
        "(NFS or another shared file system)"))
    assert not (tmp_path / "prepared").exists()
    assert not (tmp_path / "run0").exists() and not (tmp_path / "run1").exists()


def rte_run(tmp_path: Path, *extra: str) -> tuple[Path, object]:
    """configs/rte.yaml on the RTE fixture rows, one seed, a tiny model (RUN = tmp_path/run)."""
    shutil.copytree(GLUE_FIXTURES / "RTE", tmp_path / "glue" / "RTE")
    bert_style_tokenizer(tmp_path / "tokenizer.json")
    return ROOT / "configs" / "rte.yaml", lambda i: (
        f"glue.data_dir={tmp_path / 'glue'}", f"train.run_dir={tmp_path / 'run'}",
        f"tokenizer.path={tmp_path / 'tokenizer.json'}", "model.num_layers=2",
        "model.hidden_size=64", "model.num_heads=2", "glue.batch_size=8", "glue.seeds=[0]",
        "glue.buckets=[16,32,64]", *extra)


@pytest.mark.parametrize("task", ["pretrain", "glue"])
def test_processes_that_list_the_run_directory_differently_are_refused(tmp_path, task):
    # A network file system listing checkpoints/ from one host's stale cache: process 1 sees a
    # checkpoint (a finished seed's steps) that process 0 does not. They resumed from different
    # states: pretraining would have mixed two steps' shares of the parameters (or one process
    # restored while the other started afresh), GLUE waited for each other in different seeds.
    if task == "pretrain":
        cfg = tiny_run_config(tmp_path, {"steps": 4, "micro_batch": 2})
        per_process = lambda i: (f"train.run_dir={tmp_path / 'run'}",)  # noqa: E731
        patch = "from bertjax import checkpoint; checkpoint.Checkpoints.latest_step = lambda _: 3"
        what, views = f"the newest checkpoint in {tmp_path / 'run' / 'checkpoints'}", \
            ("none", "step 3")
    else:
        cfg, per_process = rte_run(tmp_path)
        patch = "from bertjax import finetune; finetune.steps_done = lambda *_: 2"
        what, views = f"the seeds done in {tmp_path / 'run'}", \
            ("seed 0 at step 0", "seed 0 at step 2")
    procs = two_train_processes(cfg, free_port(), per_process, patch)
    errors = [err for _, err in communicate_all(procs)]
    assert_each_says_one_line(procs, errors, lambda i: (
        f"the processes see {what} differently (process {i}: {views[i]}); every host must list "
        "train.run_dir alike: wait until the shared file system shows each host the same files "
        "(or remount it), then run the same command again"), after_progress=True)
    assert not (tmp_path / "run" / "checkpoints").exists() or \
        not any((tmp_path / "run" / "checkpoints").iterdir())


def test_processes_that_load_different_weights_are_refused(tmp_path):
    # Each host's own copy of init.checkpoint, one with other weights (another hub revision, say):
    # each device's share of the parameters came from its own host's copy, and the fine-tune
    # trained a mix of the two models, exit 0.
    for i in range(2):
        shutil.copytree(HF_TINY_MLM, tmp_path / f"bert{i}")
        with_vocab_txt(tmp_path / f"bert{i}")
    weights = load_file(tmp_path / "bert1" / "model.safetensors")
    weights["bert.embeddings.word_embeddings.weight"][5, 0] += 0.5
    save_file(weights, tmp_path / "bert1" / "model.safetensors")
    cfg, common = rte_run(tmp_path)
    procs = two_train_processes(cfg, free_port(), lambda i: (
        *[o for o in common(i) if not o.startswith(("model.", "tokenizer."))],
        f"init.checkpoint={tmp_path / f'bert{i}'}"))
    errors = [err for _, err in communicate_all(procs)]
    assert_each_says_one_line(procs, errors, lambda i: (
        f"the processes loaded different weights from init.checkpoint={tmp_path / f'bert{i}'}: "
        "give every host the same files (a copy of one checkpoint, the same hub revision)"))
    assert not (tmp_path / "run" / "results.json").exists()


def test_processes_with_different_device_counts_are_refused(tmp_path):
    # One host with 1 device, one with 2: the first collective was a numpy reshape traceback
    # (JAX lays the devices out as processes x devices per process), exit 1, on both.
    procs = two_joined_processes(tmp_path, devices=(1, 2))
    errors = [err for _, err in communicate_all(procs)]
    assert_each_says_one_line(procs, errors, lambda i: (
        "the processes have different numbers of devices (process 0: 1, process 1: 2); give "
        "every process the same number (e.g. with CUDA_VISIBLE_DEVICES on each host)"))


def test_processes_meeting_the_same_error_a_moment_apart_each_say_it(tmp_path):
    # Process 0 ended at once on its error. Process 1, a second slower to meet the same one, was
    # still connected to the coordination service process 0 ran, and JAX aborted it (134) with
    # a C++ stack trace instead of its line (the device-count test above, once in CI). Now they
    # leave together at jax.distributed's shutdown barrier (process 1 hears of process 0's error
    # before it meets its own, and says that).
    procs = two_joined_processes(tmp_path, lambda i: (
        "    import time\n"
        f"    time.sleep({i})\n"
        "    raise errors.UserError('met by both')\n"))
    errors = [err for _, err in communicate_all(procs)]
    assert_each_says_one_line(procs, errors, lambda i: "met by both")


@pytest.mark.parametrize("failing", [0, 1])
def test_an_error_met_by_one_process_is_said_by_every_process_within_seconds(tmp_path, failing):
    # Only one process met the error; the other waited for it in a collective. When the one
    # was process 0 (it serves the run's coordination), the other was aborted (134) with a C++
    # stack trace after 17-20 s; when it was process 1, the other's collective failed after
    # ~14 s in a line that did not say why. Now the failed process posts its line for the others,
    # and each process says it and they leave together at the shutdown barrier, exit 2 (not
    # after LEAVE_WAIT_S, the wait for a barrier that is not met: set long here to tell them apart).
    procs = two_joined_processes(tmp_path, setup="from bertjax import leaving\n"
                                                  "leaving.LEAVE_WAIT_S = 100\n", then=lambda i: (
        "    import jax, pathlib, time\n"
        f"    written = pathlib.Path({str(tmp_path / 'written')!r})\n"
        f"    if jax.process_index() == {failing}:\n"
        # Not a fixed sleep alone: a slow start of the other (a loaded CI machine) had it post
        # before the other wrote its half lines, and the watcher left without them.
        "        for _ in range(6000):\n"
        "            if written.exists():\n"
        "                break\n"
        "            time.sleep(0.01)\n"
        "        time.sleep(1)\n"  # the other is in the collective by then
        "        raise errors.UserError('met by one')\n"
        # The other is halfway through two lines when it hears (print's text written, its
        # newline not yet): the error was glued to the end of one (once in CI).
        "    import sys\n"
        "    sys.stdout.write('step 1/2: half a line')\n"
        "    sys.stderr.write('prepare: half a line')\n"
        "    written.touch()\n"
        "    with processes.losing_a_process_is_fatal():\n"
        "        processes.same_on_every_process([b'x'])\n"))
    started = time.monotonic()
    outputs = communicate_all(procs)
    took = time.monotonic() - started
    errors = [err for _, err in outputs]
    assert [p.returncode for p in procs] == [2, 2], errors
    for i, err in enumerate(errors):
        assert said_lines(err) == (["error: met by one"] if i == failing else [
            "prepare: half a line",
            f"error: process {failing} of this 2-process run failed, so every process stops: "
            "met by one"]), err
    assert outputs[1 - failing][0] == "step 1/2: half a line\n"
    assert took < 100, took  # they met at the shutdown barrier


def test_ctrl_c_on_one_process_outside_the_loops_stops_every_process(tmp_path):
    # Ctrl-C on one host while the others wait for it (prepare, compile): that process said
    # "interrupted" (130), the others' collective failed after ~30 s in a line that did not say
    # why (exit 1). The training loops' own stop (all processes after the same step) is
    # test_pretrain's; this is what happens outside them.
    procs = two_joined_processes(tmp_path, lambda i: (
        "    import jax, time\n"
        "    if jax.process_index() == 1:\n"
        "        time.sleep(1)\n"
        "        raise KeyboardInterrupt\n"
        "    with processes.losing_a_process_is_fatal():\n"
        "        processes.same_on_every_process([b'x'])\n"))
    errors = [err for _, err in communicate_all(procs)]
    said = ("interrupted (SIGINT); outputs are renamed into place only when complete, so nothing "
            "half-written is taken as done: run the same command again")
    assert [p.returncode for p in procs] == [130, 130], errors
    assert said_lines(errors[1]) == [f"error: {said}"], errors[1]
    assert said_lines(errors[0]) == [f"error: process 1 of this 2-process run failed, so every "
                                     f"process stops: {said}"], errors[0]


def test_a_busy_coordinator_port_is_one_line(tmp_path):
    # Process 0 could not listen on mesh.coordinator_address's port: JAX's "Failed to start RPC
    # server" traceback, exit 1, or (1 run in 2, in CI too) a segfault, -11, with no message.
    script = tmp_path / "busy.py"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        write_join_script(script, port, 0)
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: mesh.coordinator_address=127.0.0.1:{port}: process 0 "
                               "could not serve the coordinator on its port"), done.stderr


def test_leaving_at_once_leaves_no_semaphore_for_the_resource_tracker():
    """Python 3.14 starts processes by forkserver, under which multiprocessing tracks its named
    semaphores (tqdm's write lock is one), and one that os._exit left linked made the resource
    tracker print "leaked semaphore objects" below the one-line error (the listing test above
    failed there). Forkserver is chosen here, so any Python shows it."""
    code = ("import multiprocessing\nmultiprocessing.set_start_method('forkserver')\n"
            "from tqdm import tqdm\ntqdm(total=1, disable=True)\n"
            "from bertjax.errors import exit_now\nexit_now('it failed', 2)\n")
    # The tracker writes to the stderr it inherited, so the pipe closes only after it has spoken
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, out.stderr) == (2, "error: it failed\n")


def test_processes_that_hang_are_killed_and_say_what_they_wrote():
    """communicate_all, which every multi-process test waits through: a hang fails the test,
    kills the processes (a timed-out communicate left two GLUE processes in a collective for the
    rest of the suite) and shows what each wrote (the hang's whereabouts)."""
    procs = [subprocess.Popen([sys.executable, "-c", f"print('step {i}', flush=True); "
                               "import time; time.sleep(60)"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    with pytest.raises(pytest.fail.Exception) as failed:
        communicate_all(procs, 2)
    assert [p.returncode for p in procs] == [-signal.SIGKILL, -signal.SIGKILL]
    assert "process 0: ...step 0\n" in str(failed.value) and "process 1: ...step 1" in str(
        failed.value)
