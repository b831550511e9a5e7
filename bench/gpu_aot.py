"""bertjax's pretraining step compiled for an NVIDIA H100 on a machine without a GPU: what it
would launch (kernels, bytes moved, matmul FLOPs, a roofline time; bench/hlo_summary.py), for
the GPU defaults and each variant side by side.

    make gpu-aot ARGS="..."     # first: .venv-aot, bertjax and jax's CUDA plugin (~5.5 GB)
    python bench/gpu_aot.py [--variant NAME:KEY=VALUE,...]... [--devices N] [--hlo-dir DIR]
                            [--top N] [--json FILE]

A variant's KEY=VALUE is a config override; XLA options go where a run takes them,
train.xla_flags ("train.xla_flags=--xla_gpu_enable_triton_gemm=false --xla_..."), and reach
that compile alone.

With jax's CUDA plugin installed, XLA:GPU compiles for a described device (XLA's deviceless
compilation: a "target config" instead of a GPU; no autotuning, so GEMM tilings are XLA's
defaults). The numbers are static estimates for comparing programs before a GPU time is
available, not speeds: bench/gpu_suite.py measures. The step is bench/gpu_suite.py's "ours"
item (bench/suite_items.setup_ours): BERT-base, seq 128, batch 128, bf16, hidden dropout 0.1.
With --devices N, N H100s of one host with 128 rows each, sharded as bertjax shards a run
(mesh.strategy=fsdp|dp as a variant's override): what each device runs, collectives included.
"""

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"  # the arrays are built here; only the compile targets CUDA
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bertjax from this checkout

import hlo_summary  # noqa: E402 (bench/: the script's own folder)
from gpu_suite import CUBLAS_UNMERGED  # noqa: E402 (the flags of two suite items)

from bertjax import attention  # noqa: E402
from bertjax.errors import UserError, cli  # noqa: E402
from bertjax.xla_options import compiler_options, jit_options  # noqa: E402

ATTENTION_RULE = attention.cudnn_unsupported  # asks the default device: here, the CPU

# H100 SXM 80GB as XLA describes one (the device info quoted in openxla/xla pull request 25919;
# the cuDNN and CUDA versions are ours: cuDNN >= 9 compiles flash attention).
H100_SXM = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
BANDWIDTH, PEAK = 3.35e12, 989e12  # H100 SXM: HBM3 bytes/s, dense bf16 FLOP/s
# The GPU's defaults spelled out: on this CPU backend model.remat=null and
# model.scan_layers=null would mean on.
GPU_DEFAULTS = ["model.remat=false", "model.scan_layers=false"]


XLA_FLAGS_KEY = "train.xla_flags="
VARIANTS = {"gpu defaults": [], "remat": ["model.remat=true"],
            "scan": ["model.scan_layers=true"],
            # the suite's items of these names
            "xla-cublas-unmerged": [f"train.xla_flags={CUBLAS_UNMERGED}"],
            "cublas-gelu-tanh": ["model.gelu=tanh", f"train.xla_flags={CUBLAS_UNMERGED}"]}


def h100s(count: int) -> list:
    """`count` H100s on one host, as a deviceless compile targets them (jax's CUDA plugin)."""
    import jax
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", topology=f"1x1x{count}",
                                                target_config=H100_SXM)
    except Exception as e:  # without the plugin: "topology not implemented for cuda"
        raise UserError(f"cannot describe {count} CUDA device(s) ({str(e).splitlines()[0]}); "
                        "run it as `make gpu-aot`, or install jax's CUDA plugin: pip install "
                        f"'jax[cuda12]=={jax.__version__}'") from None
    return list(topology.devices)


def compile_step(overrides: list[str], devices: list, rows_per_device: int = 128
                 ) -> tuple[str, dict]:
    """(optimized HLO text, memory figures per device) of the pretraining step compiled for
    `devices`: on several, sharded as bertjax shards it (mesh.strategy: the rows split over the
    devices, parameters replicated or FSDP-split by bertjax.sharding.param_shardings)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import suite_items

    from bertjax.model import flops_per_token
    from bertjax.sharding import param_shardings, replicated, rows

    attention.cudnn_unsupported = functools.partial(ATTENTION_RULE, device=devices[0])
    # train.xla_flags goes to the compile below, not through the item's config to the step's
    # jit: a lowered program takes its compiler options when it is compiled.
    flags = " ".join(o.partition("=")[2] for o in overrides if o.startswith(XLA_FLAGS_KEY))
    item = {"shape": ["base", 30522, rows_per_device * len(devices), 128], "precision": "bfloat16",
            "set": GPU_DEFAULTS + [o for o in overrides if not o.startswith(XLA_FLAGS_KEY)]}
    cfg, step, state, batch, schedule = suite_items.setup_ours(item)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    inputs = (batch, jnp.int32(0), jax.random.key(1), jax.random.key(2), schedule)
    input_shardings = (jax.tree.map(lambda _: rows(mesh), inputs[0]),  # the batch
                       *jax.tree.map(lambda _: replicated(mesh), inputs[1:]))

    def abstract(x, sharding):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    with jax.set_mesh(mesh):  # the model's sharding hints, as bertjax.sharding.with_mesh
        lowered = step.jitted.lower(
            jax.tree.map(abstract, inputs, input_shardings),
            jax.tree.map(abstract, state, param_shardings(state, mesh, cfg.mesh)))
    compiled = lowered.compile(**jit_options(compiler_options(flags)))
    memory = compiled.memory_analysis()
    return compiled.as_text(), {
        "temp_bytes": memory.temp_size_in_bytes, "argument_bytes": memory.argument_size_in_bytes,
        # what the suite's MFU counts (useful FLOPs: the sparse MLM head's)
        "tokens_per_device": rows_per_device * cfg.data.seq_len,
        "flops_per_token": flops_per_token(cfg.model, cfg.data.seq_len, cfg.data.predictions)}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    if not name or not overrides:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    return name, overrides.split(",")


def main(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", type=parse_variant, action="append",
                        help="NAME:KEY=VALUE,... beside the GPU defaults (default: "
                             + ", ".join(VARIANTS) + ")")
    parser.add_argument("--devices", type=int, default=1, help="H100s on one host: the rows "
                        "(128 per device) split over them, parameters as mesh.strategy says")
    parser.add_argument("--hlo-dir", type=Path, help="write each variant's optimized HLO here")
    parser.add_argument("--json", type=Path, help="write the tables here")
    parser.add_argument("--top", type=int, default=0, help="list each variant's N costliest "
                        "kernels by roofline time")
    args = parser.parse_args(argv)
    if args.devices < 1:
        raise UserError(f"--devices {args.devices}: give 1 or more")
    variants = dict(args.variant) if args.variant else VARIANTS
    devices = h100s(args.devices)
    results = {}
    for name, overrides in variants.items():
        t0 = time.perf_counter()
        hlo, memory = compile_step(overrides, devices)
        found = hlo_summary.kernels(hlo)
        table = hlo_summary.family_table(found, BANDWIDTH, PEAK)
        results[name] = {"overrides": overrides, "compile_s": time.perf_counter() - t0,
                         **memory, "families": table, "total": hlo_summary.totals(table)}
        if args.hlo_dir:
            args.hlo_dir.mkdir(parents=True, exist_ok=True)
            (args.hlo_dir / f"{name.replace(' ', '_')}.hlo").write_text(hlo)
        print_variant(name, results[name], found, args.top)
    print_comparison(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def print_variant(name: str, result: dict, found: list[dict], top: int):
    print(f"\n{name} ({' '.join(GPU_DEFAULTS + result['overrides'])}): compiled in "
          f"{result['compile_s']:.0f} s, temporaries {result['temp_bytes'] / 1e9:.2f} GB")
    print(f"  {'family':26s} {'launches':>8s} {'GB moved':>9s} {'TFLOP':>7s} {'roofline ms':>11s}")
    for fam, row in [*result["families"].items(), ("total", result["total"])]:
        print(f"  {fam:26s} {row['launches']:8d} {row['bytes'] / 1e9:9.2f} "
              f"{row['flops'] / 1e12:7.3f} {row['roofline_s'] * 1e3:11.2f}")
    costliest = sorted(found, key=lambda k: -max(k["bytes"] / BANDWIDTH, k["flops"] / PEAK)
                       * k["times"])
    for k in costliest[:top]:
        print(f"    {k['bytes'] * k['times'] / 1e9:6.2f} GB x{k['times']:<3d} {k['family']:24s} "
              f"{k['op_name'][-70:]}")


def print_comparison(results: dict):
    """One line per variant; tok/s and MFU (the suite's FLOP count over the bf16 peak) per
    device if every kernel ran at its roofline: a bound, not a forecast."""
    print(f"\n{'variant':20s} {'launches':>8s} {'GB moved':>9s} {'roofline ms':>11s} "
          f"{'its tok/s':>10s} {'its MFU':>7s}")
    for name, result in results.items():
        total = result["total"]
        tok_s = result["tokens_per_device"] / total["roofline_s"]
        print(f"{name:20s} {total['launches']:8d} {total['bytes'] / 1e9:9.2f} "
              f"{total['roofline_s'] * 1e3:11.2f} {tok_s:10,.0f} "
              f"{tok_s * result['flops_per_token'] / PEAK:7.1%}")


if __name__ == "__main__":
    cli(main)  # a missing plugin or a bad override: one line, exit 2
