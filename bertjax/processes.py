"""The processes of a run and what they must do together.

A multi-host run joins through `jax.distributed.initialize` (JAX's own engine): a process that
waits in vain for the others to join ends in one line (at once on Ctrl-C or SIGTERM), and so do
a busy coordinator port and processes with unequal device counts or different configs. Joined,
they agree (`barrier`, `same_on_every_process`, `seen_alike_by_every_process`), stop after the
same step on SIGTERM/SIGINT (`StopSignal`), and a process that loses another mid-run says so in
one line where JAX reports it (`losing_a_process_is_fatal`; else JAX's heartbeat abort ends it).
An error one process meets ends them all (`leaving`). With one process, every function here is
(nearly) free.
"""

import collections
import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from bertjax import leaving
from bertjax.config import Config, MeshConfig, load
from bertjax.config_changes import LAUNCH_KEYS
from bertjax.domains import PATH, PATHS
from bertjax.errors import LostProcess, UserError, exit_now, first_line
from bertjax.sharding import global_batch, replicated


def multi_process_reason(cfg: MeshConfig) -> str | None:
    """What asks for a multi-process run (a config key, or a SLURM / Open MPI / TPU pod / env
    launch JAX configures itself from), or None for a single process."""
    if cfg.coordinator_address is not None:
        return f"mesh.coordinator_address={cfg.coordinator_address}"
    if (cfg.num_processes or 1) > 1:
        return f"mesh.num_processes={cfg.num_processes}"
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(var, "1") or 1) > 1:
            return f"{var}={os.environ[var]}"
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        return "JAX_COORDINATOR_ADDRESS"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "TPU_WORKER_HOSTNAMES (a multi-host TPU slice)"
    return None


JOIN_NOTICE_S = 10  # processes started together join sooner: a longer wait is said


def initialize_distributed(cfg: MeshConfig) -> None:
    """Join a multi-process run when the config or the cluster environment asks for one.

    JAX fills the mesh keys left null from a launcher it detects (SLURM, Open MPI, TPU pods), so
    some of them alone can be right; without one it refuses before starting anything, which is
    where a partial setting is named as the user's mistake."""
    if jax.distributed.is_initialized():
        return
    reason = multi_process_reason(cfg)
    if reason is None:
        return
    # JAX waits in silence, then aborts with a C++ stack trace: say so, and end first in one line.
    waiting = f"mesh: {reason}: waiting up to {cfg.join_timeout} s for every process to join"
    timers = [threading.Timer(JOIN_NOTICE_S, print, (waiting,), {"file": sys.stderr}),
              threading.Timer(cfg.join_timeout, exit_now,
                              (_not_joined(reason, cfg.join_timeout), 2))]
    _refuse_a_busy_coordinator_port(cfg, reason)
    for timer in timers:
        timer.daemon = True
        timer.start()
    try:
        with _signals_end_the_wait(reason):
            jax.distributed.initialize(coordinator_address=cfg.coordinator_address,
                                       num_processes=cfg.num_processes,
                                       process_id=cfg.process_id,
                                       initialization_timeout=cfg.join_timeout + 60)
    except ValueError as e:
        missing = [f"mesh.{k}" for k in _PROCESS_KEYS if getattr(cfg, k) is None]
        if not missing:
            raise
        raise UserError(f"{reason} asks for a multi-process run, but no launcher JAX detects set "
                        f"{' and '.join(missing)} ({e}); set mesh.coordinator_address, "
                        "mesh.num_processes and mesh.process_id together, or none of them under "
                        "SLURM, Open MPI or a TPU pod") from None
    except jax.errors.JaxRuntimeError as e:
        if "Failed to start RPC server" not in str(e):
            raise
        raise UserError(_busy_port(reason, cfg.process_id)) from None
    finally:
        for timer in timers:
            timer.cancel()
    leaving.watch_for_failed_processes()
    _refuse_unequal_device_counts()
    _compile_afresh_on_cpu()


def _compile_afresh_on_cpu() -> None:
    """Several processes on CPU compile their programs rather than read them from JAX's
    persistent compilation cache (JAX_COMPILATION_CACHE_DIR): with jaxlib 0.12.1, a train step
    that process 0 read from it deadlocked in its first Gloo all-reduce, every time (jaxlib
    0.10.2 did not; log.md, 2026-12-07). Nothing is compiled yet, so this holds for the run."""
    if jax.default_backend() == "cpu":
        jax.config.update("jax_enable_compilation_cache", False)


@contextlib.contextmanager
def _signals_end_the_wait(reason: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM while JAX waits for the processes to join ends the process at once, in
    one line and 130/143. JAX's wait is one C++ call that Python's signal handlers cannot
    interrupt (they run when it returns): a process left alone ignored both until the join timed
    out, 5 minutes later, then said only that the others had not joined, exit 2. The C-level
    handler still writes the signal's number to the wakeup fd, which a thread watches."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    theirs, ours = socket.socketpair()
    ours.setblocking(False)
    previous = signal.set_wakeup_fd(ours.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        while number := theirs.recv(1):
            if number[0] in (signal.SIGINT, signal.SIGTERM):
                name = signal.Signals(number[0]).name
                exit_now(f"interrupted ({name}) while waiting for every process to join "
                         f"({reason}); run the same command again", 128 + number[0])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        ours.close()  # the watcher reads the end of the stream and returns
        watcher.join()
        theirs.close()


def relay_a_config_error(message: str, files: list[str], overrides: list[str]) -> None:
    """A process whose config does not load (its host's copy of a YAML file has a typo) ended
    before joining, and the others waited mesh.join_timeout at the join, then said only that one
    had not come. When its launch is still known (the mesh sections of its files and its
    mesh.* overrides, or a launcher's environment), it says its error at once, joins, and posts
    the error (`leaving`): the others end within seconds, naming it. Returns only when there is
    no run to join."""
    try:
        mesh = load(files, overrides, section="mesh").mesh
    except UserError:  # the launch keys themselves are wrong: nothing to join with
        return
    if multi_process_reason(mesh) is None or jax.distributed.is_initialized():
        return
    message = " ".join(message.split("\n"))
    print(f"error: {message}", file=sys.stderr, flush=True)  # now: joining may take a while
    try:
        initialize_distributed(mesh)
    except UserError:  # a busy port, unequal devices: this process's own error is said already
        pass
    if jax.distributed.is_initialized():
        leaving.leave_the_run(2, lambda stderr: None, message)
    sys.exit(2)


def join_the_run(cfg: Config) -> None:
    """Join the run `cfg` describes (nothing to join for one process) and refuse processes
    started with different configs. The entry points check each host's own paths (run
    directory, GLUE files) after this, not before: a host that failed before joining left the
    others waiting 5 minutes to join; joined, they hear why within seconds (leaving.py)."""
    initialize_distributed(cfg.mesh)
    same_config_on_every_process(cfg)


def _refuse_unequal_device_counts() -> None:
    """Each process feeds an equal share of every batch, and JAX's multi-host gathers lay the
    devices out as (processes, devices per process): with unequal counts the first collective
    was a numpy reshape traceback. Every process sees every device, so all refuse alike."""
    counts = collections.Counter(d.process_index for d in jax.devices())
    if len(set(counts.values())) > 1:
        each = ", ".join(f"process {i}: {counts[i]}" for i in sorted(counts))
        raise UserError(f"the processes have different numbers of devices ({each}); give every "
                        "process the same number (e.g. with CUDA_VISIBLE_DEVICES on each host)")


def _refuse_a_busy_coordinator_port(cfg: MeshConfig, reason: str) -> None:
    """Process 0 serves the coordinator on its address's port, on every interface. Try that
    port first: when JAX's server cannot bind it, the process often dies of a segfault (-11)
    before JAX raises the "Failed to start RPC server" caught above."""
    if cfg.process_id != 0 or cfg.coordinator_address is None:
        return
    port = cfg.coordinator_address.rpartition(":")[2]
    if not port.isdigit():
        return  # JAX names a malformed address itself
    family, host = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As gRPC does: a port left in TIME_WAIT by a finished run is free to serve again.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind((host, int(port)))
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            return  # no IPv6 on this host, a privileged port, ...: JAX tries and tells
        raise UserError(_busy_port(reason, cfg.process_id)) from None


def _busy_port(reason: str, process_id: int | None) -> str:
    return (f"{reason}: process {process_id} could not serve the coordinator on its port, which "
            "another program (or another run's process 0) holds; choose a free port in "
            "mesh.coordinator_address for every process")


def _not_joined(reason: str, timeout: int) -> str:
    # A process that fails before it joins (a config error only its host meets: its own copy of
    # a config file) cannot tell the others, who wait here; it said why in its own output.
    return (f"not every process joined within {timeout} s ({reason}); a process that "
            "failed before joining (a config error on its host) said why in its own output; "
            "else start the same command on every host, each with its own mesh.process_id "
            "below mesh.num_processes, process 0 on the host of mesh.coordinator_address, whose "
            "port must be free there and reachable from every host (where hosts start minutes "
            "apart, raise mesh.join_timeout)")


_PROCESS_KEYS = ("coordinator_address", "num_processes", "process_id")


_XLA_STATUS = re.compile(r"(UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED|CANCELLED): ")


@contextlib.contextmanager
def losing_a_process_is_fatal() -> Iterator[None]:
    """Inside the block, a failed step or collective of a multi-process run (JAX's runtime
    error: Gloo or NCCL saw a peer's connection drop, or waited for it in vain) becomes a
    `LostProcess` naming what to do, instead of a traceback followed, a minute or two later,
    by JAX's abort at exit. What the run saved (checkpoints, finished seeds) is on disk."""
    try:
        yield
    except (jax.errors.JaxRuntimeError, ValueError) as e:
        # A collective run through jit outside a step (process_allgather, Orbax's syncs) can fail
        # as a ValueError carrying XLA's status: "UNKNOWN: Gloo AllGather failed: … Connection
        # reset by peer". Any other ValueError is a bug: its traceback stays.
        if jax.process_count() == 1 or (isinstance(e, ValueError)
                                        and not _XLA_STATUS.match(str(e))):
            raise
        cause = first_line(e)[:300]
        # The cause may be another (out of memory on this device): said first, not guessed over.
        raise LostProcess(f"a collective operation of this {jax.process_count()}-process run "
                          f"failed ({cause}); if another process died or lost its network (see "
                          "its log), start every process again with the same command to resume: "
                          "what the run saved (checkpoints, finished seeds) is kept") from None



def same_on_every_process(parts: Iterable[bytes]) -> bool:
    """Whether every process holds the same `parts` (compared by sha256; a collective). Pass a
    generator to skip building them on a single process."""
    if jax.process_count() == 1:
        return True
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    mine = np.frombuffer(digest.digest(), np.uint8)
    return not (multihost_utils.process_allgather(mine) != mine).any()


def seen_alike_by_every_process(what: str, view: str) -> None:
    """Refuse a run directory that processes see differently (a collective): `view`, this
    process's reading of `what` (its newest checkpoint, the seeds done). The run directory is
    one shared folder (runlock), but a network file system may still list a directory from a
    host's stale cache: processes resuming from different steps would mix two checkpoints'
    shares of the state, or wait forever for each other in different seeds."""
    if not same_on_every_process([view.encode()]):
        raise UserError(f"the processes see {what} differently (process {jax.process_index()}: "
                        f"{view}); every host must list train.run_dir alike: wait until the "
                        "shared file system shows each host the same files (or remount it), "
                        "then run the same command again")


def same_config_on_every_process(cfg: Config) -> None:
    """Refuse processes started with different configs (a collective). Their steps would still
    meet in the same collectives: each process would apply its own learning rate to its share
    of the parameters, or one would stop while the others wait forever. Left out: the launch
    keys, paths (hosts may hold their own copies) and the tokenizer section (it only builds the
    prepared data): what those lead to is compared by content (prepared data, GLUE encodings)."""
    if jax.process_count() == 1:
        return
    values = {f"{part.name}.{f.name}": getattr(getattr(cfg, part.name), f.name)
              for part in dataclasses.fields(cfg) if part.name != "tokenizer"
              for f in dataclasses.fields(getattr(cfg, part.name))
              if f.metadata.get("domain") not in (PATH, PATHS)}
    keys = sorted(k for k in values if k not in LAUNCH_KEYS)  # the schema's, on every process
    mine = np.stack([np.frombuffer(hashlib.sha256(repr(values[k]).encode()).digest()[:8],
                                   np.uint8) for k in keys])
    everyone = multihost_utils.process_allgather(mine)
    differ = [k for k, d in zip(keys, (everyone != mine).any(axis=(0, 2)), strict=True) if d]
    if differ:
        raise UserError(f"the {jax.process_count()} processes were started with different configs "
                        f"(process {jax.process_index()} has "
                        f"{', '.join(f'{k}={values[k]}' for k in differ[:5])}); start every "
                        "process with the same config files and overrides (only mesh.process_id, "
                        "mesh.join_timeout and paths may differ between them)")


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint and exit at a step boundary.

    With several processes a signal reaches each one at a different point of its loop (or only
    one of them), and a process that stops alone waits forever in the checkpoint's collectives
    while the others wait in the next step's. So processes vote after every step and all stop
    after the same one."""

    def __init__(self, mesh):
        self.received: str | None = None
        self.stopped = False
        self.mesh = mesh
        self.previous_vote: jax.Array | None = None
        self.any_true = jax.jit(jnp.any, out_shardings=replicated(mesh))
        # Python installs handlers from the main thread only (ValueError elsewhere) and runs
        # them there: a run a notebook or a server starts on a thread of its own leaves the
        # signals alone (Ctrl-C interrupts the main thread, not the run), rather than failing
        # after its run directory was written.
        on_main = threading.current_thread() is threading.main_thread()
        self.previous = {sig: signal.signal(sig, self.handle)
                         for sig in (signal.SIGTERM, signal.SIGINT)} if on_main else {}

    def restore(self) -> None:
        """Give the signals back to the handlers they had before (the run is over)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    @property
    def name(self) -> str:
        return self.received or "a signal to another process"

    def should_stop(self) -> bool:
        """Whether to checkpoint and exit after the step just dispatched (same on every process)."""
        if jax.process_count() == 1:
            self.stopped = self.received is not None
            return self.stopped
        mine = np.full(jax.local_device_count(), self.received is not None)
        vote = self.any_true(global_batch({"stop": mine}, self.mesh)["stop"])
        # Act on the previous step's vote: it is ready when that step is, so the host stays one
        # step ahead of the devices instead of waiting for the step in flight.
        previous, self.previous_vote = self.previous_vote, vote
        self.stopped = previous is not None and bool(previous)
        return self.stopped
