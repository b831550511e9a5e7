"""Writing a checkpoint (bertjax.checkpoint.Checkpoints.save) of arrays replicated over 8 devices:
Orbax splits an array into one slice per replica only when a slice holds at least
REPLICA_SLICE_MIN_BYTES (small arrays cost an eager slice op per device per save, big ones gain
parallel writes), and the state reads back the same either way. A save killed midway leaves
nothing behind once the run starts again."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bertjax.checkpoint import REPLICA_SLICE_MIN_BYTES, Checkpoints


@pytest.fixture
def slices_cut(monkeypatch) -> list:
    """The arrays Orbax slices for replica-parallel writing (it calls jax.lax.slice_in_dim)."""
    cut, original = [], jax.lax.slice_in_dim

    def counting(operand, *args, **kwargs):
        cut.append(operand.shape)
        return original(operand, *args, **kwargs)

    monkeypatch.setattr(jax.lax, "slice_in_dim", counting)
    return cut


def replicated(*shapes) -> dict:
    mesh = jax.make_mesh((8,), ("data",))
    on_all = NamedSharding(mesh, PartitionSpec())
    return {f"a{i}": jax.device_put(jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s), on_all)
            for i, s in enumerate(shapes)}


def save_and_restore(run_dir, state) -> dict:
    checkpoints = Checkpoints(run_dir)
    checkpoints.save(1, state, {})
    restored, meta = checkpoints.restore(1, state)
    checkpoints.close()
    assert meta["step"] == 1
    return restored


def test_small_replicated_arrays_are_written_whole(tmp_path, slices_cut):
    state = replicated((64, 32), (32,), (3, 16, 16))
    restored = save_and_restore(tmp_path, state)
    assert slices_cut == []
    for name, array in state.items():
        np.testing.assert_array_equal(restored[name], array)


def test_a_big_replicated_array_is_still_split_across_replicas(tmp_path, slices_cut):
    rows = 8 * REPLICA_SLICE_MIN_BYTES // (4 * 256)  # float32 rows of 256: one MiB per replica
    state = replicated((rows, 256), (32,))
    restored = save_and_restore(tmp_path, state)
    assert slices_cut and set(slices_cut) == {(rows, 256)}  # the small array was not cut
    for name, array in state.items():
        np.testing.assert_array_equal(restored[name], array)


def test_a_save_killed_midway_leaves_no_temporary_directory_once_the_run_restarts(tmp_path):
    """kill -9 while Orbax writes leaves its temporary directory (here as a killed tiny run's
    left it), as big as a checkpoint: it stayed until a save of the same step replaced it
    (never, after a resume with another train.checkpoint_every). The next writer removes it;
    a reader (export, predict, of a run that may be saving) leaves it."""
    state = {"a": jnp.arange(8.0)}
    first = Checkpoints(tmp_path)
    first.save(2, state, {})
    first.close()
    left = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp"
    (left / "meta.orbax-checkpoint-tmp").mkdir(parents=True)
    (left / "_CHECKPOINT_METADATA").write_text("{}")
    Checkpoints(tmp_path, read_only=True).close()
    assert left.exists()
    resumed = Checkpoints(tmp_path)
    assert resumed.latest_step() == 2
    resumed.save(3, state, {})
    resumed.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]
