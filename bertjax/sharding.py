"""The device mesh: one `data` axis over every device of every host.

Batches are sharded on their leading (row) axis; parameters are replicated (data parallel) or,
with the FSDP rule, split along their largest axis that the device count divides. Each host
feeds only its own rows. Model code never sees the mesh: XLA's SPMD partitioner inserts the
collectives, guided by the model's sharding hints, which `with_mesh` switches on for the jitted
steps. How the processes of a multi-host run join and act together is `processes`.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bertjax.config import MeshConfig


def make_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def with_mesh(step, mesh: Mesh):
    """`step` (a jitted function) called with `mesh` set by `jax.set_mesh`, so that it is traced
    with the model's sharding hints on (bertjax.layers.whole, split_rows): FSDP then gathers each
    parameter before use and keeps activations split by rows, and the compiled step holds no
    all-to-all or collective-permute (tests/test_collectives.py). Only the step's own calls see
    the mesh: inside `jax.set_mesh`, jitted calls on arrays of one device are refused.

    On CPUs a call returns when its result is ready. XLA:CPU runs every device's part of a
    program on one thread pool, and programs in flight at once that hold collectives (GLUE
    evaluation batches, which do not depend on each other) can leave one collective short of
    threads: XLA aborts after 40 s ("Expected 8 threads to join the rendezvous, but only 7 of
    them arrived"; CI and a stress run, log.md 2026-12-08). Running ahead gains a CPU nothing:
    XLA:CPU runs small programs on the calling thread after those before them. Elsewhere the
    host runs ahead of the devices."""
    wait = mesh.devices.flat[0].platform == "cpu"

    @functools.wraps(step)  # keeps attributes such as the train step's `jitted`
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            out = step(*args, **kwargs)
        return jax.block_until_ready(out) if wait else out

    return call


def rows(mesh: Mesh) -> NamedSharding:
    """Arrays whose leading axis is batch rows: split across every device."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(tree, mesh: Mesh, cfg: MeshConfig):
    """A sharding per array leaf: replicated (dp), or FSDP-split along the largest axis the
    device count divides, for arrays of at least `fsdp_min_size` elements."""
    n = mesh.devices.size

    def rule(x):
        if not eqx.is_array(x):
            return None
        if cfg.strategy == "dp" or x.size < cfg.fsdp_min_size:
            return replicated(mesh)
        for axis in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
            if x.shape[axis] % n == 0:
                spec = [None] * x.ndim
                spec[axis] = "data"
                return NamedSharding(mesh, PartitionSpec(*spec))
        return replicated(mesh)

    return jax.tree.map(rule, tree)


def place(x, sharding: NamedSharding) -> jax.Array:
    """Put an array that every process holds identically (e.g. init or imported weights) onto
    `sharding`, which may span hosts; already-global arrays are resharded by XLA."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_params(tree, mesh: Mesh, cfg: MeshConfig):
    """Place every array of `tree` (model, optimizer state) by `param_shardings`."""
    shardings = param_shardings(tree, mesh, cfg)
    return jax.tree.map(lambda x, s: x if s is None else place(x, s), tree, shardings,
                        is_leaf=lambda x: x is None)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded on rows (the hosts' rows concatenated in
    process order)."""
    sharding = rows(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def process_slice(global_rows: int) -> tuple[int, int]:
    """(offset, count) of the rows of a global batch that this process feeds."""
    count = jax.process_count()
    if global_rows % count:
        raise ValueError(f"global batch {global_rows} is not divisible by {count} processes")
    local = global_rows // count
    return jax.process_index() * local, local


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's slice of a global batch that every process built whole."""
    offset, count = process_slice(len(next(iter(batch.values()))))
    return {k: v[offset:offset + count] for k, v in batch.items()}


def full_copy(tree):
    """`tree` with every array whole on this process (a collective when arrays span
    processes: then every process must call it, at the same point)."""
    def whole(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(whole, tree)
