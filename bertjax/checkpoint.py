"""Train-state checkpoints with Orbax: arrays + JSON metadata + the resolved config.yaml.

A checkpoint is `RUN_DIR/checkpoints/<step>/` holding `state` (arrays only: parameters, optimizer
state, loss scale) and `meta` (JSON: schema version, step, tokens seen, config hash; pretraining
adds its divergence watch and `prepared_data`, what identifies its token stream). Orbax writes to
a temporary directory and renames it when complete, so a crash mid-save never damages the last
complete checkpoint, and `latest_step` only sees finished ones. Restores go into an abstract tree
with the current shardings, so a different device count works. No pickle anywhere. A checkpoint
that cannot be read, and a disk too full to write one (checked before the first step and before
each write, and caught while writing), are one-line UserErrors (orbax_quiet.py drops what
Orbax leaves behind after such a failure).
"""

import contextlib
import hashlib
import logging
import re
import shutil
from pathlib import Path

import equinox as eqx
import jax
import orbax.checkpoint as ocp

from bertjax.errors import UserError, out_of_memory
from bertjax.files import disk_full_error
from bertjax.orbax_quiet import disk_full_is_user_error, quiet_orbax_leftovers

SCHEMA_VERSION = 1
# Orbax writes a replicated array cooperatively, each replica one slice of it: one eager slice
# op per device per array at every save (and a compile for each new shape), which for the ~200
# small arrays of a tiny model on 8 CPU devices was 0.2 s of a 0.56 s save. Splitting pays for
# big arrays only (several hosts writing megabytes each), so smaller slices are not made.
# Otherwise the handler is Orbax's default one (type_handler_registry._DEFAULT_TYPE_HANDLERS).
REPLICA_SLICE_MIN_BYTES = 2**20


def _register_array_handler() -> None:
    try:  # the default handler's metadata store lives in a private module: another Orbax (a GPU
        # image's, say) may have moved it, and then its default handler stays, slower to save
        from orbax.checkpoint._src.metadata import array_metadata_store
    except ImportError:
        return
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # Orbax warns (on every CLI's stderr) that a handler is replaced
    try:
        ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
            array_metadata_store=array_metadata_store.Store(),
            min_slice_bytes_for_replica_parallel=REPLICA_SLICE_MIN_BYTES), override=True)
    finally:
        absl.setLevel(level)


_register_array_handler()
# Orbax's error for an array whose stored shape is not the target's.
SHAPE_MISMATCH = re.compile(r"Requested shape: (\(.*?\)) is not compatible with the stored "
                            r"shape: (\(.*?\))")


def restore_target(state):
    """Shapes, dtypes and shardings of `state`'s arrays: a target to restore into later, once
    the arrays themselves are gone (a jitted step donates them)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def config_hash(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


LISTINGS_OF_A_LIVE_RUN = 5


def remove_unfinished_saves(directory: Path) -> None:
    """A save killed midway (kill -9, a lost node) leaves Orbax's temporary directory, as big as
    a checkpoint, which stayed until a save of the same step replaced it (never, after a resume
    with another train.checkpoint_every). Removed when a run's writer opens, on process 0: no save
    runs then (the run directory's lock). Not Orbax's cleanup_tmp_directories: it removes them
    on a thread, which a run refused at once (a full disk) left running into the interpreter's
    shutdown (an absl traceback after the one-line error)."""
    for unfinished in directory.glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(unfinished, ignore_errors=True)


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, directory: str | Path, keep: int = 2, read_only: bool = False):
        """`read_only`: a reader's view (export, predict, a fine-tune's start, a resume check)
        of a run that may be training: it creates, rotates and deletes nothing."""
        self.directory = Path(directory).absolute() / "checkpoints"
        # read_only's other settings spelled out: Orbax warns for each it has to override
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                               save_interval_steps=0) if read_only else \
            ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        if not read_only and jax.process_index() == 0:
            remove_unfinished_saves(self.directory)
        for listing in range(LISTINGS_OF_A_LIVE_RUN):
            try:  # Orbax lists the step directories, then reads each one's time stamp
                self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                     item_names=("state", "meta"))
                return
            except FileNotFoundError:  # a step the run training there deleted in between
                if listing == LISTINGS_OF_A_LIVE_RUN - 1:
                    raise UserError(f"{self.directory} changed while being listed, "
                                    f"{LISTINGS_OF_A_LIVE_RUN} times: a run still training "
                                    "there replaces its checkpoints; run this again, or after "
                                    "the run ends (its checkpoints are not damaged)") from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def delete(self, step: int) -> None:
        self.manager.delete(step)

    def check_room(self, state, step: int | None = None) -> None:
        """Refuse before the first byte when the disk has less room than a checkpoint of `state`
        takes: as much as the latest one (the next holds the same arrays, and Orbax deletes the
        oldest only after a save), or before the first, its arrays' bytes (a little more than
        Orbax writes: a 2-step `mini` state of 65.6 MB took 60.1 MB on disk). A save that fails
        midway leaves writes that tensorstore may still finish after Orbax raised, which the
        cleanup can only chase. The loops also call this before their first step (`step`
        None), so a run on a disk too small for its checkpoints stops at once, not at its first
        checkpoint hours later."""
        latest = self.manager.latest_step()
        if latest is None:
            size = sum(x.nbytes for x in jax.tree.leaves(eqx.filter(state, eqx.is_array)))
            source = "its arrays' size"
        else:
            size = sum(f.stat().st_size for f in (self.directory / str(latest)).rglob("*")
                       if f.is_file())
            source = f"checkpoint {latest} does"
        free = shutil.disk_usage(self.directory).free
        if free < size:
            what = "for this run's checkpoints: each" if step is None else \
                f"for checkpoint {step}: it"
            raise disk_full_error(self.directory, f"{what} needs about {size / 2**20:.2f} MiB "
                                  f"({source}), {free / 2**20:.2f} MiB are free",
                                  "nothing was written" if step is not None else
                                  "no step was run")

    @disk_full_is_user_error
    def save(self, step: int, state, meta: dict) -> None:
        self.check_room(state, step)
        meta = {"schema_version": SCHEMA_VERSION, "step": step, **meta}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state) -> tuple[object, dict]:
        """Restore into `abstract_state` (arrays or ShapeDtypeStructs carrying shardings)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        # A resume after a change of model shape fails here too: say so before advising deletion.
        changed = ("if the model config changed since it was written, use a new train.run_dir "
                   "or train.resume=never; if its files are damaged, ")
        with self._reading(step, changed, target):
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
        with self._reading(step, target=target), ocp.PyTreeCheckpointer() as checkpointer:
            state = checkpointer.restore(self.directory / str(step) / "state", args=args)
        return state.model

    def _named_mismatch(self, step: int, target) -> tuple[str, tuple] | None:
        """After Orbax refused an array's shape: the first array in the model's order whose
        stored shape (the checkpoint's metadata) is not `target`'s, by name, and the shape
        needed. Orbax's error names no array, only the shapes of whichever of its concurrent
        reads failed first, another from run to run. None where that cannot be said: a target
        without a model, a stored layout this walk does not know, metadata that cannot be read.
        Read only after the refusal: the metadata's concurrent reads of damaged files leave
        tracebacks behind, as a restore's do."""
        if not isinstance(getattr(target, "model", None), eqx.Module):
            return None
        handler = ocp.PyTreeCheckpointHandler()
        try:
            stored = handler.metadata(self.directory / str(step) / "state").tree["model"]
        except Exception:  # any reason: Orbax's own error is said instead
            return None
        finally:
            handler.close()
        for path, needed in jax.tree_util.tree_flatten_with_path(target.model)[0]:
            node = stored
            for key in path:
                name = getattr(key, "name", getattr(key, "key", getattr(key, "idx", None)))
                try:
                    node = node[name]
                except (KeyError, IndexError, TypeError):
                    return None
            shape = getattr(node, "shape", None)
            if shape is not None and tuple(shape) != tuple(needed.shape):
                return (f"model{jax.tree_util.keystr(path)} of shape {tuple(shape)}",
                        tuple(needed.shape))
        return None

    def read_meta(self, step: int) -> dict:
        with self._reading(step):
            meta = self.manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        return self._checked(meta, step)

    @contextlib.contextmanager
    def _reading(self, step: int, first_hint: str = "", target=None):
        """Whatever Orbax, tensorstore or json raise on a damaged checkpoint (a missing or
        truncated file, bad metadata) -> one UserError naming the step directory and the fix.
        Arrays of other shapes than the `target`'s are no damage: that error says so instead."""
        quiet_orbax_leftovers()
        try:
            yield
        except UserError:
            raise
        except Exception as e:  # Orbax raises ValueError, OSError, JSONDecodeError, Exception
            if out_of_memory(e):  # no damage, and "delete it" would lose an intact checkpoint:
                raise  # said as out of memory (errors.out_of_memory_is_said)
            where = self.directory / str(step)
            first = (str(e).strip().splitlines() or [""])[0]
            if shapes := SHAPE_MISMATCH.search(first):
                held, needed = self._named_mismatch(step, target) or (
                    f"an array of shape {shapes[2]}", shapes[1])
                raise UserError(
                    f"checkpoint {where} holds {held} where the model config it is read with "
                    f"needs {needed}: the config differs from the one the checkpoint was written "
                    "with (a changed model config, or an edited config_yaml in its meta); its "
                    "arrays are intact, so do not delete it: read it with the model config it "
                    "was written with (or train afresh in a new train.run_dir)") from None
            # TensorStore ends its errors with "See full TensorStore details: <bound method
            # ...>", a repr with no details in it: keep what comes before.
            reason = re.split(r"See full TensorStore details|<bound method", first)[0][:200]
            raise UserError(
                f"checkpoint {where} is incomplete or corrupt ({type(e).__name__}: "
                f"{reason.rstrip(' .')}); "
                f"{first_hint}delete {where} to fall back to the checkpoint before it (a "
                "resume takes the newest complete one), or pass an earlier RUN/checkpoints/STEP"
            ) from None

    def _checked(self, meta: object, step: int) -> dict:
        if not isinstance(meta, dict):
            raise UserError(f"checkpoint {self.directory / str(step)}: its meta is not a JSON "
                            f"object; delete {self.directory / str(step)} to fall back to the "
                            "checkpoint before it")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise UserError(f"checkpoint {self.directory / str(step)} has schema version "
                            f"{meta.get('schema_version')}, this bertjax reads {SCHEMA_VERSION}")
        return meta

    def close(self) -> None:
        self.manager.close()


def latest_step(directory: str | Path) -> int | None:
    """The step of `directory`'s newest complete checkpoint (None: it has none), read as a
    reader reads a run that may be training (`read_only`)."""
    checkpoints = Checkpoints(directory, read_only=True)
    try:
        return checkpoints.latest_step()
    finally:
        checkpoints.close()
