"""Train-state checkpoints with Orbax: arrays + JSON metadata + the resolved config.yaml.

A checkpoint is `RUN_DIR/checkpoints/<step>/` holding `state` (arrays only: parameters, optimizer
state, loss scale) and `meta` (JSON: schema version, step, tokens seen, config hash). Orbax writes
to a temporary directory and renames it when complete, so a crash mid-save never damages the last
complete checkpoint, and `latest_step` only sees finished ones. Restores go into an abstract tree
with the current shardings, so a different device count works. No pickle anywhere.
"""

import hashlib
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from bertjax.errors import UserError

SCHEMA_VERSION = 1


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
        meta = restored["meta"]
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise UserError(f"checkpoint {self.directory / str(step)} has schema version "
                            f"{meta.get('schema_version')}, this bertjax reads {SCHEMA_VERSION}")
        return restored["state"], meta

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"]

    def close(self) -> None:
        self.manager.close()
