"""Monitoring: metrics.jsonl rows, throughput, and wandb in offline mode (never online here)."""

import json

from bertjax import config
from bertjax.metrics import Monitor
from bertjax.plot import plot_run


def test_monitor_writes_jsonl_and_an_offline_wandb_run(tmp_path):
    wandb_cfg = config.load([], ["wandb.mode=offline", "wandb.project=test"]).wandb
    monitor = Monitor(tmp_path, total_steps=4, start_step=0, wandb_cfg=wandb_cfg,
                      config_dict={"a": 1}, flops_per_token=None, compute_dtype="float32")
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
    assert plot_run(tmp_path).stat().st_size > 1000
