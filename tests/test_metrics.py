"""Monitoring: metrics.jsonl rows, throughput, wandb in offline mode (never online here), and the
console: a bar on a terminal, plain lines in a log file."""

import io
import json
import re
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import jax
import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from bertjax import config, plot
from bertjax.errors import StoppedBySignal, UserError
from bertjax.metrics import WANDB_RUN_ID, Monitor, device_memory, device_peak_flops, wandb_session
from bertjax.plot import plot_run

ROOT = Path(__file__).resolve().parents[1]


def in_fresh_python(body: str) -> str:
    """Run `body` (Python, with bertjax's config and metrics imported) in a new interpreter
    with this process's environment; its stdout. A UserError is printed as "UserError: ...".
    For the tests that start the real wandb (conftest.wandb_never_started_in_the_test_process)."""
    code = ("from pathlib import Path\nfrom bertjax import config\n"
            "from bertjax.errors import UserError\n"
            "from bertjax.metrics import Monitor, start_wandb, wandb_session\n"
            "try:\n" + textwrap.indent(body, "    ") +
            "\nexcept UserError as e:\n    print(f'UserError: {e}')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.slow  # wandb starts its service process (about 8 s)
def test_monitor_writes_jsonl_and_an_offline_wandb_run(tmp_path):
    in_fresh_python(f"""\
run_dir = Path({str(tmp_path)!r})
wandb_cfg = config.load([], ["wandb.mode=offline", "wandb.project=test"]).wandb
with wandb_session(wandb_cfg, run_dir, {{"a": 1}}, resuming=True) as wandb_run:
    monitor = Monitor(run_dir, total_steps=4, start_step=0, wandb_run=wandb_run,
                      flops_per_token=None, compute_dtype="float32")
    for step in range(1, 5):
        row = {{"loss": 5.0 - step, "accuracy": 0.1 * step, "tokens": 100 * step}}
        row |= monitor.throughput(row["tokens"])
        monitor.log(step, row, {{"loss": row["loss"]}})
        monitor.advance()
    monitor.log(4, {{"val_loss": 1.5, "val_accuracy": 0.5}})
    monitor.close()""")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4]
    assert "tokens_per_s" not in rows[0] and rows[1]["tokens_per_s"] > 0
    # A local wandb run, no network, under the id the run directory keeps for a resume.
    run_id = (tmp_path / WANDB_RUN_ID).read_text().strip()
    assert [p.name for p in (tmp_path / "wandb").glob("offline-run-*")] == \
        [p.name for p in (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")] != []


def log_steps(run_dir, wandb_run, steps) -> list[int]:
    """Log a loss row at each step through a Monitor; the steps metrics.jsonl holds after."""
    monitor = Monitor(run_dir, total_steps=max(steps), start_step=min(steps) - 1,
                      wandb_run=wandb_run, flops_per_token=None, compute_dtype="float32")
    for step in steps:
        monitor.log(step, {"loss": 1.0})
    monitor.close()
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_continues_its_wandb_run_and_a_fresh_start_gets_its_own(tmp_path,
                                                                             fake_wandb):
    cfg = config.WandbConfig(mode="online")
    with wandb_session(cfg, tmp_path, {}, resuming=True) as first:  # nothing kept yet: new id
        log_steps(tmp_path, first, range(1, 6))
    assert (tmp_path / WANDB_RUN_ID).read_text() == first.id + "\n"
    # Killed after step 5, resumed from a checkpoint at step 3: steps 4 and 5 come again. wandb
    # holds them already (and would drop them, warning each time); metrics.jsonl gets them.
    with wandb_session(cfg, tmp_path, {}, resuming=True) as second:
        assert log_steps(tmp_path, second, range(4, 9)) == [1, 2, 3, 4, 5, 4, 5, 6, 7, 8]
    assert second.id == first.id and second.kwargs["resume"] == "allow"
    assert second.logged == [6, 7, 8]
    with wandb_session(cfg, tmp_path, {}, resuming=False) as third:  # starting over
        pass
    assert third.id != first.id and (tmp_path / WANDB_RUN_ID).read_text() == third.id + "\n"
    assert [(r.exit_code, r.preempting) for r in fake_wandb.inits] == [(None, False)] * 3


@pytest.mark.parametrize("raised, exit_code, preempting", [
    (StoppedBySignal("SIGTERM"), 143, True), (StoppedBySignal("SIGINT"), 130, True),
    (UserError("a damaged seed result"), 2, False), (RuntimeError("a bug"), 1, False)])
def test_a_wandb_run_is_finished_with_what_stopped_the_run(tmp_path, fake_wandb, raised,
                                                           exit_code, preempting):
    with pytest.raises(type(raised)), \
            wandb_session(config.WandbConfig(mode="online"), tmp_path, {}, resuming=True):
        raise raised
    (run,) = fake_wandb.inits
    assert (run.finished, run.exit_code, run.preempting) == (True, exit_code, preempting)


def test_no_wandb_run_when_disabled(tmp_path, fake_wandb):
    with wandb_session(config.WandbConfig(mode="disabled"), tmp_path, {}, resuming=True) as run:
        assert run is None
    assert not fake_wandb.inits and not (tmp_path / WANDB_RUN_ID).exists()


def test_wandbs_telemetry_shut_down_twice_says_nothing(tmp_path, fake_wandb, caplog):
    """Under Python 3.14 every wandb run (offline too; and one that did not start) ended with
    opentelemetry's "shutdown can only be called once" below the run's output (the refused-start
    test's one-line error failed there). Only that message of that logger is dropped."""
    import logging

    with wandb_session(config.WandbConfig(mode="offline"), tmp_path, {}, resuming=True):
        pass
    telemetry = logging.getLogger("opentelemetry.sdk.metrics._internal")
    telemetry.warning("shutdown can only be called once")
    telemetry.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]


def test_plot_draws_training_curves_and_validation_points_in_both_panels(tmp_path):
    rows = [{"step": s, "loss": 5.0 - s, "accuracy": 0.1 * s, "tokens": 100 * s} for s in (1, 2, 3)]
    rows.append({"step": 3, "val_loss": 2.5, "val_accuracy": 0.2})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    image = matplotlib.image.imread(plot_run(tmp_path))[..., :3]
    assert image.shape[:2] == (400, 1100)  # figsize 11 x 4 inches at 100 dpi

    def drawn(color):  # pixels of this colour in the left (loss) and right (accuracy) panel
        hit = np.abs(image - np.asarray(to_rgb(color))).max(-1) < 0.05
        return hit[:, :550].sum(), hit[:, 550:].sum()

    assert min(drawn("C0")) > 50  # the training line (matplotlib's first colour)
    assert min(drawn("C1")) > 20  # the validation marker (its second)
    assert not list(tmp_path.glob("*.tmp"))


def test_plot_of_a_glue_run_draws_each_seeds_epochs_in_both_panels(tmp_path):
    rows = [{"step": 4 * e + 12 * i, "seed": seed, "epoch": e, "train_loss": 1.0 / e,
             "dev_score": 0.5 + 0.1 * e, "dev/accuracy": 0.5 + 0.1 * e}
            for i, seed in enumerate((0, 1)) for e in (1, 2, 3)]
    rows.insert(2, {"step": 5, "seed": 0, "epoch": 2, "loss": 0.7, "lr": 1e-4})  # a step row
    rows.insert(3, dict(rows[1], dev_score=0.1))  # epoch 2 again (a resume): the last counts
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    image = matplotlib.image.imread(plot_run(tmp_path))[..., :3]

    def drawn(color):  # pixels of this colour in the left (loss) and right (score) panel
        hit = np.abs(image - np.asarray(to_rgb(color))).max(-1) < 0.05
        return hit[:, :550].sum(), hit[:, 550:].sum()

    assert min(drawn("C0")) > 50 and min(drawn("C1")) > 50  # seed 0, seed 1
    # The score's axis says what it is: the first dev split's metrics (GLUE's main score).
    assert plot._score_name(rows[0]) == "dev accuracy"
    assert plot._score_name({"dev/accuracy": 0.8, "dev/f1": 0.7, "test/x": 1}) == \
        "dev: mean of accuracy, f1"


def test_plot_of_a_sweep_draws_each_rates_seeds_by_epoch_and_against_the_rate(tmp_path):
    """A sweep's folder (no metrics.jsonl of its own): one colour a rate, in both panels; a rate
    with no epoch yet (an interrupted sweep) is left out."""
    def rate(folder, scores):  # two seeds, an epoch each score
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.yaml").write_text("train: {task: glue}\n")
        rows = [{"step": e, "seed": seed, "epoch": e, "train_loss": 1.0, "dev_score": x + seed,
                 "dev/accuracy": x + seed} for seed in (0, 1) for e, x in enumerate(scores, 1)]
        (tmp_path / folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                              for r in rows))
    (tmp_path / "lr0.001").mkdir()  # started, no epoch row yet
    (tmp_path / "lr0.001" / "config.yaml").write_text("train: {task: glue}\n")
    with pytest.raises(UserError, match=r"is a learning-rate sweep with no finished epoch yet; "
                                        r"plot it once one is done; nothing was written"):
        plot_run(tmp_path)
    rate("lr5e-05", [0.1, 0.2, 0.15])
    rate("lr2e-05", [0.3, 0.1, 0.2])
    with pytest.warns(UserWarning, match="left out"):
        panels = plot._sweep_panels(tmp_path, plot.rate_runs(tmp_path))
    assert panels[1] == (
        "learning rate", "best dev accuracy of each seed", [
            ("lr 2e-05", [2e-5], [0.3], "o", "C0"), (None, [2e-5], [1.3], "o", "C0"),
            ("lr 5e-05", [5e-5], [0.2], "o", "C1"), (None, [5e-5], [1.2], "o", "C1")])
    with pytest.warns(UserWarning, match=r": lr0.001 left out of the plot \(no finished epoch"):
        image = matplotlib.image.imread(plot_run(tmp_path))[..., :3]

    def drawn(color):  # pixels of this colour in the left (by epoch) and right (by rate) panel
        hit = np.abs(image - np.asarray(to_rgb(color))).max(-1) < 0.05
        return hit[:, :550].sum(), hit[:, 550:].sum()

    assert min(drawn("C0")) > 20 and min(drawn("C1")) > 20  # 2e-5 then 5e-5: by rate
    assert drawn("C2") == (0, 0)  # lr0.001 has no epoch


TRAIN_ROW = {"step": 1, "loss": 4.0, "accuracy": 0.1, "tokens": 100}


def test_a_diverged_runs_null_values_are_drawn_as_gaps_not_skipped_as_damage(tmp_path):
    """metrics.jsonl writes a NaN loss as null (strict JSON). A GLUE run whose every epoch
    diverged had "no rows to plot ... skipped 2 damaged row(s)", so no curves.png at all."""
    rows = [{"step": 2 * e, "seed": 0, "epoch": e, "train_loss": None, "dev_score": 0.5}
            for e in (1, 2)] + [dict(TRAIN_ROW, loss=None), dict(TRAIN_ROW, step=2)]
    for kept in (rows[:2], rows[2:]):  # a GLUE run; a pretraining run
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "damaged row" warning
            assert plot_run(tmp_path).is_file()


@pytest.mark.parametrize("damaged", [
    b"\xe9t\xe9\n", b'{"step": 2, "loss": 1.0\n', b"5\n", b'{"step": 2, "loss": 1.0}\n',
    b'{"step": 2, "tokens": 200, "loss": 1.0}\n', b'{"step": 2, "tokens": 200, "loss": "x", '
    b'"accuracy": 0.1}\n', b'{"step": "a", "val_loss": 1.0, "val_accuracy": 0.1}\n'],
    ids=["latin1", "cut", "number", "no-tokens", "no-accuracy", "text-loss", "text-step"])
def test_plot_leaves_out_a_damaged_row_with_one_warning(tmp_path, damaged):
    (tmp_path / "metrics.jsonl").write_bytes(json.dumps(TRAIN_ROW).encode() + b"\n" + damaged)
    with pytest.warns(UserWarning, match=r"skipped 1 damaged row\(s\)") as caught:
        assert plot_run(tmp_path).is_file()
    assert len(caught) == 1


@pytest.mark.parametrize("text", ["", "\n", '{"step": 2, "epoch": 1, "train_loss": 1.1, '
                                  '"dev_score": 0.4}\n', "5\n[1]\n"],
                         ids=["empty", "blank", "glue-row-without-seed", "no-objects"])
def test_plot_refuses_a_file_with_nothing_to_draw_and_keeps_the_old_png(tmp_path, text):
    (tmp_path / "metrics.jsonl").write_text(text)
    (tmp_path / "curves.png").write_bytes(b"old curves")
    with pytest.raises(UserError, match="has no rows to plot .*nothing was written"):
        plot_run(tmp_path)
    assert (tmp_path / "curves.png").read_bytes() == b"old curves"


@pytest.mark.parametrize("word", ["-h", "--help"])
def test_plot_help_prints_the_usage_instead_of_reading_it_as_a_run_dir(tmp_path, monkeypatch,
                                                                        capsys, word):
    """Like train, prepare, export and predict: `plot --help` once said `--help/metrics.jsonl
    does not exist` and exited 2."""
    monkeypatch.chdir(tmp_path)
    plot.main([word])
    assert capsys.readouterr().out.startswith("usage: python -m bertjax.plot RUN_DIR\n")
    assert not list(tmp_path.iterdir())


def test_a_relative_run_dir_missing_from_another_directory_names_where_it_looked(tmp_path,
                                                                              monkeypatch):
    """The README's `plot runs/demo` started outside the repository said only "runs/demo/
    metrics.jsonl does not exist" (train and export named the current directory)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=rf"^runs/demo/metrics.jsonl does not exist \(in the "
                                        rf"current directory, {tmp_path}\); pass a run directory"):
        plot.main(["runs/demo"])
    (tmp_path / "runs" / "demo").mkdir(parents=True)  # there, but no run: no directory hint
    with pytest.raises(UserError, match=r"^runs/demo/metrics.jsonl does not exist; pass a run"):
        plot.main(["runs/demo"])


def test_a_file_or_a_directory_in_the_wrong_place_is_named_as_such(tmp_path):
    """A metrics.jsonl that is a directory, and a file passed as the run directory, both said
    "RUN/metrics.jsonl does not exist"."""
    (tmp_path / "run" / "metrics.jsonl").mkdir(parents=True)
    with pytest.raises(UserError, match=r"metrics file .*run/metrics.jsonl is a directory, not "
                                        r"a file; pass a run directory") as e:
        plot.main([str(tmp_path / "run")])
    assert "\n" not in str(e.value)
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(UserError, match=r"notes.txt is a file, not a run directory; pass the "
                                        r"run directory \(the one holding metrics.jsonl\)$"):
        plot.main([str(tmp_path / "notes.txt")])


def test_a_finished_run_without_matplotlib_warns_instead_of_failing(tmp_path, monkeypatch):
    """Both loops draw curves.png after the run's results are written: a GPU image without
    matplotlib (or a metrics.jsonl with nothing to draw) must not turn a finished run into a
    failed one."""
    (tmp_path / "metrics.jsonl").write_text(json.dumps(TRAIN_ROW) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.warns(UserWarning, match=r"curves.png not drawn: .*matplotlib"):
        plot.plot_finished_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=r"curves.png not drawn: .*no rows to plot"):
        plot.plot_finished_run(tmp_path)
    assert not (tmp_path / "curves.png").exists()


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [False, True])
def test_console_is_a_bar_on_a_terminal_and_lines_in_a_log(tmp_path, monkeypatch, capsys, tty):
    stderr = Stream(tty)
    monkeypatch.setattr("sys.stderr", stderr)
    monitor = Monitor(tmp_path, total_steps=3, start_step=0, wandb_run=None,
                      flops_per_token=None, compute_dtype="float32")
    postfixes = []
    for step in (1, 2, 3):
        monitor.advance()
        throughput = {"tokens_per_s": 1234.4} if step == 2 else {}  # shown when the row has it
        # skipped steps (not finite, not applied) are shown when there are some; they were
        # only in metrics.jsonl, so a run of fp16 overflows printed plain losses
        monitor.log(step, {"loss": 3.0 / step, **throughput, "skipped": step - 1},
                    {"loss": f"{3.0 / step:.3f}"})
        postfixes.append(monitor.bar.postfix if tty else None)  # a disabled bar has none
    monitor.close()
    out = capsys.readouterr().out
    if tty:  # tqdm draws on stderr; stdout stays clean
        assert out == "" and "\r" in stderr.getvalue() and "loss=1.000" in stderr.getvalue()
        assert "skipped=2" in stderr.getvalue()
        # The rows' ETA, as on the log lines, not tqdm's by steps (`elapsed<remaining`: low
        # under a batch ramp)
        assert re.fullmatch(r"loss=1\.500, tok/s=1,234, skipped=1, eta=00:0\d", postfixes[1])
        assert "<" not in stderr.getvalue() and "eta" not in postfixes[0] + postfixes[2]
    else:  # one line per logged row, no redraws, and the time left (the bar's ETA) between
        # the first and the last (a week-long job's log said nothing of when it would end)
        lines = out.splitlines()
        assert lines[0] == "step 1/3: loss 3.000" and lines[2].startswith("step 3/3: loss 1.000,")
        assert re.fullmatch(r"step 2/3: loss 1\.500, tok/s 1,234, skipped 1, eta 00:0\d",
                            lines[1])
        assert stderr.getvalue() == ""



def test_a_gpus_peak_memory_is_in_each_training_row_and_on_its_line(tmp_path, monkeypatch,
                                                                     capsys):
    """How close a batch comes to the device's memory: the highest peak among the process's
    devices, with that device's limit; nothing where jax keeps no statistics (the CPU)."""
    assert jax.local_devices()[0].memory_stats() is None and device_memory() == {}
    monkeypatch.setattr("sys.stderr", Stream(False))

    def gpu(peak, limit):
        return types.SimpleNamespace(memory_stats=lambda: {
            "bytes_in_use": 1, "peak_bytes_in_use": peak, "bytes_limit": limit})

    monkeypatch.setattr(jax, "local_devices", lambda *a, **k: [
        gpu(1_000_000_000, 85_000_000_000), gpu(61_230_000_000, 79_100_000_000)])
    assert device_memory() == {"memory_peak_gb": 61.23, "memory_limit_gb": 79.1}
    monitor = Monitor(tmp_path, total_steps=2, start_step=0, wandb_run=None,
                      flops_per_token=None, compute_dtype="float32")
    for step in (1, 2):
        monitor.advance()
        monitor.log(step, {"loss": 1.0, **monitor.throughput(step * 100)}, {"loss": "1.000"})
    monitor.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step 1/2: loss 1.000, mem 61.2/79 GB"  # no rate yet: the memory still
    assert re.fullmatch(r"step 2/2: loss 1\.000, tok/s [\d,]+, mem 61\.2/79 GB", lines[1])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["memory_peak_gb"] for r in rows] == [61.23, 61.23]


def test_the_eta_weighs_steps_by_their_work_under_a_batch_ramp(tmp_path, monkeypatch, capsys):
    """Counted by steps, a ramp's later, larger batches made the log lines' ETA read low (a 4x
    ramp: 00:00 with 34 s left). Batches 1, 1, 4, 4, 4: at 10 s for the second step, the 12
    sequences left take 120 s; by steps it said 30 s."""
    monkeypatch.setattr("sys.stderr", Stream(False))
    clock = iter([0.0, 100.0, 110.0, 200.0])  # the monitor's start, then each log line
    monkeypatch.setattr("bertjax.metrics.time.perf_counter", lambda: next(clock))
    batches = [1, 1, 4, 4, 4]
    monitor = Monitor(tmp_path, total_steps=5, start_step=0, wandb_run=None,
                      flops_per_token=None, compute_dtype="float32",
                      work_before=lambda step: sum(batches[:step]))
    for step in (1, 2):
        monitor.log(step, {"loss": 1.0}, {"loss": "1.0"})
    monitor.close()
    assert capsys.readouterr().out.splitlines() == ["step 1/5: loss 1.0",
                                                    "step 2/5: loss 1.0, eta 02:00"]

@pytest.mark.slow  # wandb starts its service process (about 8 s)
def test_wandb_online_without_an_api_key_is_one_line_not_wandbs_traceback(tmp_path,
                                                                          no_wandb_key):
    out = in_fresh_python(f"start_wandb(config.WandbConfig(mode='online'), Path({str(tmp_path)!r}),"
                          " {}, resuming=True)")
    assert re.fullmatch(r"UserError: wandb.mode=online: wandb did not start .*wandb login.*\n",
                        out)


@pytest.mark.slow  # wandb starts its service process (about 8 s)
def test_a_bad_wandb_project_names_the_key_not_a_login(tmp_path, no_wandb_key):
    """Offline with wandb.project=a/b said "run `wandb login` ... or use wandb.mode=offline",
    for a run already offline whose project name was the problem."""
    out = in_fresh_python("start_wandb(config.WandbConfig(mode='offline', project='a/b'), "
                          f"Path({str(tmp_path)!r}), {{}}, True)")
    assert re.fullmatch(r"UserError: wandb.mode=offline: wandb did not start \(Invalid "
                        r"project name 'a/b'.*\); correct wandb\.project.*\n", out)
    assert "login" not in out


def test_plot_of_a_read_only_run_is_one_line_and_a_finished_run_only_warns(tmp_path,
                                                                          monkeypatch):
    """`plot` on a read-only copy or mount of a run was an OSError traceback (the cleanup's own
    EROFS hiding the first). Root ignores permissions, so the refusal is injected."""
    import errno
    import pathlib

    (tmp_path / "metrics.jsonl").write_text(json.dumps(TRAIN_ROW) + "\n")
    (tmp_path / "curves.png").write_bytes(b"old curves")

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    with pytest.raises(UserError, match=rf"cannot write {tmp_path}/curves.png \(Read-only file "
                                        rf"system\); make {tmp_path} writable"):
        plot_run(tmp_path)
    with pytest.warns(UserWarning, match=r"curves.png not drawn: cannot write"):
        plot.plot_finished_run(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "curves.png").read_bytes() == b"old curves"


@pytest.mark.parametrize("kind, peak", [("NVIDIA H100 80GB HBM3", 989e12),
                                        ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("cpu", None)])
def test_mfu_divides_by_the_cards_own_peak(monkeypatch, kind, peak):
    """An H100 PCIe (756 TFLOP/s dense bf16) was read as the SXM card (989): its MFU a quarter
    low."""
    monkeypatch.setattr("jax.devices", lambda: [types.SimpleNamespace(device_kind=kind)])
    assert device_peak_flops("bfloat16") == peak


@pytest.mark.parametrize("kind, tf32, full", [("NVIDIA H100 80GB HBM3", 495e12, 67e12),
                                              ("NVIDIA A100-SXM4-80GB", 156e12, 19.5e12)])
def test_float32_mfu_divides_by_the_tf32_peak_unless_full_precision_is_asked(monkeypatch, kind,
                                                                            tf32, full):
    """jax runs float32 matmuls as TensorFloat-32 on NVIDIA's tensor cores by default: against
    the CUDA-core peak (67 TFLOP/s on an H100) a float32 run's MFU could pass 100 %."""
    monkeypatch.setattr("jax.devices", lambda: [types.SimpleNamespace(device_kind=kind)])
    assert device_peak_flops("float32") == tf32
    with jax.default_matmul_precision("highest"):
        assert device_peak_flops("float32") == full
    with jax.default_matmul_precision("tensorfloat32"):
        assert device_peak_flops("float32") == tf32
