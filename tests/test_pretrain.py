"""The pretraining loop end to end (subprocesses, like a user): outputs, exact resume after a
kill, SIGTERM checkpointing, resume on another device count, rollback and stop on non-finite
steps, and the same on two jax.distributed processes: continued pretraining, resume, FSDP, a
signal to one process, and processes whose prepared data differ."""

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml
from conftest import (
    communicate_all,
    fake_gpu,
    free_port,
    held_back,
    tiny_run_config,
    trace_events,
    write_corpus,
)

from bertjax import config as config_lib
from bertjax import metrics, pretrain_loop, starting_points, step_trace
from bertjax.checkpoint import Checkpoints
from bertjax.divergence import Watch
from bertjax.errors import UserError
from bertjax.model import Bert
from bertjax.optim import BatchRamp
from bertjax.pretrain import (
    check_tokenizer,
    keep_tokenizer,
    pretrain,
    resolve,
    start_state,
)
from bertjax.pretrain_run import (
    EVAL,
    MASK,
    TokenOffsets,
    data_position,
    purpose_keys,
    warn_if_other_data,
    what_changed,
)
from bertjax.pretrained import restore_model
from bertjax.sharding import make_mesh
from bertjax.starting_points import continue_from
from bertjax.step import abstract_state
from bertjax.step_trace import StepTrace, trace_directory

pytestmark = pytest.mark.slow  # CLI pretraining runs (subprocesses), kills, resumes, two processes

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    return tiny_run_config(tmp_path_factory.mktemp("pretrain"), {
        "steps": STEPS, "micro_batch": 8, "batch_start": 8, "batch_end": 16, "batch_ramp": 0.5,
        "log_every": 1, "eval_every": 3, "eval_sequences": 16, "checkpoint_every": 2,
        "keep_checkpoints": 5, "fill_mask": ["the [MASK] is here ."]})


def train(config_file, run_dir, *extra, devices=8, wait=True, env=None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               **(env or {}))
    cmd = [sys.executable, "-m", "bertjax.train", str(config_file), f"train.run_dir={run_dir}",
           *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out = proc.communicate(timeout=600)[0]
    return proc.returncode, out


def losses(run_dir: Path) -> dict[int, float]:
    """Training loss by step (a resumed run's rows replace the killed run's)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def final_params(run_dir: Path) -> list[np.ndarray]:
    model, _, meta = restore_model(run_dir, None)
    assert meta["step"] == STEPS
    return [np.asarray(x) for x in jax.tree.leaves(model)]


def wait_for_checkpoint(run_dir: Path, proc, step: int) -> None:
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / str(step)).is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)


@pytest.fixture(scope="module")
def straight(config_file, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    code, out = train(config_file, run_dir)
    assert code == 0, out
    return run_dir


def test_a_run_writes_its_outputs_and_learns(config_file, straight):
    for name in ("config.yaml", "metrics.jsonl", "results.json", "curves.png"):
        assert (straight / name).is_file(), name
    data_tokenizer = config_file.parent / "prepared" / "tokenizer.json"
    assert (straight / "tokenizer.json").read_bytes() == data_tokenizer.read_bytes()
    history = losses(straight)
    assert sorted(history) == list(range(1, STEPS + 1))
    assert history[STEPS] < history[1]
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    batches = [r["batch"] for r in rows if "batch" in r]
    assert batches[0] == 8 and batches[-1] == 16  # the ramp
    assert any("val_loss" in r for r in rows)
    results = json.loads((straight / "results.json").read_text())
    last_validation = [r for r in rows if "val_loss" in r][-1]
    assert results["validation"] == {k: v for k, v in last_validation.items()
                                     if k.startswith("val_")}
    assert 0.0 < results["validation"]["val_accuracy"] < 1.0


def test_a_new_pass_over_the_data_is_said_once(config_file, tmp_path):
    # 12 steps of the 8 -> 16 ramp read ~180 sequences of ~140: the loop says so at its step.
    code, out = train(config_file, tmp_path, "train.steps=12", "train.fill_mask=[]",
                      "train.eval_every=0", "train.checkpoint_every=0")
    assert code == 0, out
    assert out.count("passed one epoch of the training data at step") == 1, out
    assert "starts epoch" not in out, out
    # Resumed past that epoch (trained on to 14 steps), it is not said again: it named the
    # resume's first logged step as the one that passed it.
    code, out = train(config_file, tmp_path, "train.steps=14", "train.fill_mask=[]",
                      "train.eval_every=0", "train.checkpoint_every=0")
    assert code == 0 and "resuming" in out, out
    assert "passed one epoch" not in out, out


def test_resume_refuses_a_data_dir_with_another_tokenizer(tmp_path):
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    data_dir.mkdir()
    run_dir.mkdir()
    (data_dir / "tokenizer.json").write_text('{"version": "1.0", "vocab": "first"}')
    check_tokenizer(run_dir, data_dir)  # a new run: nothing kept yet
    keep_tokenizer(run_dir, data_dir)
    check_tokenizer(run_dir, data_dir)  # same tokenizer: resuming is fine
    assert (run_dir / "tokenizer.json").read_text() == (data_dir / "tokenizer.json").read_text()
    (data_dir / "tokenizer.json").write_text('{"version": "1.0", "vocab": "retrained"}')
    with pytest.raises(UserError, match="not the tokenizer .* was trained with"):
        check_tokenizer(run_dir, data_dir)
    assert "first" in (run_dir / "tokenizer.json").read_text()


def file_hashes(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_a_finished_run_started_again_changes_nothing(config_file, straight, tmp_path):
    """The same command again: nothing to do (it used to fail saving the last checkpoint
    twice). A resume that cannot continue the checkpoints (another model shape, fewer steps) is
    refused in one line before anything is written: config.yaml still describes them."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    before = file_hashes(run_dir)
    code, out = train(config_file, run_dir)
    assert code == 0 and "nothing to do" in out, out
    for change, expect in [("model.intermediate_size=32", "another model shape (model."
                                                          "intermediate_size: 256 -> 32)"),
                           ("data.objective=mlm+sop", "another pretraining objective (data."
                                                      "objective: mlm -> mlm+sop)"),
                           (f"train.steps={STEPS - 1}", f"past this run's last step {STEPS - 1}")]:
        code, out = train(config_file, run_dir, change)
        last = out.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error: ") and expect in last, out
        assert "Traceback" not in out, out
    assert file_hashes(run_dir) == before


def test_a_run_killed_after_its_last_checkpoint_finishes_on_a_rerun(config_file, straight,
                                                                    tmp_path):
    """Killed between the last checkpoint and results.json: the rerun validates and writes the
    results without saving that checkpoint again."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    (run_dir / "results.json").unlink()
    code, out = train(config_file, run_dir, "train.checkpoint_every=4")  # 6 % 4: saved at the end
    assert code == 0, out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == STEPS and results["validation"]["val_loss"] > 0


def test_a_run_trained_on_keeps_no_results_of_its_earlier_end(config_file, straight, tmp_path):
    """train.steps raised on a finished run, killed after a checkpoint: its results.json was the
    earlier end's (a kill after the new last checkpoint: the rerun said "nothing to do" over
    them). Now none until the new end, whose results the rerun writes."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    longer = f"train.steps={STEPS + 4}"
    proc = train(config_file, run_dir, longer, wait=False)
    wait_for_checkpoint(run_dir, proc, STEPS + 2)
    proc.kill()
    proc.wait()
    results = run_dir / "results.json"
    assert not results.exists() or json.loads(results.read_text())["steps"] == STEPS + 4
    code, out = train(config_file, run_dir, longer)
    assert code == 0 and "trained to its last step" not in out, out
    assert json.loads(results.read_text())["steps"] == STEPS + 4


def test_results_of_an_earlier_end_beside_the_last_checkpoint_are_written_again(
        config_file, straight, tmp_path, capsys):
    """The state an earlier bertjax left (the test above): a checkpoint at the last step beside
    results.json of a shorter end. Each rerun said "nothing to do" over them."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    results = run_dir / "results.json"
    results.write_text(json.dumps(json.loads(results.read_text()) | {"steps": STEPS - 2}))
    pretrain(config_lib.load([config_file], [f"train.run_dir={run_dir}", "train.fill_mask=[]"]))
    assert "nothing to do" not in capsys.readouterr().out
    assert json.loads(results.read_text())["steps"] == STEPS
    pretrain(config_lib.load([config_file], [f"train.run_dir={run_dir}", "train.fill_mask=[]"]))
    assert "nothing to do" in capsys.readouterr().out  # finished now

def test_continued_pretraining_starts_from_the_checkpoint_weights(config_file, straight,
                                                                  tmp_path):
    # A second phase at another seq_len; a vanishing lr keeps the weights where they started.
    code, out = train(config_file, tmp_path, f"init.checkpoint={straight}", "data.seq_len=16",
                      "train.steps=1", "train.batch_ramp=0", "optim.lr=1e-12", "train.fill_mask=[]")
    assert code == 0, out
    start, _, first_meta = restore_model(straight, None)
    after, _, meta = restore_model(tmp_path, None)
    assert meta["step"] == 1
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(start), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # Tokens seen count both phases: the first run's, plus one step of 16 rows x 16 tokens.
    counts = {"tokens_before": first_meta["tokens_seen"], "tokens_this_run": 16 * 16,
              "tokens_seen": first_meta["tokens_seen"] + 16 * 16}
    assert first_meta["tokens_before"] == 0 and first_meta["tokens_seen"] > 0
    assert {k: meta[k] for k in counts} == counts
    results = json.loads((tmp_path / "results.json").read_text())
    assert {k: results[k] for k in counts} == counts


def test_inference_restore_reads_the_weights_and_leaves_the_optimizer_on_disk(straight,
                                                                              monkeypatch):
    checkpoints = Checkpoints(straight)
    try:
        step = checkpoints.latest_step()
        cfg = config_lib.from_yaml_text(checkpoints.read_meta(step)["config_yaml"], "meta")
        abstract = abstract_state(cfg)
        full, _ = checkpoints.restore(step, abstract)
        targets = []
        restore = ocp.PyTreeCheckpointer.restore
        monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", lambda self, path, args: (
            targets.append(args.item) or restore(self, path, args=args)))
        model = checkpoints.restore_model(step, abstract)
    finally:
        checkpoints.close()
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(full.model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # What was asked of Orbax: every optimizer leaf a placeholder (skipped, never read).
    skipped = jax.tree.leaves(targets[0].opt_state)
    assert skipped and all(x is ocp.PLACEHOLDER for x in skipped)
    assert len(jax.tree.leaves(full.opt_state)) == len(skipped)


def start_two_processes(config_file, run_dir, *extra, per_process=lambda i: ()):
    """The CLI as two jax.distributed processes on 127.0.0.1, 2 CPU devices each;
    `per_process(i)` adds overrides for process i only."""
    port = free_port()
    return [train(config_file, run_dir, *extra, *per_process(i), "mesh.num_processes=2",
                  f"mesh.coordinator_address=127.0.0.1:{port}", f"mesh.process_id={i}",
                  devices=2, wait=False)
            for i in range(2)]


def finish(procs: list[subprocess.Popen], code: int = 0) -> str:
    """Process 0's output, once both processes exited with `code` (0: finished)."""
    outs = [out for out, _ in communicate_all(procs)]
    assert all(p.returncode == code for p in procs), "\n".join(o[-3000:] for o in outs)
    return outs[0]


def train_on_two_processes(config_file, run_dir, *extra) -> str:
    return finish(start_two_processes(config_file, run_dir, *extra))


def test_continued_pretraining_resume_and_fsdp_on_two_processes(config_file, straight, tmp_path):
    # Each process restores the one-process checkpoint onto its own device, then the weights
    # are placed on the 2-process mesh; a rerun resumes from the 2-process Orbax checkpoint.
    frozen = ("train.batch_ramp=0", "optim.lr=1e-12", "train.fill_mask=[]")
    train_on_two_processes(config_file, tmp_path, f"init.checkpoint={straight}",
                           "train.steps=1", *frozen)
    start, _, _ = restore_model(straight, None)
    after, _, meta = restore_model(tmp_path, None)
    assert meta["step"] == 1
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(start), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # The resume also switches to FSDP (parameters split across the hosts) and ends with fill-mask,
    # which process 0 runs on a gathered copy.
    out = train_on_two_processes(config_file, tmp_path, f"init.checkpoint={straight}",
                                 "train.steps=2", *frozen[:2], "mesh.strategy=fsdp",
                                 "mesh.fsdp_min_size=64")
    assert "warning: resuming" in out  # train.steps changed: resumed, not started over
    assert "train.steps: 1 -> 2" in out and "mesh.strategy: dp -> fsdp" in out, out
    assert "fill-mask predictions:" in out
    meta = restore_model(tmp_path, None)[2]
    assert meta["step"] == 2  # and the resume kept the first phase's tokens:
    assert meta["tokens_before"] == restore_model(straight, None)[2]["tokens_seen"]
    assert sorted(losses(tmp_path)) == [1, 2]


def test_processes_with_different_prepared_data_are_refused(config_file, tmp_path):
    # Hosts without shared storage prepare their own data; here process 1's tokenizer differs.
    # (The corpus holds ~120 tokens' worth of merges: 300 and 250 both stop there, and since
    # tokenizer training is reproducible they trained the same file.)
    vocab = {0: 300, 1: 100}
    procs = start_two_processes(config_file, tmp_path / "run", per_process=lambda i: (
        f"data.dir={tmp_path / f'data{i}'}", f"tokenizer.vocab_size={vocab[i]}"))
    for proc, out in zip(procs, [out for out, _ in communicate_all(procs)], strict=True):
        assert proc.returncode == 2, out
        assert "prepared data in" in out and "differ" in out and "Traceback" not in out, out
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_init_checkpoint_is_said_before_the_data_is_prepared(config_file, tmp_path,
                                                                      monkeypatch):
    # It was said only after prepare had trained a tokenizer and written data.dir. A hub id is
    # looked up in the (here empty) Hugging Face cache, the hub being off in the tests.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = config_lib.load([config_file], [f"train.run_dir={tmp_path / 'run'}",
                                          f"data.dir={tmp_path / 'data'}",
                                          "init.checkpoint=google-bert/bert-base-uncased"])
    with pytest.raises(UserError, match=r"checkpoint path google-bert/bert-base-uncased does not "
                                        r"exist .*as a Hugging Face hub model it is not "
                                        r"\(complete\) in the cache .* \(`hf download "
                                        r"google-bert/bert-base-uncased --local-dir DIR`\)"):
        pretrain(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_init_checkpoint_weights_left_as_lfs_pointers_are_said_before_the_data_is_prepared(
        config_file, tmp_path):
    # configs/pretrain_tiny_tapt.yaml in a clone without `git lfs pull`: the data was prepared
    # (a tokenizer trained, data.dir written), then the pointer was named.
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "checkpoints" / "tiny_corpus_mini", bundle)
    (bundle / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:5af6\nsize 6147824\n")
    cfg = config_lib.load([config_file], [f"train.run_dir={tmp_path / 'run'}",
                                          f"data.dir={tmp_path / 'data'}",
                                          f"init.checkpoint={bundle}"])
    with pytest.raises(UserError, match=r"bundle/model.safetensors is a git LFS pointer, not the "
                                        r"file itself"):
        pretrain(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_sequences_longer_than_the_position_table_are_refused(config_file):
    cfg = config_lib.load([config_file], ["model.max_position_embeddings=16"])  # seq_len 32
    with pytest.raises(UserError, match="data.seq_len=32 is longer than the model's 16 positions"):
        resolve(cfg)


def test_an_empty_validation_split_is_said(config_file, tmp_path):
    # 120 documents at 0.5 %: none held out, and the run trained without validation unsaid.
    cfg = config_lib.load([config_file], ["data.validation_fraction=0.005",
                                          f"data.dir={tmp_path / 'data'}"])
    with pytest.warns(UserWarning, match=r"validation split of .* is empty \(data.validation_"
                                         r"fraction=0.005 of 120 documents picks none\)"):
        assert resolve(cfg).validation is None


def test_bfloat16_on_a_gpu_without_bfloat16_tensor_cores_is_said(config_file, monkeypatch):
    cfg = config_lib.load([config_file], ["precision.compute=bfloat16"])
    monkeypatch.setattr(jax, "devices", lambda *a: [fake_gpu("Tesla T4", "7.5")])
    with pytest.warns(UserWarning, match=r"^precision.compute=bfloat16 on Tesla T4 .*"
                                         r"precision.compute=float16 uses them"):
        resolve(cfg)


def test_train_profile_traces_its_steps_into_the_run_directory(config_file, tmp_path, capsys):
    cfg = config_lib.load([config_file], [f"train.run_dir={tmp_path}", "train.profile=[2,3]",
                                          "train.fill_mask=[]"])
    pretrain(cfg)
    out = capsys.readouterr().out
    assert re.search(rf"^profile: steps 2-3 traced to {tmp_path}/profile/plugins/profile/\S+; ",
                     out, re.M), out
    # the train step's kernels ran in it (a trace of the host alone would not do)
    modules = {e["args"].get("hlo_module") for e in trace_events(tmp_path)}
    assert "jit_donating_step" in modules, modules


def test_a_profile_window_past_the_run_is_said_and_cut_at_its_end(config_file, tmp_path, capsys,
                                                                  monkeypatch):
    """... and a trace too large for its perfetto_trace.json.gz (jax keeps its first million
    events there) is said to be cut there."""
    monkeypatch.setattr(step_trace, "PERFETTO_EVENTS", 1000)
    overrides = [f"train.run_dir={tmp_path}", "train.fill_mask=[]"]
    with pytest.warns(UserWarning, match=rf"train.profile=\[{STEPS + 1}, 99\] starts after the "
                                         rf"run's last step \({STEPS}\): nothing will be traced"):
        resolve(config_lib.load([config_file], [*overrides, f"train.profile=[{STEPS + 1},99]"]))
    pretrain(config_lib.load([config_file], [*overrides, f"train.profile=[{STEPS},99]"]))
    out = capsys.readouterr().out
    assert re.search(rf"^profile: steps {STEPS}-{STEPS} traced to {tmp_path}/profile/plugins/"
                     r"profile/\S+ \(the loop stopped before train.profile's last step\); "
                     r".* perfetto_trace.json.gz \(its first 1,000 of [\d,]+ events\) at ",
                     out, re.M), out
    assert len(trace_events(tmp_path)) > 1000  # all of them in the .xplane.pb
    with pytest.warns(UserWarning, match=rf"^train.profile=\[2, 3\] lies before step {STEPS + 1},"
                                         r" where the run resumes: nothing will be traced"):
        pretrain(config_lib.load([config_file], [*overrides, f"train.steps={STEPS + 1}",
                                                 "train.profile=[2,3]"]))


def test_a_loop_that_fails_in_its_profile_window_stops_the_trace(config_file, tmp_path,
                                                                 monkeypatch):
    """jax.profiler allows one trace per process: one left running would refuse the next run's
    (a notebook's) and never be written."""
    def failing_save(self, state, done):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(pretrain_loop.Loop, "save", failing_save)
    cfg = config_lib.load([config_file], [f"train.run_dir={tmp_path}", "train.profile=[1,3]",
                                          "train.checkpoint_every=2"])
    with pytest.raises(RuntimeError, match="disk gone"):
        pretrain(cfg)
    assert trace_events(tmp_path)  # written, and the profiler free again:
    jax.profiler.start_trace(str(tmp_path / "again"))
    jax.profiler.stop_trace()


def test_a_profiler_that_will_not_start_or_write_is_warned_of_and_training_goes_on(
        tmp_path, monkeypatch):
    said, real_start, real_stop = [], jax.profiler.start_trace, jax.profiler.stop_trace

    def no_cupti(*args, **kwargs):
        raise RuntimeError("CUPTI could not be loaded\n(details)")

    monkeypatch.setattr(jax.profiler, "start_trace", no_cupti)
    trace = StepTrace([1, 2], tmp_path, said.append)
    with pytest.warns(UserWarning, match=r"^train.profile: the profiler did not start \(CUPTI "
                                         r"could not be loaded\); the run goes on without a "
                                         r"trace$"):
        trace.before(1, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tried once, not at every step of the window
        trace.before(2, None)
    assert not trace.done(2, None) and not said

    def disk_full():
        real_stop()
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(jax.profiler, "start_trace", real_start)
    monkeypatch.setattr(jax.profiler, "stop_trace", disk_full)
    trace = StepTrace([1], tmp_path, said.append)  # [STEP]: that step alone
    trace.before(1, None)
    assert trace.done(1, jnp.zeros(2))
    with pytest.warns(UserWarning, match=r"^train.profile: the trace of steps 1-1 was not "
                                         r"written \(No space left on device\)$"):
        trace.stop()
    assert not said  # no "traced to" line for a trace that is not there


def test_a_window_starts_when_the_steps_dispatched_before_it_are_done(tmp_path):
    # The loops dispatch steps ahead of the device. A trace started while an earlier step
    # still ran would count its kernels among the window's; a seconds-long program stands for
    # that step here.
    said = []
    trace = StepTrace([1], tmp_path, said.append)
    earlier = held_back(jnp.int32(0))
    trace.before(1, earlier)
    assert earlier.is_ready()
    assert trace.done(1, jnp.arange(4) * 2)  # the window's own step
    trace.stop()
    modules = {e["args"].get("hlo_module") for e in trace_events(tmp_path)}
    assert modules and not any("held_back" in m for m in modules), modules
    assert said and said[0].startswith("profile: steps 1-1 traced to")


def test_each_process_traces_to_a_folder_of_its_own(tmp_path, monkeypatch):
    assert trace_directory(tmp_path) == tmp_path / "profile"
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert trace_directory(tmp_path) == tmp_path / "profile" / "process1"


def test_validation_is_one_sample_of_the_whole_split_masked_alike_for_every_seed(config_file):
    # Validation read its split in corpus order (a sample of train.eval_sequences was the first
    # documents: the first source's) with masks drawn from train.seed, so two seeds' validation
    # losses scored different predictions.
    splits = [resolve(config_lib.load([config_file], [f"train.seed={seed}"])).validation
              for seed in (0, 1)]
    n = splits[0].num_sequences
    order = [split.sequence_index(np.arange(n)) for split in splits]
    np.testing.assert_array_equal(order[0], order[1])
    assert sorted(order[0]) == list(range(n)) and (order[0] != np.arange(n)).any()
    keys = [jax.random.key_data(purpose_keys(seed)[purpose]) for seed in (0, 1)
            for purpose in (EVAL, MASK)]
    np.testing.assert_array_equal(keys[0], keys[2])  # validation's masks: one key
    assert (keys[1] != keys[3]).any()  # training's: one per seed


def test_a_micro_batch_the_devices_do_not_divide_is_refused(config_file):
    # 8 test devices: 12 rows cannot be split evenly (was a traceback at the first step).
    cfg = config_lib.load([config_file], ["train.micro_batch=12", "train.batch_start=24",
                                          "train.batch_end=24"])
    with pytest.raises(UserError, match="train.micro_batch=12 must be a multiple of the 8 devices"):
        resolve(cfg)


def test_continued_pretraining_refuses_another_architecture(config_file, straight):
    cfg = config_lib.load([config_file], [f"init.checkpoint={straight}", "model.hidden_size=32"])
    run = resolve(cfg)
    with pytest.raises(UserError, match=r"has model.hidden_size=64 but this run has 32; set "
                                        r"model.hidden_size=64 \(or model.size to the"):
        continue_from(Bert(run.cfg.model, key=jax.random.key(0)), run.cfg, run.tokenizer)
    run = resolve(config_lib.load([config_file], [f"init.checkpoint={straight}",
                                                  "model.norm=post"]))
    with pytest.raises(UserError, match=r"has model.norm=pre but this run has post; set "
                                        r"model.norm=pre$"):  # model.size does not set it
        continue_from(Bert(run.cfg.model, key=jax.random.key(0)), run.cfg, run.tokenizer)


def test_continued_pretraining_longer_than_the_checkpoints_positions_says_the_way_out(
        config_file, straight):
    """Phase 2 at a longer seq_len than the checkpoint's table: the fix offered was "set
    model.max_position_embeddings=N", which then met the refusal of data.seq_len > N."""
    run = resolve(config_lib.load([config_file], [f"init.checkpoint={straight}",
                                                  "data.seq_len=600",
                                                  "model.max_position_embeddings=1024"]))
    with pytest.raises(UserError, match=r"has 512 learned positions, fewer than data.seq_len=600;"
                                        r" .* set data.seq_len to at most 512 and "
                                        r"model.max_position_embeddings=512$"):
        continue_from(Bert(run.cfg.model, key=jax.random.key(0)), run.cfg, run.tokenizer)


def test_continued_pretraining_says_which_heads_start_at_random(config_file, straight):
    """An MLM-only checkpoint continued with NSP (or a GLUE classifier continued with MLM) left
    the heads it lacks at their random init without a word."""
    run = resolve(config_lib.load([config_file], [f"init.checkpoint={straight}",
                                                  "data.objective=mlm+nsp"]))
    with pytest.warns(UserWarning, match=rf"init.checkpoint={straight} has no pooler or NSP/SOP "
                                         r"head: this run initialises them at random$"):
        continue_from(Bert(run.cfg.model, key=jax.random.key(0), nsp=True), run.cfg,
                      run.tokenizer)


def test_continued_pretraining_says_when_its_pair_head_had_the_other_objective(
        config_file, straight, monkeypatch):
    """SOP continued from an NSP checkpoint took the NSP head's weights (same shape, other
    classes) without a word."""
    run = resolve(config_lib.load([config_file], [f"init.checkpoint={straight}",
                                                  "data.objective=mlm+sop"]))
    nsp_run = dataclasses.replace(run.cfg, data=dataclasses.replace(run.cfg.data,
                                                                    objective="mlm+nsp"))
    source = starting_points.load_pretrained(straight)
    source = dataclasses.replace(source, config=nsp_run, model=Bert(
        source.model_cfg, key=jax.random.key(1), nsp=True))
    monkeypatch.setattr(starting_points, "load_pretrained", lambda *a: source)
    with pytest.warns(UserWarning, match=rf"init.checkpoint={straight}'s pair head was trained "
                                         r"for data.objective=mlm\+nsp; this run's mlm\+sop "
                                         r"head starts from its weights"):
        continue_from(Bert(run.cfg.model, key=jax.random.key(0), nsp=True), run.cfg,
                      run.tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same objective: nothing said
        continue_from(Bert(run.cfg.model, key=jax.random.key(0), nsp=True), nsp_run,
                      run.tokenizer)


def test_continued_pretraining_says_it_computes_with_another_gelu(config_file, straight):
    # The checkpoint's weights fit either GELU, so the run's config decides; a checkpoint
    # trained with model.gelu=tanh continued under the default exact GELU changed its function
    # without a word (the architecture keys are refused above).
    run = resolve(config_lib.load([config_file], [f"init.checkpoint={straight}", "model.gelu=tanh",
                                                  "model.layer_norm_eps=1e-5"]))
    with pytest.warns(UserWarning, match=rf"init.checkpoint={straight} was trained with "
                                         r"model.gelu=exact, model.layer_norm_eps=1e-12, but this "
                                         r"run computes with tanh, 1e-05; set model.gelu=exact "
                                         r"model.layer_norm_eps=1e-12 to continue as it was"):
        model, _ = continue_from(Bert(run.cfg.model, key=jax.random.key(0)), run.cfg,
                                 run.tokenizer)
    assert model.encoder.blocks.ffn.approximate_gelu  # the run's, as config.yaml says
    run = resolve(config_lib.load([config_file], [f"init.checkpoint={straight}"]))
    with warnings.catch_warnings():  # the checkpoint's own: nothing to say
        warnings.simplefilter("error")
        continue_from(Bert(run.cfg.model, key=jax.random.key(0)), run.cfg, run.tokenizer)


def test_continued_pretraining_refuses_another_vocabulary(config_file, straight):
    run = resolve(config_lib.load([config_file], [f"init.checkpoint={straight}"]))
    run.tokenizer.add_tokens(["unseen-token"])  # same size of model, different token ids
    with pytest.raises(UserError, match=r"another vocabulary .*; prepare another data.dir with "
                                        rf"tokenizer.path={straight}\S*/tokenizer.json$"):
        continue_from(Bert(run.cfg.model, key=jax.random.key(0)), run.cfg, run.tokenizer)
    # A tokenizer of another size makes this run's model.vocab_size another too: the message
    # was "set model.vocab_size=N", which led only to this refusal
    bigger = dataclasses.replace(run.cfg, model=dataclasses.replace(
        run.cfg.model, vocab_size=run.cfg.model.vocab_size + 1))
    with pytest.raises(UserError, match="another vocabulary"):
        continue_from(Bert(bigger.model, key=jax.random.key(0)), bigger, run.tokenizer)


def test_a_changed_resume_names_its_keys_and_the_learning_rate_it_moves(config_file):
    """The warning once said only "a config that differs"; raising train.steps mid-run stretches
    the one-cycle schedule, so the learning rate rises again at the resumed step."""
    before = resolve(config_lib.load([config_file]))
    after = resolve(config_lib.load([config_file], [f"train.steps={2 * STEPS}", "optim.b2=0.95"]))
    meta = {"step": STEPS // 2, "total_steps": STEPS, "config_yaml": before.config_yaml}
    said = what_changed(after, meta)
    assert said.startswith(f": optim.b2: {before.cfg.optim.b2} -> 0.95, train.steps: {STEPS} -> "
                           f"{2 * STEPS}; the learning rate at step {STEPS // 2} is now "), said
    now, was = (float(x) for x in re.findall(r"now (\S+) \(was (\S+)\)", said)[0])
    assert now > was > 0
    # A longer run ramps its batch over more steps (batch_ramp is a fraction), so its ramp is
    # further back in the data at that step; the stream reads on from the checkpoint's position
    # (test_a_resume_with_another_batch_ramp_reads_on_where_its_checkpoint_stopped): unsaid.
    assert said.endswith(f": the schedule spans {after.total_steps} steps (was {STEPS})")
    assert what_changed(after, {"step": 1}) == ""  # a checkpoint from before config_yaml in meta
    # Values as a key=value override writes them (it said "init.checkpoint: None -> runs/x" and
    # "train.xla_flags:  -> " for an empty string).
    theirs = yaml.safe_load(before.config_yaml)
    theirs["train"]["xla_flags"], theirs["data"]["hf_config"] = "--xla_cpu_foo=true", "20231101.en"
    assert what_changed(before, dict(meta, config_yaml=yaml.safe_dump(theirs))).startswith(
        ": data.hf_config: 20231101.en -> null, train.xla_flags: --xla_cpu_foo=true -> ''")
    relaunched = resolve(config_lib.load([config_file], ["mesh.coordinator_address=h:1234"]))
    assert what_changed(relaunched, meta) is None  # a new coordinator port changes nothing
    # An older bertjax's checkpoint lacks the keys added since (read as "(unset) -> false"):
    # their defaults compute what it computed.
    older = yaml.safe_load(before.config_yaml)
    del older["data"]["whole_word_mask"]
    assert what_changed(before, dict(meta, config_yaml=yaml.safe_dump(older))) is None
    # A new micro_batch (with the batch_start it needs) moves the ramp's stages (whole
    # micro-batches), not the data position: the stream reads on from the checkpoint's.
    coarser = resolve(config_lib.load([config_file], ["train.micro_batch=16",
                                                        "train.batch_start=16"]))
    assert "sequence" not in what_changed(coarser, dict(meta, step=4))
    # init.checkpoint takes effect in a new run only: phase 2 started in phase 1's directory
    # resumed phase 1 (its optimizer, its schedule stretched), the key merely listed.
    phase_two = resolve(config_lib.load([config_file], ["init.checkpoint=runs/phase1"]))
    assert what_changed(phase_two, meta) == (
        ": init.checkpoint: null -> runs/phase1; init.checkpoint is not used: a resume continues "
        "checkpoint 3 (for a phase that starts from init.checkpoint's weights, with a fresh "
        "optimizer and schedule, set a new train.run_dir)")
    # float16's loss scale is state: a resume goes on with the checkpoint's, whatever the key.
    fp16 = resolve(config_lib.load([config_file], ["precision.compute=float16"]))
    lower = resolve(config_lib.load([config_file], ["precision.compute=float16",
                                                    "precision.loss_scale=1024"]))
    assert what_changed(lower, dict(meta, config_yaml=fp16.config_yaml)) == (
        ": precision.loss_scale: 32768.0 -> 1024.0; precision.loss_scale is not used: the loss "
        "scale goes on from checkpoint 3's (the key sets a new run's first scale; the scale "
        "halves by itself on overflow)")
    # The data order is a function of train.seed: the epoch a resume is in goes on in another
    # order (nothing said but the key).
    reseeded = resolve(config_lib.load([config_file], ["train.seed=1"]))
    n, done = reseeded.data.num_sequences, before.ramp.sequences_before(3)
    assert what_changed(reseeded, meta) == (
        f": train.seed: 0 -> 1; train.seed orders the data: the rest of epoch 1 comes in another "
        f"order than its first {done} of {n} sequences, so about {done * (n - done) // n} of "
        "them are read again in it and as many not at all")
    # At another seq_len the sequences themselves differ (and their order): "goes on from
    # sequence 12 (was 24): 12 sequences read again" compared positions in two other streams.
    longer = resolve(config_lib.load([config_file], ["data.seq_len=64"]))
    assert what_changed(longer, dict(meta, step=2)) == (
        ": data.seq_len: 32 -> 64; the data are cut into sequences of 64 tokens (was 32) in a new "
        "order, read from its sequence 16: text the first 2 steps read may come again")


def test_a_resume_on_data_prepared_again_from_more_text_is_said(config_file, tmp_path):
    """data.sources is a glob and tokenizer.path is set: a file added under the glob mid-run
    rebuilds data.dir with the same tokenizer (check_tokenizer passes), and the resume went on
    over another token stream (another order, another validation split) without a word."""
    corpus, data_dir, run_dir = tmp_path / "corpus", tmp_path / "data", tmp_path / "run"
    corpus.mkdir()
    write_corpus(corpus / "a.txt", 60)
    cfg = config_lib.load([config_file], [
        f"data.dir={data_dir}", f"data.sources=[{corpus}/*.txt]",
        f"tokenizer.path={ROOT / 'configs' / 'tokenizer_mini.json'}", f"train.run_dir={run_dir}",
        "train.steps=2", "train.batch_end=8", "train.eval_every=0", "train.fill_mask=[]"])
    pretrain(cfg)  # in-process: its checkpoint 2 records the prepared data

    def resume() -> tuple[list[str], dict, dict]:
        """(the resume's warnings about data, the resumed checkpoint's meta, this run's data)"""
        run, checkpoints = resolve(cfg), Checkpoints(run_dir)
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                meta = start_state(run, jax.random.key(0), make_mesh(), checkpoints)[3]
        finally:
            checkpoints.close()
        return [str(w.message) for w in seen if "prepared data" in str(w.message)], meta, \
            run.prepared_data

    (corpus / "a.txt").touch()  # same text: meta.json takes the new mtime, nothing is rebuilt
    said, meta, now = resume()
    assert said == [] and meta["prepared_data"] == now
    assert now["splits"] == {"train": {"tokens": now["splits"]["train"]["tokens"],
                                       "documents": 54},
                             "validation": {"tokens": now["splits"]["validation"]["tokens"],
                                            "documents": 6}}
    write_corpus(corpus / "b.txt", 60, seed=1)  # more text under the glob: data.dir is rebuilt
    said, meta, now = resume()
    assert said == [f"resuming {run_dir} at step 2 on other prepared data: {data_dir} is not "
                    "what checkpoint 2 was trained on (train 54 -> 108 documents, validation "
                    "6 -> 12 documents, the source texts differ); the run continues on another "
                    "token stream: its data order and validation split are not the "
                    "checkpoint's"], said
    run = resolve(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_other_data(run, {"step": 2})  # a checkpoint from before the record: nothing said


def test_kill_and_resume_is_bit_for_bit(config_file, straight, tmp_path):
    proc = train(config_file, tmp_path, wait=False)
    wait_for_checkpoint(tmp_path, proc, 2)
    proc.kill()
    proc.wait()
    latest = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    code, out = train(config_file, tmp_path)
    assert code == 0, out
    assert f"resumed at step {latest} ({tmp_path / 'checkpoints' / str(latest)})\n" in out
    assert losses(tmp_path) == losses(straight)  # exact equality, not allclose
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))  # once each
    for a, b in zip(final_params(tmp_path), final_params(straight), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_kill_after_a_checkpoint_off_the_log_cadence_leaves_the_same_rows(config_file,
                                                                            tmp_path):
    """A checkpoint between two rows writes the steps not logged yet: the resume there drops the
    killed run's later rows, and steps 1-3 were in the dropped row 4 alone (the resumed row 4
    held step 4's loss only)."""
    cadence = ("train.log_every=4", "train.checkpoint_every=3")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    code, out = train(config_file, straight, *cadence)
    assert code == 0, out
    proc = train(config_file, killed, *cadence, wait=False)
    wait_for_checkpoint(killed, proc, 3)
    proc.kill()
    proc.wait()
    code, out = train(config_file, killed, *cadence)
    assert code == 0, out
    assert losses(killed) == losses(straight)


def test_sigterm_saves_a_checkpoint_and_exits_with_sigterms_code(config_file, tmp_path):
    # 143 = 128 + SIGTERM, as a shell reports a killed process: not 0, so `train && export`
    # does not export an unfinished run.
    proc = train(config_file, tmp_path, "train.checkpoint_every=0", wait=False)
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").is_file() or not losses(tmp_path):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM: saved a checkpoint at step" in out
    assert "Traceback" not in out
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) < STEPS


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(config_file, tmp_path):
    # Without a vote the signalled process would checkpoint alone and both would hang in
    # collectives that the other never joins.
    procs = start_two_processes(config_file, tmp_path, "train.steps=60", "train.checkpoint_every=0")
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").is_file() or not losses(tmp_path):
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    out = finish(procs, 128 + signal.SIGTERM)
    assert "a signal to another process: saved a checkpoint at step" in out
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and saved[0] < 60
    assert restore_model(tmp_path, None)[2]["step"] == saved[0]


def test_resume_on_a_different_device_count(config_file, straight, tmp_path):
    proc = train(config_file, tmp_path, "mesh.strategy=fsdp", "mesh.fsdp_min_size=256",
                 wait=False)
    wait_for_checkpoint(tmp_path, proc, 2)
    proc.kill()
    proc.wait()
    code, out = train(config_file, tmp_path, devices=1)
    assert code == 0, out
    np.testing.assert_allclose(list(losses(tmp_path).values()),
                               list(losses(straight).values()), rtol=1e-4)
    for a, b in zip(final_params(tmp_path), final_params(straight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_non_finite_steps_roll_back_then_stop(config_file, tmp_path):
    # Step 1's update (lr 1e30) makes step 2 non-finite: back to the initial state at half the
    # lr, which step 3 ruins again; with one rollback allowed, step 4 stops the run.
    code, out = train(config_file, tmp_path, "optim.lr=1e30", "optim.clip=0",
                      "optim.warmup=0.0", "train.max_rollbacks=1")
    assert code == 1, out
    assert "step 2: a non-finite loss or gradient; rolled back to the initial state" in out
    assert "error: training diverged at step 4 (a non-finite loss or gradient) after 1 " \
           "rollback(s); stopping. no checkpoint is from before it" in out
    assert "Traceback" not in out
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_a_run_that_applied_no_step_says_so(config_file, tmp_path):
    """Under float16 a loss scale that overflows every step (below train.max_nonfinite in a
    row) skips every update: the run exited 0 with curves and checkpoints like a trained one's."""
    code, out = train(config_file, tmp_path, "precision.compute=float16",
                      "precision.loss_scale=1e38", "train.max_nonfinite=100")
    assert code == 0, out
    assert f"none of the {STEPS} steps was applied (their gradients or loss were not finite): " \
           "the model did not train at all; lower precision.loss_scale, or use bfloat16" in out
    assert json.loads((tmp_path / "results.json").read_text())["nonfinite_steps"] == STEPS


def test_demo_config_runs_end_to_end(tmp_path):
    # With train.xla_flags, which XLA applies to the compiles it reaches: its dump option writes
    # the train and eval steps' modules, and no other program's (the cache off: a program it
    # served would not be compiled, and the dump options are not part of its key).
    code, out = train(ROOT / "configs" / "demo.yaml", tmp_path / "run",
                      f"data.dir={tmp_path / 'data'}", "train.steps=4", "train.log_every=2",
                      "train.eval_every=4", "train.checkpoint_every=0",
                      f"train.xla_flags=--xla_dump_to={tmp_path / 'xla'}", devices=1,
                      env={"JAX_ENABLE_COMPILATION_CACHE": "false"})
    assert code == 0, out
    assert "fill-mask predictions:" in out and "validation loss" in out
    assert (tmp_path / "run" / "curves.png").is_file()
    dumped = {p.name.split(".")[1] for p in (tmp_path / "xla").glob("module_*.jit_*.txt")}
    steps = {"jit_donating_step", "jit_eval_step"}
    # besides them, the one-line program that checked the options
    assert steps <= dumped and all("lambda" in name for name in dumped - steps), dumped


def test_resume_never_starts_over_without_the_earlier_checkpoints(config_file, straight, tmp_path):
    """The earlier run's checkpoints go: a later plain resume would else continue them. (The
    same steps as `straight`, so the same compiled programs; checkpoints every 3 steps instead
    of 2, so that the earlier 2 and 4 must have been deleted.)"""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    code, out = train(config_file, run_dir, "train.resume=never", "train.checkpoint_every=3")
    assert code == 0 and "deleting" in out, out
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [3, 6]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))  # once each
    code, out = train(config_file, run_dir, "train.checkpoint_every=3")
    assert code == 0 and "nothing to do" in out, out


def test_a_refused_wandb_start_leaves_the_run_directory_as_it_was(config_file, straight,
                                                                  tmp_path, no_wandb_key):
    """wandb.mode=online without an API key is one line; it used to come after train.resume=
    never had deleted the checkpoints and config.yaml was rewritten."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    before = file_hashes(run_dir)
    code, out = train(config_file, run_dir, "train.resume=never", f"train.steps={STEPS + 2}",
                      "wandb.mode=online")
    assert code == 2 and out.strip().splitlines()[-1].startswith(
        "error: wandb.mode=online: wandb did not start"), out
    assert file_hashes(run_dir) == before


def test_continued_pretraining_keeps_this_runs_dropout_and_layout(config_file, straight):
    # The checkpoint's encoder came in whole, static fields and all: `model.dropout=0.3
    # model.attention_dropout=0.2 model.remat=false` were silently replaced by the checkpoint's
    # 0.1 / 0.0 / its remat, while config.yaml and the log said this run's values.
    overrides = ["model.dropout=0.3", "model.attention_dropout=0.2", "model.remat=false"]
    run = resolve(config_lib.load([config_file], [f"init.checkpoint={straight}", *overrides]))
    fresh = Bert(run.cfg.model, key=jax.random.key(0))
    model, _ = continue_from(fresh, run.cfg, run.tokenizer)
    assert jax.tree.structure(model) == jax.tree.structure(fresh)  # the static fields too
    assert model.encoder.embeddings.rate == 0.3 and not model.encoder.remat
    start = restore_model(straight, None)[0]
    for a, b in zip(jax.tree.leaves(model.encoder), jax.tree.leaves(start.encoder), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the checkpoint's weights


def test_whole_word_masking_without_word_pieces_is_refused_before_anything_is_written(
        config_file, tmp_path):
    """A BPE tokenizer has no '##' pieces to group: refused when the masker was built, after the
    run directory had its config.yaml and tokenizer.json; now before."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz.,"]
    bpe = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, [], unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.save(str(tmp_path / "bpe.json"))
    run_dir = tmp_path / "run"
    cfg = config_lib.load([config_file], [
        f"tokenizer.path={tmp_path / 'bpe.json'}", f"data.dir={tmp_path / 'data'}",
        f"train.run_dir={run_dir}", "data.whole_word_mask=true"])
    with pytest.raises(UserError, match=r"needs a WordPiece tokenizer.*this one is BPE: set "
                                        r"data.whole_word_mask=false"):
        pretrain(cfg)
    assert not run_dir.exists() or not any(p.name != ".lock" for p in run_dir.iterdir())


def test_a_resume_at_another_seq_len_counts_the_tokens_each_step_read(config_file, tmp_path):
    """Phase 2 of BERT's recipe in the same run directory (seq_len 32 -> 16 here): the token
    counts took the new seq_len for every step from 0 on, so results.json's tokens_seen (and the
    bundle's, and the next phase's tokens_before) and the curves' token axis were wrong."""
    run_dir = tmp_path / "run"
    common = [f"train.run_dir={run_dir}", "train.batch_end=8", "train.eval_every=0",
              "train.checkpoint_every=2", "train.fill_mask=[]", "train.log_every=1"]
    pretrain(config_lib.load([config_file], [*common, "train.steps=2"]))
    pretrain(config_lib.load([config_file], [*common, "train.steps=4", "data.seq_len=16"]))
    read = (8 * 32) * 2 + (8 * 16) * 2  # 8 rows of 32 tokens twice, then of 16 twice
    assert json.loads((run_dir / "results.json").read_text())["tokens_this_run"] == read
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows if "loss" in r] == [256, 512, 640, 768]
    checkpoints = Checkpoints(run_dir)
    try:
        assert checkpoints.read_meta(4)["tokens_this_run"] == read
    finally:
        checkpoints.close()


def test_a_resume_with_another_batch_ramp_reads_on_where_its_checkpoint_stopped(
        config_file, tmp_path, monkeypatch):
    """The data position was the new ramp's sequence count at the resumed step, as if the new
    batch had been trained from step 0: 5 steps of 8 sequences then batch 16 went on from
    sequence 80, skipping 40 (raising train.steps under a batch_ramp fraction read sequences
    again, with the masks they had, since masks follow the position). The stream now goes on
    from the checkpoint's position, and the epoch column with it."""
    read = []
    rows = pretrain_loop.PretrainData.rows

    def recorded(self, start, count):
        if self.split == "train":
            read.append((start, count))
        return rows(self, start, count)

    monkeypatch.setattr(pretrain_loop.PretrainData, "rows", recorded)
    run_dir = tmp_path / "run"
    common = [f"train.run_dir={run_dir}", "train.eval_every=0", "train.batch_ramp=0",
              "train.batch_start=null", "train.checkpoint_every=5", "train.fill_mask=[]",
              "train.log_every=1"]
    pretrain(config_lib.load([config_file], [*common, "train.batch_end=8", "train.steps=5"]))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        pretrain(config_lib.load([config_file], [*common, "train.batch_end=16",
                                                 "train.steps=8"]))
    assert read == [(8 * i, 8) for i in range(5)] + [(40 + 16 * i, 16) for i in range(3)]
    assert not [w for w in said if "sequence" in str(w.message)], [str(w.message) for w in said]
    checkpoints = Checkpoints(run_dir)
    try:
        assert checkpoints.read_meta(8)["data_position"] == 40 + 16 * 3
    finally:
        checkpoints.close()
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in logged if "loss" in r]
    assert all(b > a for a, b in zip(epochs, epochs[1:], strict=False)), epochs
    # The step sequence counts (40 + 16 per step) over the epoch, not the ramp's from step 0.
    assert epochs[5] / epochs[4] == pytest.approx(56 / 40)


def test_a_checkpoint_without_its_data_position_is_where_its_own_ramp_put_it(config_file):
    """Checkpoints from before `data_position` was saved read where their config's ramp put
    them; a checkpoint of another seq_len has no position in this stream."""
    before = resolve(config_lib.load([config_file]))
    meta = {"step": 4, "total_steps": STEPS, "config_yaml": before.config_yaml}
    ramp = BatchRamp.from_config(before.cfg.train, STEPS)
    assert data_position(meta, 4, 32) == ramp.sequences_before(4) == 48
    assert data_position(dict(meta, data_position=99), 4, 32) == 99
    assert data_position(meta, 4, 64) is None and data_position({"step": 4}, 4, 32) is None
    wider = resolve(config_lib.load([config_file], ["train.batch_start=16"]))  # 16 from step 0
    assert wider.ramp.sequences_before(4) == 64
    offsets = TokenOffsets.at(wider.ramp, 32, 4, dict(meta, tokens_this_run=48 * 32),
                              Watch.restore(wider.cfg.train, 1, None, 4))
    assert offsets.sequences == 48 - 64


def test_a_resume_reading_on_past_the_masks_row_numbers_is_refused(config_file, tmp_path):
    """size_run checks the rows a ramp reads from step 0; a resume reads on from its
    checkpoint's row, which can be further on (a longer ramp). Past 2**31 the step's int32 row
    number failed mid-run with numpy's OverflowError."""
    run_dir = tmp_path / "run"
    common = [f"train.run_dir={run_dir}", "train.eval_every=0", "train.checkpoint_every=2",
              "train.fill_mask=[]"]
    pretrain(config_lib.load([config_file], [*common, "train.steps=2"]))
    meta_file = run_dir / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(dict(meta, data_position=2**31 - 8)))
    written = (run_dir / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"read up to row 2,147,483,\d+ of the data stream, "
                                        r"more than the masking's int32 row numbers"):
        pretrain(config_lib.load([config_file], [*common, "train.steps=4"]))
    # Refused before the run directory is written to (in the loop it came after the resume
    # rewrote config.yaml and deleted the finished run's results.json).
    assert (run_dir / "config.yaml").read_text() == written
    assert (run_dir / "results.json").exists()


def test_a_resume_may_switch_to_and_from_float16(config_file, tmp_path):
    """float16's loss scale is part of the train state: a resume at another precision.compute
    (float32 -> float16 -> float32 here; bfloat16 is float32's case) met a checkpoint of another
    tree, called it damaged and advised deleting it."""
    run_dir = tmp_path / "run"
    common = [f"train.run_dir={run_dir}", "train.batch_end=8", "train.eval_every=0",
              "train.checkpoint_every=2", "train.fill_mask=[]", "train.keep_checkpoints=5"]
    for steps, compute in ((2, "float32"), (4, "float16"), (6, "float32")):
        pretrain(config_lib.load([config_file], [*common, f"train.steps={steps}",
                                                 f"precision.compute={compute}"]))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scaled = [r["step"] for r in rows if "loss_scale" in r]
    assert scaled == [3, 4] and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)


def test_a_token_budget_resumed_at_another_seq_len_counts_what_was_read(config_file, tmp_path):
    """train.tokens sized the run at the resume's seq_len from step 0: phase 2 of BERT's recipe
    (a longer seq_len for the rest of the budget) stopped with part of the budget unread, or,
    past the step so computed, was refused; a shorter one read more than the budget."""
    run_dir = tmp_path / "run"
    common = [f"train.run_dir={run_dir}", "train.batch_end=8", "train.eval_every=0",
              "train.checkpoint_every=2", "train.fill_mask=[]", "train.steps=null"]
    pretrain(config_lib.load([config_file], [*common, "train.tokens=512"]))  # 2 steps of 8 x 32
    pretrain(config_lib.load([config_file], [*common, "train.tokens=1024", "data.seq_len=16"]))
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["steps"], results["tokens_this_run"]) == (2 + 4, 1024)  # 4 steps of 8 x 16


def test_a_run_started_on_a_thread_of_its_own_trains_and_leaves_the_signals_alone(config_file,
                                                                                  tmp_path):
    """A notebook or a server trains on a thread of its own. Python installs signal handlers from
    the main thread only: the run failed with ValueError after it had written its run directory,
    leaving metrics.jsonl open."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    outcome = {}

    def run() -> None:
        try:
            outcome["run_dir"] = pretrain(config_lib.load([config_file], [
                f"train.run_dir={tmp_path}", "train.steps=2", "train.batch_end=8",
                "train.eval_every=0", "train.fill_mask=[]"]))
        except Exception as e:  # noqa: BLE001 - asserted below, in the test's own thread
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert "error" not in outcome, outcome
    assert (outcome["run_dir"] / "results.json").is_file()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


@pytest.mark.parametrize("overrides,rated", [
    # every step's row but the first (it holds the compilation) and the ramp's step 4 (it
    # compiled the next shape): none of its steps is in a window
    ([], 6),
    (["train.log_every=2", "train.eval_every=3", "train.checkpoint_every=3"], 3),  # 3, 6, 8
], ids=["every-step", "off-cadence"])
def test_tok_s_counts_the_steps_not_validations_checkpoints_or_compiles(config_file, tmp_path,
                                                                       monkeypatch, overrides,
                                                                       rated):
    """A row's tok/s (and MFU) counted the validation and checkpoint before it: the demo-sized
    run's rows after one read 487 and 3,931 tok/s beside 7,600; and the compilation of the batch
    ramp's next shape (72 tok/s beside 20,000). Off the log cadence, a validation then a
    checkpoint at step 3 wrote step 3's row after the validation had restarted the
    window: 0 tok/s."""
    extra = [0.0]  # seconds added to the Monitor's clock: a slow pass, without the wait
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(
        perf_counter=lambda: time.perf_counter() + extra[0], time=time.time))

    def slow(call):
        def wrapped(*args, **kwargs):
            extra[0] += 1000.0
            return call(*args, **kwargs)
        return wrapped

    def slow_new_shapes(make_train_step):
        def made(*args, **kwargs):
            step, shapes = make_train_step(*args, **kwargs), []

            def call(state, batch, *rest):
                shapes.append(jax.tree.leaves(batch)[0].shape)
                if len(set(shapes)) > 1 and shapes[-1] != shapes[-2]:  # compiles a new shape
                    extra[0] += 1000.0
                extra[0] += 1.0  # the step itself, run inside the call (as on a CPU)
                return step(state, batch, *rest)
            return call
        return made

    monkeypatch.setattr(pretrain_loop, "validation_sums", slow(pretrain_loop.validation_sums))
    monkeypatch.setattr(Checkpoints, "save", slow(Checkpoints.save))
    monkeypatch.setattr(pretrain_loop, "make_train_step",
                        slow_new_shapes(pretrain_loop.make_train_step))
    pretrain(config_lib.load([config_file], [f"train.run_dir={tmp_path}", "train.steps=8",
                                             "train.fill_mask=[]", *overrides]))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len({r["batch"] for r in rows if "batch" in r}) > 1  # the ramp ran
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    assert len(rates) == rated
    assert min(rates) > 1.0, rates  # a window holding 1,000 s: < 1 tok/s
    # A step takes 1 s or more, of 16 sequences of 32 at most: a window that held the tokens
    # of the step that compiled, not its second, read 1e5 tok/s and more
    assert max(rates) <= 16 * 32, rates


def test_a_validation_off_the_log_cadence_has_a_training_row_at_its_step(config_file, tmp_path):
    """bertjax.plot draws a validation at its training row's tokens: with eval_every=2 and
    log_every=3 the validation at step 2 had no such row, and was left out of curves.png."""
    pretrain(config_lib.load([config_file], [
        f"train.run_dir={tmp_path}", "train.steps=4", "train.log_every=3", "train.eval_every=2",
        "train.checkpoint_every=0", "train.fill_mask=[]"]))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]
    assert [r["step"] for r in rows if "loss" in r] == [2, 3, 4]  # each step in one row


def test_the_new_pass_is_said_at_the_step_that_made_it_not_at_its_row(config_file, tmp_path,
                                                                      capsys):
    """With log_every=5 the warning named the row's step (12), not the step whose batch first
    read a sequence again."""
    cfg = config_lib.load([config_file], [f"train.run_dir={tmp_path}", "train.steps=12",
                                          "train.log_every=5", "train.eval_every=0",
                                          "train.checkpoint_every=0", "train.fill_mask=[]"])
    pretrain(cfg)
    out = capsys.readouterr().out
    assert re.search(r"^bertjax: [\d,]+ parameters, \d+ device\(s\) \(cpu\), 12 steps, ", out,
                     re.M), out  # the device's kind: which GPU a log came from
    size = int(re.search(r"([\d,]+) train sequences/epoch", out).group(1).replace(",", ""))
    ramp = BatchRamp.from_config(cfg.train, 12)
    passed = next(step for step in range(1, 13) if ramp.sequences_before(step) > size)
    assert passed % 5, passed  # inside a row's window: the test tells the two apart
    assert f"passed one epoch of the training data at step {passed};" in out, out
