"""One process of the 2-process jax.distributed test (tests/test_distributed.py runs two).

    python tests/dist_worker.py PORT PROCESS_ID OUT_DIR

Each process owns 2 CPU devices and feeds only its half of every global batch; process 0 writes
the losses and final parameters to OUT_DIR/result.safetensors.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

port, pid, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid)

import numpy as np  # noqa: E402
from conftest import STEPS, flat_params, setup, step_inputs  # noqa: E402  (tests/ is sys.path[0])
from jax.experimental import multihost_utils  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from bertjax.sharding import global_batch, make_mesh, process_slice, shard_params  # noqa: E402
from bertjax.step import make_train_step  # noqa: E402

cfg, optimizer, state, batch, spec = setup(["mesh.strategy=fsdp", "mesh.fsdp_min_size=64"],
                                           rows=16)
mesh = make_mesh()
assert jax.device_count() == 4 and jax.process_count() == 2
state = shard_params(state, mesh, cfg.mesh)
step = make_train_step(spec, optimizer, micro=8)
offset, count = process_slice(16)
losses = []
for i in range(STEPS):
    local = {k: v[offset:offset + count] for k, v in batch.items()}
    state, metrics = step(state, global_batch(local, mesh), *step_inputs(i))
    losses.append(float(metrics["mlm_loss"]))
params = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
          for k, v in flat_params(state.model).items()}
if pid == 0:
    save_file({**params, "losses": np.asarray(losses, np.float32)},
              os.path.join(out_dir, "result.safetensors"))
jax.distributed.shutdown()
