"""Build the optimized XLA:GPU programs tests/test_hlo_summary.py reads, compiled for H100s on
a machine without a GPU (bench/gpu_aot.py), in tests/fixtures/gpu_hlo/:
- scan_grad.hlo: the gradient of three scanned layers h -> gelu(h @ w[i]) (bf16, h [512, 256],
  w [3, 256, 256]) on one H100;
- data_parallel_grad.hlo: the gradient of one such layer's squared sum for w, its rows split
  over two H100s (so the gradient is all-reduced), its matmuls through cuBLAS (Triton GEMMs
  off), the other form a matmul takes in XLA:GPU programs.

Needs jax's CUDA plugin (not a test dependency):
    pip install "jax[cuda12]==<the installed jax version>"; python tests/make_gpu_hlo_fixture.py
"""

import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu_aot  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

ROWS, WIDTH, LAYERS = 512, 256, 3


def loss(w, x):
    h, _ = jax.lax.scan(lambda h, wi: (jax.nn.gelu(h @ wi), None), x, w)
    return jnp.square(h.astype(jnp.float32)).sum()


def write(name: str, text: str):
    out = Path(__file__).parent / "fixtures" / "gpu_hlo" / name
    out.write_text(f"// jax {jax.__version__}, tests/make_gpu_hlo_fixture.py\n{text}")
    print(f"wrote {out} ({len(text)} characters)")


if __name__ == "__main__":
    on_h100 = jax.sharding.make_single_device_sharding(gpu_aot.h100s(1)[0])
    w = jax.ShapeDtypeStruct((LAYERS, WIDTH, WIDTH), jnp.bfloat16, sharding=on_h100)
    x = jax.ShapeDtypeStruct((ROWS, WIDTH), jnp.bfloat16, sharding=on_h100)
    write("scan_grad.hlo", jax.jit(jax.grad(loss)).lower(w, x).compile().as_text())

    mesh = jax.sharding.Mesh(gpu_aot.h100s(2), ("data",))
    split, whole = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
                    for spec in (("data",), ()))
    w = jax.ShapeDtypeStruct((1, WIDTH, WIDTH), jnp.bfloat16, sharding=whole)
    x = jax.ShapeDtypeStruct((ROWS, WIDTH), jnp.bfloat16, sharding=split)
    cublas = {"xla_gpu_enable_triton_gemm": False}
    write("data_parallel_grad.hlo",
          jax.jit(jax.grad(loss)).lower(w, x).compile(compiler_options=cublas).as_text())
