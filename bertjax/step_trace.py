"""`train.profile: [FIRST, LAST]` (or `[STEP]`): a jax.profiler trace of those training steps
(counted from 1: pretraining's as its log counts them, a fine-tune's in the first seed that this
invocation trains to them), written to RUN/profile/: TensorBoard's profile plugin or xprof read
the folder, ui.perfetto.dev its `perfetto_trace.json.gz`. The trace holds what the loop does in
the window (data reads, dispatch, metric read-backs, a checkpoint, validation or GLUE evaluation
falling in it), so beside the device's kernels it shows where the device waits for the host.

One trace per invocation: a rollback, a resume back into the window or a fine-tune's next seed
does not trace it again in the same process. Several processes trace each to
RUN/profile/processN/ (the file names would collide on a host running two).
"""

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

from bertjax.errors import first_line

# jax writes perfetto_trace.json.gz from the trace's first this many events by start time
# (tsl's TraceContainer::CapEvents); the .xplane.pb beside it, which TensorBoard and xprof read,
# holds them all. `make demo`'s steps on a 2-core CPU make ~14,000 events each (a third of them
# Python calls): some 70 steps fill it.
PERFETTO_EVENTS = 1_000_000


def trace_directory(run_dir: Path) -> Path:
    """Where this process's traces go."""
    profile = run_dir / "profile"
    return profile / f"process{jax.process_index()}" if jax.process_count() > 1 else profile


def warn_if_past_the_end(window: list[int], last_step: int, whose: str) -> None:
    """A window that starts after the last step traces nothing: said when the run starts."""
    if window and window[0] > last_step:
        warnings.warn(f"train.profile={window} starts after {whose} last step ({last_step:,}): "
                      "nothing will be traced; give steps within the run", stacklevel=3)


def xspace_events(path: Path) -> Iterator[tuple[str, str, object]]:
    """(plane name, line name, event) of every event in a jax.profiler XSpace file
    (`*.xplane.pb`, the whole trace): a plane is a device ("/device:GPU:0") or the host, a line
    one of its streams or threads; an event has .name, .duration_ns and .stats. Raises
    RuntimeError (jaxlib's) for a file that is not one."""
    with warnings.catch_warnings():  # jaxlib 0.11 on Python 3.12, at the first .stats
        warnings.filterwarnings("ignore", "builtin type .* has no __module__", DeprecationWarning)
        for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
            for line in plane.lines:
                for event in line.events:
                    yield plane.name, line.name, event


def event_count(trace_run: Path) -> int | None:
    """The events of the trace in one of jax.profiler's run folders (None: not readable)."""
    try:
        return sum(1 for path in trace_run.glob("*.xplane.pb") for _ in xspace_events(path))
    except (AttributeError, RuntimeError, OSError):  # a jax without ProfileData; a bad file
        return None


def warn_if_resumed_past(window: list[int], done: int, who: str) -> None:
    """A resume with `done` steps done, at or past the window's last step, traces nothing: said
    (a run resumed after a crash with a window added to look into it traced nothing, without a
    word)."""
    if window and window[-1] <= done:
        warnings.warn(f"train.profile={window} lies before step {done + 1:,}, where {who}: "
                      "nothing will be traced; give later steps", stacklevel=3)


class StepTrace:
    """Around the step loop (`with trace:`): `before` each step starts jax.profiler at the
    window's first step this process runs; `done` says when the window is complete, and the loop
    then calls `stop` (which waits for the device's work). Where the loop ends first (the run's
    end, a stop signal) the trace stops there; on an error, without waiting for the device."""

    def __init__(self, window: list[int], run_dir: Path, say: Callable[[str], None]):
        self.first, self.last = (window[0], window[-1]) if window else (0, -1)  # [STEP] too
        self.directory, self.say = trace_directory(run_dir), say
        self.started: int | None = None  # the first traced step, while tracing
        self.step, self.state = 0, None  # the last traced step done, and the state after it
        self.traced = False  # tracing was started (or tried) once: never again

    def before(self, step: int, state) -> None:
        """Called before step `step` (1-based) is dispatched, with the state it will update.
        The steps before it run ahead of the host (dispatched, not done): a window starts when
        they are done, so that their kernels are not counted among the window's."""
        if not self.traced and self.started is None and self.first <= step <= self.last:
            self.traced = True  # one try: a profiler that will not start stays off
            jax.block_until_ready(state)
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            except Exception as e:  # no CUPTI on this GPU, a trace of the caller's running, ...
                warnings.warn(f"train.profile: the profiler did not start ({first_line(e)}); the "
                              "run goes on without a trace", stacklevel=2)
                return
            self.started = step

    def done(self, step: int, state) -> bool:
        """Called once step `step` and its periodic work (log, validation, save) are done: True
        when that completes the window (then `stop`)."""
        if self.started is None:
            return False
        self.step, self.state = step, state
        return step >= self.last

    def stop(self) -> None:
        """Wait for the traced steps' kernels (not only their dispatch), stop, say where."""
        first, state, self.started, self.state = self.started, self.state, None, None
        try:
            jax.block_until_ready(state)
        finally:
            written = self.write(first)
        if written:
            runs = sorted((self.directory / "plugins" / "profile").glob("*"))
            early = " (the loop stopped before train.profile's last step)" \
                if self.step < self.last else ""
            others = " (each process traces to its own profile/processN folder)" \
                if jax.process_count() > 1 else ""
            events = event_count(runs[-1]) if runs else None
            cut = f" (its first {PERFETTO_EVENTS:,} of {events:,} events)" \
                if events and events > PERFETTO_EVENTS else ""
            self.say(f"profile: steps {first}-{self.step} traced to "
                     f"{runs[-1] if runs else self.directory}{early}{others}; open it with "
                     f"TensorBoard's profile plugin or xprof, or perfetto_trace.json.gz{cut} at "
                     "ui.perfetto.dev")

    def write(self, first: int) -> bool:
        """Stop the profiler, which writes the trace; a failure (a full disk) is warned of and
        training goes on."""
        try:
            jax.profiler.stop_trace()
            return True
        except Exception as e:
            warnings.warn(f"train.profile: the trace of steps {first}-{self.step} was not "
                          f"written ({first_line(e)})", stacklevel=3)
            return False

    def __enter__(self) -> "StepTrace":
        return self

    def __exit__(self, error_type, *_) -> None:
        if self.started is not None:
            if error_type is not None:
                self.state = None  # the device may be what failed: not waited on
            self.stop()
