"""Train-state checkpoints with Orbax: arrays + JSON metadata + the resolved config.yaml.

A checkpoint is `RUN_DIR/checkpoints/<step>/` holding `state` (arrays only: parameters, optimizer
state, loss scale) and `meta` (JSON: schema version, step, tokens seen, config hash; pretraining
adds its divergence watch). Orbax writes to a temporary directory and renames it when complete, so
a crash mid-save never damages the last complete checkpoint, and `latest_step` only sees finished
ones. Restores go into an abstract tree with the current shardings, so a different device count
works. No pickle anywhere.
"""

import hashlib
from pathlib import Path

import equinox as eqx
import jax
import orbax.checkpoint as ocp

from bertjax.errors import UserError

SCHEMA_VERSION = 1


def restore_target(state):
    """Shapes, dtypes and shardings of `state`'s arrays: a target to restore into later, once
    the arrays themselves are gone (a jitted step donates them)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def config_hash(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def delete(self, step: int) -> None:
        self.manager.delete(step)

    def save(self, step: int, state, meta: dict) -> None:
        meta = {"schema_version": SCHEMA_VERSION, "step": step, **meta}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state) -> tuple[object, dict]:
        """Restore into `abstract_state` (arrays or ShapeDtypeStructs carrying shardings)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], self._checked(restored["meta"], step)

    def restore_model(self, step: int, abstract_state):
        """Only `abstract_state.model` (for inference and fine-tuning): the optimizer state stays
        on disk, which with Adam's two moments is two thirds of the checkpoint. The caller has
        read the step's meta already (read_meta: it holds the config that shapes the state)."""
        # PLACEHOLDER leaves are never read. StandardRestore rejects them and the manager keeps
        # one handler per item, so the state item is read here with its own PyTree checkpointer.
        target = eqx.tree_at(lambda s: s.model, jax.tree.map(lambda _: ocp.PLACEHOLDER,
                                                             abstract_state),
                             jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state.model))
        args = ocp.args.PyTreeRestore(target, ocp.checkpoint_utils.construct_restore_args(target))
        with ocp.PyTreeCheckpointer() as checkpointer:
            state = checkpointer.restore(self.directory / str(step) / "state", args=args)
        return state.model

    def read_meta(self, step: int) -> dict:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"]
        return self._checked(meta, step)

    def _checked(self, meta: dict, step: int) -> dict:
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise UserError(f"checkpoint {self.directory / str(step)} has schema version "
                            f"{meta.get('schema_version')}, this bertjax reads {SCHEMA_VERSION}")
        return meta

    def close(self) -> None:
        self.manager.close()
