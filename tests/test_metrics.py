"""Monitoring: metrics.jsonl rows, throughput, wandb in offline mode (never online here), and the
console: a bar on a terminal, plain lines in a log file."""

import io
import json

import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from bertjax import config
from bertjax.errors import UserError
from bertjax.metrics import Monitor, start_wandb
from bertjax.plot import plot_run


def test_monitor_writes_jsonl_and_an_offline_wandb_run(tmp_path):
    wandb_cfg = config.load([], ["wandb.mode=offline", "wandb.project=test"]).wandb
    monitor = Monitor(tmp_path, total_steps=4, start_step=0,
                      wandb_run=start_wandb(wandb_cfg, tmp_path, {"a": 1}),
                      flops_per_token=None, compute_dtype="float32")
    for step in range(1, 5):
        row = {"loss": 5.0 - step, "accuracy": 0.1 * step, "tokens": 100 * step}
        row |= monitor.throughput(row["tokens"])
        monitor.log(step, row, {"loss": row["loss"]})
        monitor.advance()
    monitor.log(4, {"val_loss": 1.5, "val_accuracy": 0.5})
    monitor.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4]
    assert "tokens_per_s" not in rows[0] and rows[1]["tokens_per_s"] > 0
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # a local wandb run, no network


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


TRAIN_ROW = {"step": 1, "loss": 4.0, "accuracy": 0.1, "tokens": 100}


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
                         ids=["empty", "blank", "glue-run", "no-objects"])
def test_plot_refuses_a_file_with_nothing_to_draw_and_keeps_the_old_png(tmp_path, text):
    (tmp_path / "metrics.jsonl").write_text(text)
    (tmp_path / "curves.png").write_bytes(b"old curves")
    with pytest.raises(UserError, match="no pretraining rows to plot"):
        plot_run(tmp_path)
    assert (tmp_path / "curves.png").read_bytes() == b"old curves"


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
    monitor = Monitor(tmp_path, total_steps=2, start_step=0, wandb_run=None,
                      flops_per_token=None, compute_dtype="float32")
    for step in (1, 2):
        monitor.advance()
        throughput = {"tokens_per_s": 1234.4} if step == 2 else {}  # shown when the row has it
        monitor.log(step, {"loss": 3.0 / step, **throughput}, {"loss": f"{3.0 / step:.3f}"})
    monitor.close()
    out = capsys.readouterr().out
    if tty:  # tqdm draws on stderr; stdout stays clean
        assert out == "" and "\r" in stderr.getvalue() and "loss=1.500" in stderr.getvalue()
    else:  # one line per logged row, no redraws
        assert out.splitlines() == ["step 1/2: loss 3.000", "step 2/2: loss 1.500, tok/s 1,234"]
        assert stderr.getvalue() == ""


@pytest.mark.slow  # wandb starts its service process (about 8 s)
def test_wandb_online_without_an_api_key_is_one_line_not_wandbs_traceback(tmp_path,
                                                                          no_wandb_key):
    with pytest.raises(UserError, match="wandb.mode=online: wandb did not start .*wandb login"):
        start_wandb(config.WandbConfig(mode="online"), tmp_path, {})
