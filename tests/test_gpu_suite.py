"""bench/gpu_suite.py before it meets a GPU: the kernel-family rules and trace reading of
bench/profile_summary.py, a failing item and an over-budget item reported (never fatal), and the
whole --smoke run on CPU (every code path of the GPU call, tiny shapes); bench/gpu_glue.sh's
failed stages said in its exit code; bench/gpu_wheels.py installing only what a machine lacks."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import gpu_suite  # bench/ is on the path through pyproject's [tool.pytest.ini_options]
import profile_summary
import pytest
import suite_items
from profile_summary import describe_ops, device_events, family, format_summary, summarize

from bertjax import glue_tasks, pretrain_loop
from bertjax.errors import UserError

BENCH = Path(__file__).resolve().parents[1] / "bench"

ENV = dict(os.environ, XLA_FLAGS="")  # one CPU device, as on a GPU machine's host


@pytest.mark.parametrize("args, expected", [
    (("input_scatter_fusion",), "scatter/gather"),
    (("gemm_fusion.3", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n"), "matmul"),
    (("custom-call.12", "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", "custom-call",
      "__cublas$lt$matmul"), "matmul"),
    (("custom-call.4", "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "custom-call",
      "__cudnn$fmhaSoftmax"), "attention"),
    (("loop_exponential_fusion", "", "fusion", "",
      "jit(step)/while/body/transpose(jvp(attention))/exp"), "attention"),
    (("loop_add_fusion", "", "fusion", "", "jit(step)/transpose(jvp())/add_any"),
     "fusions/elementwise"),
    (("copy.7", "", "copy"), "copies"),
    (("dynamic_update_slice_fusion.2",), "copies"),
    (("all-gather-start.1", "ncclDevKernel_AllGather_RING_LL"), "collectives"),
    (("ynn_fusion.3",), "matmul"),
    (("convert_fusion.1", "", "fusion"), "fusions/elementwise"),
])
def test_kernel_families(args, expected):
    assert family(*args) == expected


def write_xspace(path: Path, lines: dict[str, list[tuple]], gpus: int = 1) -> Path:
    """A jax.profiler XSpace file of `gpus` GPU planes alike: {line name: [(event name, µs,
    hlo_op or None), ...]}, each line's events one after another."""
    from jax.profiler import ProfileData

    names = sorted({name for events in lines.values() for name, _, _ in events})
    ids = {name: i + 1 for i, name in enumerate(names)}
    text = []
    for gpu in range(gpus):
        text.append(f'planes {{ id: {gpu + 1} name: "/device:GPU:{gpu}"')
        for i, (line, events) in enumerate(lines.items()):
            text.append(f'lines {{ id: {i + 1} name: "{line}" timestamp_ns: 1000')
            offset = 0
            for name, us, op in events:
                stat = f'stats {{ metadata_id: 1 str_value: "{op}" }}' if op else ""
                text.append(f"events {{ metadata_id: {ids[name]} offset_ps: {offset} "
                            f"duration_ps: {int(us * 1e6)} {stat} }}")
                offset += int(us * 1e6)
            text.append("}")
        text += [f'event_metadata {{ key: {i} value {{ id: {i} name: "{name}" }} }}'
                 for name, i in ids.items()]
        text += ['stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }', "}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ProfileData.text_proto_to_serialized_xspace("\n".join(text)))
    return path


def test_trace_summary_counts_stream_kernels_once_and_skips_control_flow(tmp_path):
    hlo = """
  %fusion.1 = f32[8]{0} fusion(f32[8]{0} %p), kind=kLoop, calls=%c, metadata={op_name="a/add"}
  %dot.2 = f32[8,8]{1,0} dot(f32[8,8]{1,0} %x, f32[8,8]{1,0} %y), metadata={op_name="b/dot_general"}
  %while.3 = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %t), condition=%cond, body=%body
"""
    ops = describe_ops(hlo)
    assert ops["dot.2"] == {"opcode": "dot", "target": "", "op_name": "b/dot_general"}
    kernels = [("loop_add_fusion", 1000.0, "fusion.1"), ("sm90_gemm", 3000.0, "dot.2"),
               ("while", 9000.0, "while.3")]
    # the "XLA Ops" line repeats the stream's kernels
    path = write_xspace(tmp_path / "t.xplane.pb", {"Stream #7(Compute)": kernels,
                                                   "XLA Ops": kernels})
    events = device_events(profile_summary.read_xspace(path))
    assert len(events) == 3
    s = summarize(events, ops, steps=2)
    assert s["kernel_ms_per_step"] == 2.0  # (1 + 3) ms over 2 steps; the while left out
    assert s["families_ms"]["matmul"] == 1.5 and s["families_ms"]["fusions/elementwise"] == 0.5
    # a run's trace has no HLO text to read the opcodes from: the while is told by its name
    assert summarize(events, {}, steps=2)["kernel_ms_per_step"] == 2.0
    # a copy stream beside the compute one: busy counts the overlap once
    path = write_xspace(tmp_path / "copy.xplane.pb", {
        "Stream #7(Compute)": kernels, "Stream #8(MemcpyH2D)": [("MemcpyH2D", 1500.0, "copy.4")]})
    s = summarize(device_events(profile_summary.read_xspace(path)), ops, steps=2)
    assert (s["kernel_ms_per_step"], s["busy_ms_per_step"]) == (2.75, 2.0)  # 5.5 ms, 4 at once
    assert format_summary(s, step_ms=4.0).startswith(
        "profile (2 steps): 2.75 ms of kernels per step, busy 2.00 ms (50% of the 4.00 ms step "
        "busy)\n")
    # a process driving two GPUs: per device, their mean (summed, it read 4.0)
    path = write_xspace(tmp_path / "two.xplane.pb", {"Stream #7(Compute)": kernels}, gpus=2)
    s = summarize(device_events(profile_summary.read_xspace(path)), ops, steps=2)
    assert (s["devices"], s["kernel_ms_per_step"]) == (2, 2.0)
    assert format_summary(s).startswith("profile (2 steps): 2.00 ms of kernels per step and "
                                        "device (the mean of 2)\n")


def test_a_trace_without_hlo_op_names_falls_back_to_the_stream_kernels(tmp_path):
    path = write_xspace(tmp_path / "t.xplane.pb", {
        "Stream #7(Compute)": [("loop_add_fusion", 1000.0, None),
                               ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", 3000.0, None),
                               ("MemcpyD2D", 500.0, None)],
        "python": [("jit_step", 9000.0, None)]})
    events = device_events(profile_summary.read_xspace(path))
    assert [e["name"] for e in events] == ["loop_add_fusion",
                                           "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", "MemcpyD2D"]
    s = summarize(events, {}, steps=1)
    assert s["families_ms"] == {"matmul": 3.0, "attention": 0.0, "fusions/elementwise": 1.0,
                                "copies": 0.5, "scatter/gather": 0.0, "collectives": 0.0}


def test_a_runs_trace_is_summarized_as_text_and_bad_folders_are_one_line(tmp_path, capsys):
    """`bench/profile_summary.py RUN/profile --steps N`: train.profile's trace, without
    TensorBoard; a folder without a trace, or a trace cut short, is one line."""
    run = tmp_path / "profile" / "plugins" / "profile"
    write_xspace(run / "2026_12_07_21_20_42" / "host.xplane.pb", {"Stream #7(Compute)": [
        ("loop_add_fusion", 1000.0, "fusion.1"), ("sm90_xmma_gemm_bf16bf16", 3000.0, "gemm.2")]})
    profile_summary.main([str(tmp_path / "profile"), "--steps", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["profile (2 steps): 2.00 ms of kernels per step",
                         "  matmul                     1.500 ms   75.0%",
                         "  fusions/elementwise        0.500 ms   25.0%"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty holds no jax.profiler trace \(\*\.xplane\.pb"):
        profile_summary.main([str(tmp_path / "empty")])
    newer = run / "2026_12_07_21_30_00" / "host.xplane.pb"  # the newest is read
    newer.parent.mkdir()
    newer.write_bytes((run / "2026_12_07_21_20_42" / "host.xplane.pb").read_bytes()[:-9])
    with pytest.raises(UserError, match=r"^the newest trace under .* is unreadable \(Runtime"):
        profile_summary.main([str(tmp_path / "profile")])
    with pytest.raises(UserError, match=r"is not a folder"):
        profile_summary.main([str(tmp_path / "nowhere")])
    for process in (0, 1):  # a run of two processes: one folder each
        write_xspace(tmp_path / "two" / f"process{process}" / "plugins" / "profile" /
                     "2026_12_07_21_20_42" / "host.xplane.pb",
                     {"Stream #7(Compute)": [("loop_add_fusion", 1000.0, "fusion.1")]})
    with pytest.raises(UserError, match=r"two holds the traces of 2 processes \(process0, "
                                        r"process1\), one folder each: give one, e.g. .*/two/"
                                        r"process0$"):
        profile_summary.main([str(tmp_path / "two")])
    profile_summary.main([str(tmp_path / "two" / "process1")])
    assert capsys.readouterr().out.startswith("profile (1 step): 1.00 ms of kernels per step")


def test_a_call_without_the_matmul_item_keeps_its_mfu():
    ours = {"id": "unrolled", "kind": "ours", "shape": ["base", 30522, 128, 128], "status": "ok",
            "result": {"step_s": 0.05, "compile_s": 30.0, "first_step_s": 1.0, "loss": 10.0,
                       "peak_bytes": 2**30, "flops_per_token": 1e9, "vendor_peak": 1e15,
                       "attention": "cuDNN"}}
    line = gpu_suite.rows({"items": [ours]})[1].split()
    assert line[7:9] == ["327,680", "32.8%"]  # 128 x 128 / 0.05 s; x 1e9 FLOPs / 1e15


def test_the_peer_clips_its_gradients_as_our_step_does(monkeypatch):
    """Our step clips the global gradient norm at optim.clip (1.0), as Hugging Face's Trainer
    does by default; the peer's step did not, so the two sides timed different work."""
    torch = pytest.importorskip("torch")  # in .venv-bench
    pytest.importorskip("transformers")
    clip, norms = torch.nn.utils.clip_grad_norm_, []

    def counted(parameters, max_norm, *args, **kwargs):
        norms.append(max_norm)
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counted)
    item = dict(gpu_suite.item("peer", "peer", ("tiny", 64, 2, 16)), precision="float32", steps=2)
    suite_items.run_peer(item)
    assert norms == [1.0] * 3  # the warm-up step and the two timed ones


def test_the_table_names_the_peer_its_ratio_is_against():
    """A GPU call's first table, by hand: "vs peer" is against the faster peer row of the shape
    (here torch.compile's), and the text names it; it named neither, so a failed compile peer
    silently left the headline ratio against eager. BERT-base at seq 128 with 20 predictions a
    sequence: 3 x (12 x (2 (4 h^2 + 2 h i) + 4 s h) + 2 (h^2 + h V) 20 / 128) = 546,292,512."""
    base, sparse, dense = ["base", 30522, 128, 128], 546_292_512, 667_948_032

    def row(id_, kind, step_s, flops, status="ok"):
        name = "dense_flops_per_token" if kind.startswith("peer") else "flops_per_token"
        return {"id": id_, "kind": kind, "shape": base, "status": status, "result": {
            "step_s": step_s, "first_step_s": 9.0, "loss": 10.0, "peak_bytes": 2**30,
            name: flops, "vendor_peak": 989e12, "name": id_}}

    matmul = {"id": "matmul", "kind": "matmul", "shape": base, "status": "ok", "n": 8192,
              "precision": "bfloat16", "result": {"matmul_flops": 700e12, "vendor_peak": 989e12,
                                                  "device": "NVIDIA H100 80GB HBM3", "jax": "x"}}
    items = [matmul, row("ours", "ours", 0.05, sparse), row("peer", "peer", 0.08, dense),
             row("peer-compile", "peer-compile", 0.06, dense)]
    report = {"items": items, "elapsed_s": 1.0, "meta": {"budget": 400}}
    lines = gpu_suite.report_text(report).splitlines()
    # 16,384 tokens / 50 ms = 327,680 tok/s; x 546.3 MFLOP = 179.0 TFLOP/s: / 989, / 700
    assert lines[2].split()[6:11] == ["50.00", "327,680", "1.20x", "18.1%", "25.6%"]
    assert lines[4].split()[7:10] == ["273,067", "15.1%", "21.3%"]  # the same useful work
    assert ("vs peer at base b128 s128 v30522: against peer-compile (of peer 80.00 ms, "
            "peer-compile 60.00 ms); the peer's dense MLM head does 22% more FLOPs than its MFU "
            "credits") in lines
    items[3] = row("peer-compile", "peer-compile", 0.06, dense, status="failed: OOM")
    lines = gpu_suite.report_text(report).splitlines()
    assert lines[2].split()[8] == "1.60x"
    assert any(x.startswith("vs peer at base b128 s128 v30522: against peer (of peer 80.00 ms); "
                            "no torch.compile peer measured at this shape") for x in lines)

def test_bench_train_times_its_matmul_peak_on_random_data(monkeypatch):
    """bench/train.py's %mm-peak divided by a product of ones, 4096^3 on a GPU: constant data ran
    13 % faster on an H200 (/work/.library/device/KINDS.md), so its shares read low. It times
    the suite's matmul now: random data, 3 warm-ups, 10 timed products."""
    import jax
    import train as bench_train  # bench/train.py

    real_jit, constant = jax.jit, []

    def watched(fn):
        def call(*arrays):
            constant.extend(bool((a == a.ravel()[0]).all()) for a in arrays)
            return real_jit(fn)(*arrays)
        return call

    monkeypatch.setattr(jax, "jit", watched)
    assert bench_train.measured_matmul_peak("float32") > 0
    assert constant and not any(constant)

def test_our_timed_steps_end_when_the_last_update_is_done(monkeypatch):
    """The clock stopped on the last step's metrics alone; the optimizer update that writes the
    state is part of the step the peer times (torch.cuda.synchronize)."""
    import jax

    real, blocked = jax.block_until_ready, []
    monkeypatch.setattr(jax, "block_until_ready",
                        lambda tree: blocked.append(jax.tree.leaves(tree)) or real(tree))
    item = dict(gpu_suite.item("ours", "ours", ("tiny", 64, 2, 16), set_=["model.num_layers=1"]),
                precision="float32", steps=1)
    suite_items.run_ours(item)
    timed = blocked[1]  # after the warm-up step's
    assert any(x.ndim == 2 for x in timed)  # the state's weight matrices, not only the scalars

def test_a_row_says_what_its_step_moved_or_that_its_program_was_not_read():
    """An `ours` row carries the static reading of its compiled step (hlo_summary); where the
    reader failed on the GPU's program (another jax's HLO text), the row says so and the
    timing stands."""
    result = {"step_s": 0.05, "compile_s": 30.0, "first_step_s": 1.0, "loss": 10.0,
              "peak_bytes": 2**30, "flops_per_token": 1e9, "vendor_peak": 1e15,
              "attention": "cuDNN"}
    ours = {"kind": "ours", "shape": ["base", 30522, 128, 128], "status": "ok"}
    read = dict(ours, id="ours", result=dict(result, kernels=703, moved_bytes=49.33e9,
                                             static_error=None))
    unread = dict(ours, id="scan", result=dict(result, kernels=0, moved_bytes=0,
                                               static_error="ValueError: unknown op"))
    lines = gpu_suite.rows({"items": [read, unread]})
    assert lines[1].endswith("cuDNN [703 kernels, 49.3 GB: 0.99 TB/s]")  # 49.33 GB / 50 ms
    assert lines[2].endswith("cuDNN [its HLO not read: static_error in the json]")
    assert lines[2].split()[7] == "327,680"  # the timing stands


def test_every_xla_flag_of_the_gpu_plan_is_one_xla_knows():
    """XLA aborts at start on a flag it does not know: a typo would cost its item on the GPU.
    This jaxlib parses the GPU flags on CPU too (the GPU image's is newer)."""
    flags = sorted({f for it in gpu_suite.gpu_plan() for f in it["xla_flags"].split()} |
                   {f for it in gpu_suite.gpu_plan() for o in it["set"]
                    if o.startswith("train.xla_flags=") for f in o.partition("=")[2].split()})
    assert "--xla_gpu_dot_merger_threshold_mb=0" in flags
    proc = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                          env=dict(ENV, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]


def test_a_failing_item_is_reported_not_fatal():
    it = dict(gpu_suite.item("bad", "ours", ("tiny", 64, 2, 16), set_=["model.attention=flash"]),
              precision="float32", steps=1)
    done = gpu_suite.run_item(it, 120, ENV)
    assert done["status"].startswith("failed: ")
    assert "model.attention=flash is invalid" in done["status"]


@pytest.mark.slow
def test_an_item_over_its_budget_is_skipped_and_the_suite_goes_on(tmp_path):
    out = subprocess.run([sys.executable, BENCH / "gpu_suite.py", "--smoke", "--only",
                          "ours,profile", "--max-item-seconds", "1", "--out", tmp_path],
                         env=ENV, capture_output=True, text=True, timeout=120)
    items = json.loads((tmp_path / "gpu_suite.json").read_text())["items"]
    assert [(d["id"], d["status"]) for d in items] == [
        ("ours", "over budget (1 s): skipped"),
        ("profile", "skipped: no successful row of this shape")]
    # the report is written, but a call that measured nothing fails (it once exited 0)
    assert out.returncode == 1 and (tmp_path / "gpu_suite.txt").is_file()
    assert out.stderr.strip().splitlines()[-1] == (
        "error: no item measured anything (not ok: ours, profile); the table above says why")


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, BENCH / "gpu_suite.py", "--smoke", "--out", tmp_path],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    status = {d["id"]: d["status"] for d in report["items"]}
    assert {k: v for k, v in status.items() if k != "peer"} == dict.fromkeys(
        ["matmul", "ours", "loop", "profile"], "ok"), status
    assert status["peer"] == "ok" or "not installed" in status["peer"]
    by_id = {d["id"]: d for d in report["items"]}
    ours = by_id["ours"]["result"]
    assert ours["micro_batch"] == 4 and ours["attention"].startswith("XLA's")
    assert ours["prng"] == "rbg"  # the item's environment reached its process
    assert ours["kernels"] > 0 and ours["moved_bytes"] > 0  # its compiled program, read
    assert ours["static_error"] is None
    assert by_id["profile"]["note"].endswith("row: ours")
    loop = by_id["loop"]["result"]  # 3 timed log windows of the real pretraining loop
    assert len(loop["window_tok_s"]) == 3 and min(loop["window_tok_s"]) > 0
    assert loop["step_s"] > 0 and loop["flops_per_token"] == ours["flops_per_token"]
    # and a fourth, traced by the run's own train.profile: the loop's kernels per step
    assert loop["traced_step_s"] > 0 and loop["profile"]["families_ms"]["matmul"] > 0
    profile = by_id["profile"]["result"]["profile"]
    assert profile["kernel_ms_per_step"] > 0 and profile["families_ms"]["matmul"] > 0
    assert profile["families_ms"]["attention"] > 0  # the named scope reaches the profile
    text = (tmp_path / "gpu_suite.txt").read_text()
    assert "profile (2 steps)" in text and "MFU" in text
    assert "profile of the loop's last window (train.profile;" in text
    assert re.search(r"^  the same kernels against the untraced windows' [\d.]+ ms step: \d+% "
                     r"busy ", text, re.M), text


@pytest.mark.slow
def test_the_loop_item_keeps_its_windows_when_the_run_fails_at_its_end(monkeypatch):
    """A run that fails at its end (here: results.json on a full disk) after every timed window
    is written: the item still reports them, and says how the run ended."""

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pretrain_loop.Loop, "write_results", disk_full)
    item = gpu_suite.item("loop", "loop", ("tiny", 512, 8, 32), set_=["data.max_documents=300"],
                          precision="float32", steps=2)
    result = suite_items.run_loop(item)
    assert result["run_end"] == "OSError: [Errno 28] No space left on device"
    assert len(result["window_tok_s"]) == 3 and result["step_s"] > 0
    assert result["profile"]["kernel_ms_per_step"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("argv, says", [
    (["gpu_suite.py", "--smoke", "--only", "ours,bogus", "--out", "."],
     "error: --only: unknown item id(s) bogus; the ids are matmul, ours, loop, peer, profile"),
    (["train.py", "--size", "nope", "--steps", "1"], "error: model.size=nope is invalid"),
    (["order_probe.py", "nope"], "error: checkpoint path nope does not exist"),
    (["glue_text.py", "out", "--glue-dir", "nope"], "error: --glue-dir nope is not a directory"),
    (["linear_probe.py", "nope", "--task", "stsb"], "error: --task stsb is a regression task"),
    (["linear_probe.py", "nope", "--max-train", "1"],  # fitted the L2 strength on no rows
     "error: --max-train 1: the probe needs at least 10 training rows"),
    (["linear_probe.py", "nope", "--glue-dir", "nope"],  # named glue.data_dir, a config key
     "error: --glue-dir nope holds no SST-2/ folder; pass a directory of GLUE TSVs"),
    (["linear_probe.py", "nope", "--buckets", "16", "8"],  # named glue.buckets
     "error: --buckets 16 8 must be strictly increasing lengths >= 8, e.g. --buckets 32 64 128"),
], ids=["unknown-item", "bad-size", "no-checkpoint", "no-glue-dir", "regression-task",
        "probe-max-train", "probe-glue-dir", "probe-buckets"])
def test_a_bench_scripts_bad_argument_is_one_line_and_exit_2(tmp_path, argv, says):
    """`--only` with a mistyped id ran nothing of it (none right: a traceback at the end, the GPU
    call spent); `bench/train.py --size nope` printed the child's 3000-character traceback;
    glue_text.py made an empty OUT_DIR before it found --glue-dir missing."""
    out = subprocess.run([sys.executable, BENCH / argv[0], *argv[1:]], env=ENV, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert says in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())


def test_the_linear_probe_reads_a_task_whose_files_have_other_names(shared_data):
    """The shared MNLI copy has train_pairs10k.tsv and dev_matched_subset.tsv: the probe could not
    read it, and said the --glue-dir holding MNLI/ held no MNLI folder's files."""
    from linear_probe import read_splits

    from bertjax.errors import UserError

    mnli, glue_dir = glue_tasks.get_task("mnli"), str(shared_data / "glue")
    with pytest.raises(UserError, match=r"MNLI holds no train.tsv \(it holds .*"
                                        r"train_pairs10k.tsv.*\); name the train file it has: "
                                        r"--train-file NAME"):
        read_splits(mnli, glue_dir, 50)
    train, dev = read_splits(mnli, glue_dir, 50, "train_pairs10k.tsv", "dev_matched_subset.tsv")
    assert (len(train), dev.split) == (50, "dev_matched") and len(dev) > 50
    assert dev.source.endswith("MNLI/dev_matched_subset.tsv")


@pytest.mark.slow
def test_order_probe_refuses_what_it_cannot_measure_in_one_line(tmp_path):
    """A fine-tuned classifier (no MLM head), --seq past the positions, --rows 0 / --batch 0:
    tracebacks (TypeError, ZeroDivisionError, ValueError) before."""
    import jax
    from make_hf_export_fixture import VOCAB, make_tokenizer

    from bertjax import config
    from bertjax.export import save_bundle
    from bertjax.model import Bert

    cfg = config.load([], [f"model.vocab_size={len(VOCAB)}", "model.hidden_size=32",
                           "model.num_heads=2", "model.intermediate_size=48",
                           "model.max_position_embeddings=32"])
    save_bundle(Bert(cfg.model, key=jax.random.key(0), mlm=False, num_labels=2), cfg,
                make_tokenizer(), tmp_path / "classifier")
    save_bundle(Bert(cfg.model, key=jax.random.key(0)), cfg, make_tokenizer(), tmp_path / "mlm")
    for args, says in (
            (["classifier"], "error: classifier has no MLM head (a fine-tuned classifier?)"),
            (["mlm", "--seq", "64"], "error: --seq 64 is longer than the model's 32 positions"),
            (["mlm", "--rows", "0"], "error: --rows 0: give a positive number"),
            (["mlm", "--batch", "0"], "error: --batch 0: give a positive number")):
        out = subprocess.run([sys.executable, BENCH / "order_probe.py", *args], env=ENV,
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and says in out.stderr, out.stderr[-2000:]
        assert "Traceback" not in out.stderr


def test_order_probe_probes_each_validation_row_once(capsys):
    """--rows past the split's rows wrapped around: the demo's 113 rows were scored as 256, most
    of them twice, under a header that said 256 rows."""
    from order_probe import distinct_rows

    assert distinct_rows(113, 256, "data/demo's validation split", 128) == 113
    assert "has 113 rows of 128 tokens; probing those, not --rows 256" in capsys.readouterr().out
    assert distinct_rows(113, 64, "x", 128) == 64 and capsys.readouterr().out == ""


# A stand-in for the python that bench/gpu_glue.sh runs: each command makes what the real one
# would leave for the script to collect, and the command named by $FAIL fails.
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$RUN/calls"
case "$*" in *"${FAIL:-nothing}"*) echo "$FAIL failed"; exit 1;; esac
case "$1 $2" in
  "-m bertjax.train") mkdir -p "$RUN/checkpoints/8"; echo '{"step": 8}' > "$RUN/metrics.jsonl";;
  "-m bertjax.export") mkdir -p "$4" && echo weights > "$4/model.safetensors";;
  bench/glue_experiment.py*) out=$(sed -E 's/.*--out ([^ ]+).*/\1/' <<< "$*")
                             mkdir -p "$out" && echo '{}' > "$out/summary.json";;
  *) echo "probe: $1";;
esac
"""


@pytest.mark.parametrize("fail, rc, said", [
    (None, 0, "done"),
    ("--out RUN/sst2_full", 1, "done; failed: GLUE sst2_full"),
    ("bench/order_probe.py", 1, "done; failed: order probe"),
    ("-m bertjax.export", 1, "done; failed: export"),
    ("bench/linear_probe.py", 1, "done; failed: linear probe"),
    ("-m bertjax.train", 1, "FAILED: pretraining (no checkpoint)"),
])
def test_the_gpu_glue_script_says_which_stage_failed_in_its_exit_code(tmp_path, fail, rc, said):
    """bench/gpu_glue.sh is a GPU session's second call: a failed stage must show in its exit
    code and last line (it exited 0 whatever its GLUE runs did) and not stop the other stages."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    env = dict(os.environ, PY=str(python), RUN=str(run), OUT=str(out),
               FAIL=(fail or "nothing").replace("RUN", str(run)))
    done = subprocess.run(["bash", str(BENCH / "gpu_glue.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == rc, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].split(": ", 1)[1] == said
    assert (out / "session.log").read_text() == done.stdout
    kept = {p.name for p in out.iterdir()}
    if fail == "-m bertjax.train":
        assert kept == {"session.log"}
        return
    experiments = ["glue_plan", "sst2_3epochs", "sst2_full", "cls_sst2_mnli"]
    missing = {"-m bertjax.export": "mini_bundle.tar",
               "--out RUN/sst2_full": "sst2_full_summary.json"}.get(fail)
    assert kept == {"session.log", "pretrain_metrics.jsonl", "probes.txt", "mini_bundle.tar",
                    *(f"{name}_summary.json" for name in experiments)} - {missing}
    calls = (run / "calls").read_text()
    assert all(f"--out {run}/{name} " in calls for name in experiments)  # none skipped


def fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of one module `name` (pip installs it offline)."""
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 1\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def test_the_gpu_call_installs_only_the_carried_wheels_its_machine_lacks(tmp_path):
    """bench/gpu_wheels.py install, the GPU call's first command: a wheel of a distribution the
    machine has (here pytest) is left alone, not shadowed on PYTHONPATH; a missing one is
    installed into the target without dependencies."""
    carried = tmp_path / "whl"
    carried.mkdir()
    fake_wheel(carried, "bertjax_missing_module", "1.0")
    fake_wheel(carried, "pytest", "0.0.1")  # an old pytest would shadow this one's
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, str(BENCH / "gpu_wheels.py"), "install", "--dir",
                           str(carried), "--target", str(target)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == [
        "bertjax_missing_module-1.0.dist-info", "bertjax_missing_module.py"]
    assert "installed into" in done.stdout and "bertjax_missing_module 1.0" in done.stdout
    assert f"already here: pytest {pytest.__version__}" in done.stdout
    empty = subprocess.run([sys.executable, str(BENCH / "gpu_wheels.py"), "install", "--dir",
                            str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "bench/gpu_wheels.py download" in empty.stderr
