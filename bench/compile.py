"""Model init time and forward+backward compile time of BERT-base on this machine, 12 vs 24 layers.

    python bench/compile.py [--seq 128] [--batch 8]

Compiles (does not run) one MLM forward+backward per depth, with scan over layers and with a
Python loop (unrolled), so the effect of `lax.scan` on compile time is visible side by side.
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from bertjax import config
from bertjax.model import Bert, param_count


def compile_seconds(cfg, batch: int, seq: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    model = Bert(cfg, key=jax.random.key(0))
    jax.block_until_ready(model)
    init = time.perf_counter() - t0
    ids = jnp.zeros((batch, seq), jnp.int32)
    mask = jnp.ones((batch, seq), bool)
    positions = jnp.zeros((batch, 20), jnp.int32)

    def loss(m, key):
        logits = m.mlm_logits(m(ids, ids, mask, key=key), positions)
        return optax.softmax_cross_entropy_with_integer_labels(logits, positions).mean()

    grad = eqx.filter_jit(eqx.filter_value_and_grad(loss))
    t0 = time.perf_counter()
    grad.lower(model, jax.random.key(1)).compile()
    return init, time.perf_counter() - t0, param_count(model)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, seq {args.seq}, "
          f"batch {args.batch}, dropout on (training graph)")
    print(f"{'layers':>6} {'scan':>5} {'params':>12} {'init s':>7} {'compile s':>9}")
    for layers in (12, 24):
        for scan in (True, False):
            cfg = config.load([], ["model.size=base", "model.vocab_size=30522",
                                   f"model.num_layers={layers}", f"model.scan_layers={scan}"])
            init, comp, n = compile_seconds(cfg.model, args.batch, args.seq)
            print(f"{layers:>6} {str(scan):>5} {n:>12,} {init:>7.2f} {comp:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
