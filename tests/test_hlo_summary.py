"""bench/hlo_summary.py on real XLA:GPU programs compiled for H100s by
tests/make_gpu_hlo_fixture.py (tests/fixtures/gpu_hlo): the gradient of three scanned bf16
layers h -> gelu(h @ w[i]), h [512, 256], on one H100, and of one layer with its rows split over
two (data parallel)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import hlo_summary  # bench/ (pyproject's pythonpath)
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "gpu_hlo"
HLO = (FIXTURES / "scan_grad.hlo").read_text()
ROWS, WIDTH, LAYERS = 512, 256, 3


def test_matmul_flops_and_launches_count_each_scanned_layer():
    found = hlo_summary.kernels(HLO)
    matmuls = [k for k in found if k["family"].startswith("matmul")]
    # Per layer one matmul forward, two backward (the input's and the weight's gradients).
    assert sum(k["times"] for k in matmuls) == 3 * LAYERS
    assert all(k["flops"] == 2 * ROWS * WIDTH * WIDTH for k in matmuls)
    assert {k["times"] for k in found} == {1, LAYERS}  # kernels outside and inside the loops


def test_a_buffer_updated_in_place_counts_as_its_update():
    """The forward scan stacks six [512, 256] bf16 tensors per layer into [3, 512, 256] buffers
    for the backward pass: each such kernel reads and writes one layer's slice (and the s32
    layer index), not the whole buffer."""
    one_layer = ROWS * WIDTH * 2
    updates = [k for k in hlo_summary.kernels(HLO) if k["family"] == "in-place update"]
    assert sum(k["bytes"] == 2 * one_layer + 4 for k in updates) == 6


def test_the_family_table_sums_rooflines_of_kernels():
    found = hlo_summary.kernels(HLO)
    memory_bound = hlo_summary.family_table(found, bandwidth=1.0, peak=float("inf"))
    for row in memory_bound.values():
        assert row["roofline_s"] == row["bytes"]
    compute_bound = hlo_summary.family_table(found, bandwidth=float("inf"), peak=1.0)
    flops = sum(k["flops"] * k["times"] for k in found)
    assert hlo_summary.totals(compute_bound)["roofline_s"] == flops == 9 * 2 * ROWS * WIDTH**2
    assert hlo_summary.totals(compute_bound)["launches"] == sum(k["times"] for k in found)


def test_a_data_parallel_gradient_holds_one_all_reduce_counted_once():
    """XLA:GPU runs it asynchronously (all-reduce-start ... all-reduce-done): one collective,
    the weight gradient's [256, 256] bf16, read and written once."""
    found = hlo_summary.kernels((FIXTURES / "data_parallel_grad.hlo").read_text())
    collectives = [k for k in found if k["family"].startswith("collective")]
    assert [(k["family"], k["times"], k["bytes"]) for k in collectives] == [
        ("collective: all-reduce", 1, 2 * WIDTH * WIDTH * 2)]


def test_cublas_matmuls_count_their_flops_and_not_their_workspace():
    """The same program's two matmuls (forward, weight gradient) on each device's 256 rows, as
    cuBLAS calls: their FLOPs from the call's config, their bytes without cuBLAS's workspace."""
    found = hlo_summary.kernels((FIXTURES / "data_parallel_grad.hlo").read_text())
    matmuls = [k for k in found if k["family"] == "matmul (cuBLAS)"]
    rows = ROWS // 2
    assert [k["flops"] for k in matmuls] == [2 * rows * WIDTH * WIDTH] * 2
    # each reads two bf16 [256, 256] operands and writes one (no 4 MiB workspace)
    assert [k["bytes"] for k in matmuls] == [3 * rows * WIDTH * 2] * 2


def test_text_without_an_entry_computation_is_refused():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        hlo_summary.kernels("HloModule m\n")


@pytest.mark.skipif(importlib.util.find_spec("jax_cuda12_plugin") is not None,
                    reason="jax's CUDA plugin is installed: gpu_aot would compile BERT-base")
def test_gpu_aot_without_jax_cuda_plugin_says_how_to_get_it():
    script = Path(__file__).parents[1] / "bench" / "gpu_aot.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "make gpu-aot" in done.stderr, done.stderr
