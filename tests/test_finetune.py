"""GLUE fine-tuning and inference: a tiny model overfits a handful of real SST-2 rows through the
front door, writes results, a best bundle and submission files; fill-mask finds the word an
overfit toy model learnt; compilations are bounded by the buckets; bad inputs are one line."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from collections import Counter
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from conftest import communicate_all, count_calls, fake_gpu, free_port, trace_events

from bertjax import (
    config,
    glue,
    glue_batches,
    glue_eval,
    glue_score,
    glue_submission,
    glue_sweep,
    metrics,
    seed_run,
)
from bertjax import finetune as finetune_lib
from bertjax import step as step_lib
from bertjax import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.finetune import finetune
from bertjax.model import Bert
from bertjax.optim import learning_rate, schedule_args
from bertjax.precision import Precision
from bertjax.predict import classify, fill_mask
from bertjax.pretrained import load_pretrained
from bertjax.starting_points import initial_model
from bertjax.step import init_state, make_glue_steps

pytestmark = pytest.mark.slow  # end-to-end fine-tunes, CLI subprocesses, two processes

ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = ROOT / "tests" / "fixtures" / "glue"


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    texts = [line for f in sorted(GLUE_DIR.rglob("*.tsv")) for line in
             f.read_text(encoding="utf-8").splitlines()]
    tok = tokenizer_lib.train(lambda: texts * 3,
                              config.TokenizerConfig(vocab_size=400, min_frequency=1))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer_lib.save(tok, path)
    return path


def sst2_overrides(tmp_path, tokenizer_path, *extra) -> list[str]:
    """A tiny model on the SST-2 fixture rows, dev = those same rows (so it can memorise them)."""
    return [f"glue.data_dir={GLUE_DIR}", "glue.dev_files=[train.tsv]", f"train.run_dir={tmp_path}",
            f"tokenizer.path={tokenizer_path}", "model.num_layers=2", "model.hidden_size=64",
            "model.num_heads=2", "model.dropout=0.0", "model.attention_dropout=0.0",
            "glue.classifier_dropout=0.0", "glue.batch_size=8", "glue.epochs=25", "optim.lr=2e-3",
            "optim.warmup=0.0", "glue.buckets=[16,32,64]", "glue.seeds=[0,1]", *extra]


def sst2_cfg(tmp_path, tokenizer_path, *extra) -> config.Config:
    return config.load([ROOT / "configs" / "sst2.yaml"],
                       sst2_overrides(tmp_path, tokenizer_path, *extra))


def test_tiny_finetune_overfits_and_writes_results(tmp_path, tokenizer_path, monkeypatch):
    original, built = finetune_lib.build_steps, []

    def record(*args):
        built.append(original(*args))
        return built[-1]

    monkeypatch.setattr(finetune_lib, "build_steps", record)
    train_traces = count_calls(monkeypatch, step_lib, "classification_sums")  # train step only
    # The fixture's test.tsv has 3 of SST-2's 1,821 test rows: written, and said unsubmittable.
    with pytest.warns(UserWarning, match=r"submission/SST-2.tsv holds 3 predictions, but GLUE's "
                                         r"sst2 test split has 1,821 examples: the leaderboard "
                                         "will refuse it"):
        run_dir = finetune(sst2_cfg(tmp_path, tokenizer_path))
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["seed"] for r in results["seeds"]] == [0, 1]
    # Both seeds (and the submission predictions) share one compilation per bucket.
    assert len(built) == 1 and 1 <= len(train_traces) <= 3
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)  # seeds in sequence
    epochs = [r for r in rows if "dev/accuracy" in r]
    assert [(r["seed"], r["epoch"]) for r in epochs] == [(s, e) for s in (0, 1)
                                                          for e in range(1, 26)]
    assert epochs[-1]["dev/accuracy"] == results["seeds"][1]["history"][-1]["score"]
    assert any("loss" in r and "lr" in r for r in rows)
    for seed in results["seeds"]:
        assert seed["best_metrics"]["dev"]["accuracy"] == 1.0  # the training rows, memorised
        assert (run_dir / f"seed{seed['seed']}" / "best" / "manifest.json").is_file()
    assert results["summary"]["main_score"]["mean"] == 1.0
    assert (run_dir / "curves.png").stat().st_size > 10_000  # each seed's epochs (test_metrics)
    submission = (run_dir / "submission" / "SST-2.tsv").read_text().splitlines()
    test_rows = glue.load_split(config.load([], [f"glue.data_dir={GLUE_DIR}",
                                                 "glue.task=sst2"]).glue, "test")
    assert submission[0] == "index\tprediction" and len(submission) == len(test_rows) + 1
    assert {line.split("\t")[1] for line in submission[1:]} <= {"0", "1"}
    assert results["best_model"] == str(run_dir / "seed0" / "best")  # both 1.0: the first listed
    # bertjax.glue_score on that model: the run's dev score and the same submission file
    glue_score.main([results["best_model"], "--out", str(tmp_path / "scored")])
    scored = json.loads((tmp_path / "scored" / "scores.json").read_text())
    assert scored["dev"]["dev"]["metrics"] == results["seeds"][0]["best_metrics"]["dev"]
    assert (tmp_path / "scored" / "SST-2.tsv").read_text() == "\n".join(submission) + "\n"
    # MNLI -> RTE style: a fine-tuned bundle initialises the next task (its head is replaced).
    chained = finetune(sst2_cfg(tmp_path / "rte", tokenizer_path, "glue.task=rte",
                                f"init.checkpoint={run_dir / 'seed0' / 'best'}",
                                "glue.seeds=[0]", "glue.epochs=2"))
    rte = json.loads((chained / "results.json").read_text())
    assert rte["init"].endswith("best") and len(rte["seeds"]) == 1
    assert (chained / "submission" / "RTE.tsv").is_file()


def glue_with_sst2_rows_repeated(tmp_path: Path, times: int) -> Path:
    """A copy of the GLUE fixture whose SST-2 training rows are there `times` over."""
    glue_dir = tmp_path / "glue"
    shutil.copytree(GLUE_DIR, glue_dir)
    header, *rows = (GLUE_DIR / "SST-2" / "train.tsv").read_text().splitlines()
    (glue_dir / "SST-2" / "train.tsv").write_text("\n".join([header] + rows * times) + "\n")
    return glue_dir


def test_an_interrupted_fine_tune_resumes_to_the_same_result(tmp_path, tokenizer_path,
                                                             monkeypatch):
    # 25 SST-2 rows (the fixture's 5, five times) in one bucket: 4 batches of 8 per epoch; 2 seeds
    # x 4 epochs = 16 steps each, checkpoints every 2 steps and at each epoch's end, rows every 3
    # steps. A crash at seed 1's 12th step leaves seed 0 finished and seed 1 saved at step 10,
    # inside epoch 3, after its row at step 9.
    glue_dir = glue_with_sst2_rows_repeated(tmp_path, 5)
    extra = (f"glue.data_dir={glue_dir}", "glue.epochs=4", "train.checkpoint_every=2",
             "model.dropout=0.1", "glue.buckets=[64]", "train.log_every=3")
    original, calls = finetune_lib.build_steps, []

    def counting(crash_at):
        def build(*args):
            steps = original(*args)

            def train_step(*a):
                calls.append(1)
                if len(calls) == crash_at:
                    raise KeyboardInterrupt("simulated crash")
                return steps.train_step(*a)

            return dataclasses.replace(steps, train_step=train_step)
        return build

    straight = finetune(sst2_cfg(tmp_path / "straight", tokenizer_path, *extra))
    history = json.loads((straight / "results.json").read_text())["seeds"][0]["history"]
    assert [h["step"] for h in history] == [4, 8, 12, 16]
    monkeypatch.setattr(finetune_lib, "build_steps", counting(crash_at=16 + 12))
    with pytest.raises(KeyboardInterrupt):
        finetune(sst2_cfg(tmp_path / "resumed", tokenizer_path, *extra))
    assert (tmp_path / "resumed" / "seed0" / "result.json").is_file()
    # The unfinished seed's state is for resuming; as a model path it is a one-line error.
    with pytest.raises(UserError, match=r"unfinished GLUE fine-tuning seed.* pass .*seed1/best"):
        load_pretrained(tmp_path / "resumed" / "seed1")
    calls.clear()
    monkeypatch.setattr(finetune_lib, "build_steps", counting(crash_at=0))
    resumed = finetune(sst2_cfg(tmp_path / "resumed", tokenizer_path, *extra))
    assert len(calls) == 16 - 10  # only seed 1's remaining steps ran
    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, resumed))
    assert a["seeds"] == b["seeds"] and a["summary"] == b["summary"]  # exactly
    assert (straight / "submission" / "SST-2.tsv").read_text() == \
        (resumed / "submission" / "SST-2.tsv").read_text()
    assert not list(resumed.glob("seed*/checkpoints"))  # a finished seed keeps no train state
    # The same rows, each holding the same steps: rows come every 3 steps and at each checkpoint
    # and epoch end. Seed 1's rows past step 10, logged before the crash, were dropped; its
    # step 10 is in the row the checkpoint wrote (it was in no row: the killed run's row at
    # step 12 went, and the resumed one's held steps 11 and 12 alone).
    rows = {d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (straight, resumed)}
    logged = {d: [(r["seed"], r["step"], r.get("loss"), r.get("dev_score")) for r in rows[d]]
              for d in rows}
    assert logged[resumed] == logged[straight]
    trained = [step - 16 * seed for seed, step, loss, _ in logged[straight]
               if loss is not None and seed == 1]
    assert trained == [2, 3, 4, 6, 8, 9, 10, 12, 14, 15, 16]
    # `lr` is the rate the step's update used: the peak at the first (no warm-up), not 0 at
    # the last (it was the next update's).
    lrs = {r["step"]: r["lr"] for r in rows[straight] if "lr" in r and r["seed"] == 0}
    assert lrs == {s: pytest.approx(2e-3 * (1 - (s - 1) / 16)) for s in trained}
    assert lrs[16] == pytest.approx(2e-3 / 16)
    # Another config in the same directory starts over instead of mixing runs.
    calls.clear()
    finetune(sst2_cfg(tmp_path / "resumed", tokenizer_path, *extra, "optim.lr=1e-3"))
    assert len(calls) == 2 * 16


def seed1_crashed_after_its_checkpoint(tmp_path, tokenizer_path, monkeypatch) -> tuple:
    """tmp_path/resumed: seeds [0,1] of 8 steps each (SST-2's 25 rows, 2 epochs), seed 1
    crashed at its step 7, after its checkpoint at 6 and its row at 6 (step 14). Returns the
    overrides it ran with (its rows logged into a FakeWandb run: wandb.mode=online)."""
    extra = (f"glue.data_dir={glue_with_sst2_rows_repeated(tmp_path, 5)}", "glue.epochs=2",
             "train.checkpoint_every=2", "glue.buckets=[64]", "train.log_every=3",
             "wandb.mode=online")
    original, calls = finetune_lib.build_steps, []

    def crashing(*args):
        steps = original(*args)

        def train_step(*a):
            calls.append(1)
            if len(calls) == 8 + 7:  # seed 1's 7th step
                raise KeyboardInterrupt("simulated crash")
            return steps.train_step(*a)

        return dataclasses.replace(steps, train_step=train_step)

    monkeypatch.setattr(finetune_lib, "build_steps", crashing)
    with pytest.raises(KeyboardInterrupt):
        finetune(sst2_cfg(tmp_path / "resumed", tokenizer_path, *extra))
    monkeypatch.setattr(finetune_lib, "build_steps", original)
    return extra


def test_a_seed_resumed_at_another_place_in_the_seed_list_keeps_its_rows(tmp_path,
                                                                         tokenizer_path,
                                                                         monkeypatch, fake_wandb,
                                                                         capsys):
    """Seeds [0,1] of 8 steps each, seed 1 crashed after its checkpoint at its step 6, rerun
    with glue.seeds=[1]: its rows went on at step 7 instead of 15 (its place in the new list),
    its rows up to its checkpoint (steps 9-14) were dropped as past it, and wandb, at step 15
    already, took none of the rows after. The log lines count this run's steps: they said
    "step 16/8", the row's step."""
    extra = seed1_crashed_after_its_checkpoint(tmp_path, tokenizer_path, monkeypatch)

    def seed1_rows(run_dir):
        return [(r["step"], r.get("loss"), r.get("dev_score")) for r in map(
            json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["seed"] == 1]

    straight = finetune(sst2_cfg(tmp_path / "straight", tokenizer_path, *extra))
    capsys.readouterr()
    with pytest.warns(UserWarning, match="seed0: not in glue.seeds"):
        resumed = finetune(sst2_cfg(tmp_path / "resumed", tokenizer_path, *extra,
                                    "glue.seeds=[1]"))
    assert seed1_rows(resumed) == seed1_rows(straight)
    shown = re.findall(r"^step (\d+/\d+): seed 1, ", capsys.readouterr().out, re.MULTILINE)
    assert shown == ["8/8"]  # its row at step 16, the one row the rerun wrote for steps 7-8
    crashed, rerun = fake_wandb.inits[0], fake_wandb.inits[2]  # [1]: the straight run's
    assert rerun.id == crashed.id and crashed.logged[-1] == 14
    assert rerun.logged == [s for s, _, _ in seed1_rows(straight) if s > 14]  # 16, 16
    # A seed new to the list goes after every row ([1,2]: seed 2 wrote at 9-16, below seed
    # 1's rows, and wandb took only its 16)
    finetune(sst2_cfg(tmp_path / "resumed", tokenizer_path, *extra, "glue.seeds=[1,2]"))
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 24
    # Seed 2's rows at 18-24 are this run's steps 10-16 (seed 1's 8 came before)
    shown = re.findall(r"^step (\d+)/16: seed 2, ", capsys.readouterr().out, re.MULTILINE)
    assert shown[-1] == "16" and all(8 < int(step) <= 16 for step in shown)
    assert fake_wandb.inits[-1].logged[0] > 16


def test_an_unfinished_seed_resumes_before_a_new_one_listed_before_it(tmp_path, tokenizer_path,
                                                                      monkeypatch, fake_wandb):
    """[0,1] stopped in seed 1, rerun with [2,1]: seed 2 wrote at steps 15-22, after every row
    the file held, then seed 1 went on at 15 and 16 (its rows' place), below them, and wandb
    dropped those rows (FakeWandb refuses them). Seed 1 now finishes first; the results keep
    the list's order."""
    extra = seed1_crashed_after_its_checkpoint(tmp_path, tokenizer_path, monkeypatch)
    with pytest.warns(UserWarning, match="seed0: not in glue.seeds"):
        run_dir = finetune(sst2_cfg(tmp_path / "resumed", tokenizer_path, *extra,
                                    "glue.seeds=[2,1]"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps)
    # seed 1's rows at 16 (steps 7-8, and its epoch), then seed 2's 7 rows (at its steps 2, 3, 4,
    # 6, 8, and its two epochs)
    assert [row["seed"] for row in rows if row["step"] > 14] == [1, 1] + [2] * 7
    assert fake_wandb.inits[-1].logged == [step for step in steps if step > 14]
    results = json.loads((run_dir / "results.json").read_bytes())
    assert [result["seed"] for result in results["seeds"]] == [2, 1]


def test_a_seed_killed_before_its_first_checkpoint_has_each_step_in_one_row(tmp_path,
                                                                            tokenizer_path,
                                                                            monkeypatch):
    # 4 steps an epoch, 8 a seed: seed 1 logged its step 1 (row 9 of 16) and crashed at its
    # step 2, before any checkpoint; the rerun trains it from the start and wrote step 9's row
    # a second time.
    glue_dir = glue_with_sst2_rows_repeated(tmp_path, 5)
    original, calls = finetune_lib.build_steps, []

    def crashing(*args):
        steps = original(*args)

        def train_step(*a):
            calls.append(1)
            if len(calls) == 8 + 2:
                raise KeyboardInterrupt("simulated crash")
            return steps.train_step(*a)

        return dataclasses.replace(steps, train_step=train_step)

    extra = (f"glue.data_dir={glue_dir}", "glue.epochs=2", "glue.buckets=[64]",
             "train.log_every=1", "train.checkpoint_every=0")
    monkeypatch.setattr(finetune_lib, "build_steps", crashing)
    with pytest.raises(KeyboardInterrupt):
        finetune(sst2_cfg(tmp_path, tokenizer_path, *extra))
    monkeypatch.setattr(finetune_lib, "build_steps", original)
    finetune(sst2_cfg(tmp_path, tokenizer_path, *extra))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 17))


def test_a_rerun_keeps_finished_seeds_unless_a_result_deciding_key_changed(
        tmp_path, tokenizer_path, monkeypatch, capsys, fake_wandb):
    original, calls = finetune_lib.build_steps, []

    def counting(*args):
        steps = original(*args)

        def train_step(*a):
            calls.append((tmp_path / "results.json").exists())  # an earlier run's, as it trains
            return steps.train_step(*a)

        return dataclasses.replace(steps, train_step=train_step)

    def run(*extra):
        return finetune(sst2_cfg(tmp_path, tokenizer_path, "glue.epochs=2", "wandb.mode=online",
                                 *extra))

    monkeypatch.setattr(finetune_lib, "build_steps", counting)
    run("glue.seeds=[0]")
    per_seed = len(calls)
    result = tmp_path / "seed0" / "result.json"
    kept = result.read_bytes(), result.stat().st_mtime_ns
    # Logging, checkpoint spacing, wandb and the seed list decide no seed's result; nor does a
    # key added to bertjax since the run (its default computes what the run computed: a key
    # missing from an older bertjax's config.yaml once started every seed over).
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["data"]["whole_word_mask"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    calls.clear()
    run("glue.seeds=[0,1]", "train.log_every=7", "train.checkpoint_every=3",
        "wandb.project=foo")
    assert len(calls) == per_seed  # seed 1 only
    assert (result.read_bytes(), result.stat().st_mtime_ns) == kept
    calls.clear()
    with pytest.warns(UserWarning, match=r"seed0: not in glue.seeds=\[1\], so left out"):
        results = json.loads((run("glue.seeds=[1]") / "results.json").read_text())
    assert not calls and [r["seed"] for r in results["seeds"]] == [1]  # the listed ones
    # A key that decides the result starts over, every seed (listed or not), and says why.
    capsys.readouterr()
    calls.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("glue.seeds=[0]", "optim.lr=1e-3")
    assert not [w for w in caught if "glue.seeds" in str(w.message)]  # seed1 was cleared
    # ... but for its best model, the user's to delete: named, as predict would take it for
    # this run's.
    assert [str(w.message) for w in caught if "best model" in str(w.message)] == [
        f"{tmp_path / 'seed1' / 'best'}: the earlier run's best model, of another config, kept "
        "but no part of this run; delete it (predict or export would take it for this run's)"]
    assert len(calls) == per_seed and result.read_bytes() != kept[0]
    assert not any(calls)  # the earlier seeds' results.json went as the start-over began
    assert "with another config (optim.lr changed): starting over" in capsys.readouterr().out
    assert not (tmp_path / "seed1" / "result.json").exists()
    # The reruns that kept the seeds logged into the first run's wandb run; the start-over not.
    ids = [started.id for started in fake_wandb.inits]
    assert ids[:3] == [ids[0]] * 3 and ids[3] != ids[0]


def test_a_rerun_of_a_run_from_before_per_seed_results_says_it_trains_the_seeds_again(
        tmp_path, tokenizer_path, capsys):
    # bertjax before 2026-12-01 left seedN/best and results.json, no seedN/result.json: today's
    # rerun cannot keep such a seed and trained it again, replacing its best/, without a word.
    one_short_seed = ("glue.seeds=[0]", "glue.epochs=2")  # for what is said, not what is learnt
    finetune(sst2_cfg(tmp_path, tokenizer_path, *one_short_seed))
    (tmp_path / "seed0" / "result.json").unlink()  # as the older bertjax left it
    capsys.readouterr()
    finetune(sst2_cfg(tmp_path, tokenizer_path, *one_short_seed))
    out = capsys.readouterr().out
    assert f"{tmp_path}: seed(s) [0] hold a best/ model but no result.json or checkpoint (a " \
           "bertjax before 2026-12-01 kept no per-seed results): training them again, which " \
           "replaces their best/" in out
    assert "seed 0: done before" not in out and (tmp_path / "seed0" / "result.json").is_file()
    # With a result-deciding change, starting over is said too (such a seed was not counted as
    # an earlier run's: nothing was said).
    (tmp_path / "seed0" / "result.json").unlink()
    finetune(sst2_cfg(tmp_path, tokenizer_path, *one_short_seed, "optim.lr=1e-3"))
    assert "with another config (optim.lr changed): starting over" in capsys.readouterr().out


def test_sigterm_saves_the_seed_and_the_rerun_finishes_it_alike(tmp_path, tokenizer_path):
    # A preempted machine gets SIGTERM: the run saves where it is and exits 143 (128 + SIGTERM:
    # not finished); the same command
    # then finishes with the results of an uninterrupted run. The signal comes at the first
    # metrics row (step 1); each epoch is a step, a dev evaluation and a checkpoint, so 20 epochs
    # leave seconds of run for it to land in (60 did the same three times over, twice).
    extra = ("glue.epochs=20", "glue.seeds=[0]", "train.checkpoint_every=0", "train.log_every=1")
    cfg = sst2_cfg(tmp_path / "straight", tokenizer_path, *extra)
    straight = json.loads((finetune(cfg) / "results.json").read_text())
    cmd = [sys.executable, "-m", "bertjax.train", str(ROOT / "configs" / "sst2.yaml"),
           *sst2_overrides(tmp_path / "run", tokenizer_path, *extra)]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "run" / "metrics.jsonl").is_file() or \
            not (tmp_path / "run" / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "SIGTERM: saved seed 0 at step" in out, out
    assert "Traceback" not in out
    assert not (tmp_path / "run" / "results.json").exists()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "seed 0: resumed at step" in done.stderr + done.stdout, \
        done.stderr[-2000:]
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert resumed["seeds"] == straight["seeds"]


def test_mean_pooled_classifier_trains_saves_and_predicts(tmp_path, tokenizer_path):
    cfg = sst2_cfg(tmp_path, tokenizer_path, "glue.pooling=mean", "glue.seeds=[0]")
    run_dir = finetune(cfg)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["seeds"][0]["best_metrics"]["dev"]["accuracy"] == 1.0  # memorised
    best = load_pretrained(run_dir / "seed0" / "best")
    assert best.model.pooling == "mean"
    train = glue.load_split(cfg.glue, "train")
    probs = classify(best.model, tokenizer_lib.load(best.tokenizer_path), train.text_a)
    np.testing.assert_array_equal(probs.argmax(-1), train.labels)


def test_two_processes_fine_tune_like_one(tmp_path, tokenizer_path):
    # The CLI as two jax.distributed processes (2 CPU devices each, parameters split across
    # them: FSDP) against one process on 4 devices: same batches, so the same run. One bucket,
    # so that both processes' halves of a batch hold real rows. The two run it as a one-rate
    # learning-rate sweep (optim.lr's own value), which must train what a plain fine-tune does.
    # Each run is given a compilation cache of its own: several processes on CPU compile afresh
    # (a step read from the cache deadlocked under jaxlib 0.12.1), one process uses it.
    def launch(run_dir, processes, *extra):
        port, devices = free_port(), 4 // processes
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_COMPILATION_CACHE_DIR=str(run_dir.with_name(f"{run_dir.name}-xla")),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        dist = ["mesh.num_processes=2", f"mesh.coordinator_address=127.0.0.1:{port}"]
        return [subprocess.Popen(
            [sys.executable, "-m", "bertjax.train", str(ROOT / "configs" / "sst2.yaml"),
             *sst2_overrides(run_dir, tokenizer_path, "glue.epochs=3", "glue.buckets=[64]",
                             *extra),
             *(dist + [f"mesh.process_id={i}"] if processes > 1 else [])],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(processes)]

    procs = launch(tmp_path / "two", 2, "mesh.strategy=fsdp", "mesh.fsdp_min_size=64",
                   "glue.learning_rates=[2e-3]") + launch(tmp_path / "one", 1)
    outs = [out for out, _ in communicate_all(procs, 600)]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert not list((tmp_path / "two-xla").glob("*")) and list((tmp_path / "one-xla").glob("*"))
    assert json.loads((tmp_path / "two" / "sweep.json").read_text())["best"]["lr"] == 2e-3
    dirs = {"two": tmp_path / "two" / "lr0.002", "one": tmp_path / "one"}
    two, one = (json.loads((dirs[d] / "results.json").read_text()) for d in ("two", "one"))
    for a, b in zip(two["seeds"], one["seeds"], strict=True):
        np.testing.assert_allclose([h["train_loss"] for h in a["history"]],
                                   [h["train_loss"] for h in b["history"]], rtol=1e-4)
        assert a["best_epoch"] == b["best_epoch"]
        mine, theirs = (load_pretrained(dirs[d] / f"seed{a['seed']}" / "best").model
                        for d in ("two", "one"))
        for x, y in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)
    assert two["submissions"] and (dirs["two"] / "submission" / "SST-2.tsv").read_text() \
        == (dirs["one"] / "submission" / "SST-2.tsv").read_text()


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(tmp_path,
                                                                      tokenizer_path):
    port = free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bertjax.train", str(ROOT / "configs" / "sst2.yaml"),
         *sst2_overrides(tmp_path, tokenizer_path, "glue.epochs=60", "glue.seeds=[0]",
                         "train.log_every=1"), "mesh.num_processes=2",
         f"mesh.coordinator_address=127.0.0.1:{port}", f"mesh.process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").is_file() or \
            not (tmp_path / "metrics.jsonl").read_text():
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # the process that writes nothing
    outs = [out for out, _ in communicate_all(procs)]
    assert all(p.returncode == 128 + signal.SIGTERM for p in procs), \
        "\n".join(o[-2000:] for o in outs)
    assert "a signal to another process: saved seed 0 at step" in outs[0], outs[0][-2000:]
    assert (tmp_path / "seed0" / "checkpoints").is_dir()
    assert not (tmp_path / "results.json").exists()


def test_processes_with_different_glue_files_are_refused(tmp_path, tokenizer_path):
    port = free_port()
    other = tmp_path / "glue"
    shutil.copytree(GLUE_DIR, other)
    rows = (other / "SST-2" / "train.tsv").read_text().splitlines()
    (other / "SST-2" / "train.tsv").write_text("\n".join(rows[:-1]) + "\n")  # one row fewer
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bertjax.train", str(ROOT / "configs" / "sst2.yaml"),
         *sst2_overrides(tmp_path / "run", tokenizer_path), "mesh.num_processes=2",
         f"mesh.coordinator_address=127.0.0.1:{port}", f"mesh.process_id={i}",
         *([f"glue.data_dir={other}"] if i else [])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    for proc in procs:
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 2, out
        assert "different GLUE data" in out and "Traceback" not in out, out
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_fine_tune_compiles_its_steps_with_the_runs_xla_options(tmp_path, tokenizer_path,
                                                                    monkeypatch):
    # What compiler_options makes of train.xla_flags reaches the GLUE steps' compile: an option
    # XLA does not know (given past the check) fails it.
    monkeypatch.setattr(seed_run, "compiler_options", lambda flags: (("xla_no_such_option", "1"),))
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        finetune(sst2_cfg(tmp_path, tokenizer_path, "glue.seeds=[0]"))


def test_a_fine_tune_says_which_model_keys_its_checkpoint_replaces(tmp_path):
    # The checkpoint decides the architecture: model.gelu=tanh (for cuBLAS's GELU epilogue) was
    # dropped without a word, config.yaml then saying exact. Keys at their defaults, and those
    # a fine-tune takes from its config (dropout), are nothing to say.
    from bertjax.starting_points import load_start

    d = tmp_path / "mlm"
    shutil.copytree(ROOT / "tests/fixtures/hf_tiny/mlm", d)
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(94))]
    (d / "vocab.txt").write_text("".join(f"{p}\n" for p in pieces))  # its 99 rows' tokenizer
    sst2, start = [ROOT / "configs" / "sst2.yaml"], [f"init.checkpoint={d}", "model.dropout=0.3"]
    with pytest.warns(UserWarning, match=r"^model.layer_norm_eps=1e-05, model.gelu=tanh not used: "
                                         rf"init.checkpoint={d} decides the architecture \(its "
                                         r"model.layer_norm_eps=1e-12, model.gelu=exact\); drop"):
        model_cfg = load_start(config.load(sst2, [*start, "model.gelu=tanh",
                                                  "model.layer_norm_eps=1e-5"]))[1]
    assert model_cfg.gelu == "exact"
    with pytest.warns(UserWarning, match=r"^model.size=mini, model.num_layers=4, model.hidden_size="
                                         r"256, model.intermediate_size=1024 not used"):
        load_start(config.load(sst2, [*start, "model.size=mini"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_start(config.load(sst2, start))


def test_float16_fine_tuning_trains_under_a_dynamic_loss_scale(tmp_path, tokenizer_path):
    # fp16 (GPUs without bf16, e.g. T4/V100) needs a loss scale; it doubles every 4 finite steps.
    cfg = sst2_cfg(tmp_path, tokenizer_path, "precision.compute=float16", "glue.seeds=[0]",
                   "precision.loss_scale=1024", "precision.loss_scale_period=4",
                   "train.log_every=1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = json.loads((finetune(cfg) / "results.json").read_text())
    # the scale's own overflows (1 step of 2 now and then) are no trouble to warn of
    assert not [w for w in caught if "steps skipped" in str(w.message)]
    assert results["seeds"][0]["best_metrics"]["dev"]["accuracy"] == 1.0  # memorised
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scales = [r["loss_scale"] for r in rows if "loss_scale" in r]
    assert scales[:8] == [1024.0] * 3 + [2048.0] * 4 + [4096.0]


def test_steps_skipped_for_non_finite_gradients_are_counted_and_warned_of(tmp_path,
                                                                         tokenizer_path):
    """An fp16 loss scale of 1e38 overflows every step, so none is applied; the run used to end
    with a dev score and exit 0 as if it had trained, and nothing counted the skipped steps."""
    cfg = sst2_cfg(tmp_path, tokenizer_path, "precision.compute=float16", "glue.seeds=[0]",
                   "precision.loss_scale=1e38", "glue.epochs=1", "train.log_every=1")
    with pytest.warns(UserWarning, match=r"sst2 seed 0 epoch 1: (\d+) of \1 steps skipped \(it did "
                                         r"not train at all\): .*lower precision\.loss_scale"):
        run_dir = finetune(cfg)
    history = json.loads((run_dir / "results.json").read_text())["seeds"][0]["history"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert history[0]["skipped_steps"] == history[0]["step"] == len(steps) > 0
    assert all(r["skipped"] == 1 for r in steps)


def fake_clock(monkeypatch) -> list[float]:
    """The Monitor's perf_counter, plus the seconds added to the list's one item (a slow
    evaluation, without the wait)."""
    extra = [0.0]
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(
        perf_counter=lambda: time.perf_counter() + extra[0], time=time.time))
    return extra


def test_tok_s_counts_the_steps_alone_not_evaluations_or_another_seeds_tokens(
        tmp_path, tokenizer_path, monkeypatch):
    """A row's tok/s counted the epoch's evaluation before it (25 tok/s beside 7,000), and each
    seed's tokens from 0 against the last seed's total: its first row's rate was negative; and
    the compilation of each bucket's step after the first."""
    extra = fake_clock(monkeypatch)
    shapes = set()

    def slow_evaluate(*args):
        extra[0] += 1000.0
        return glue_eval.evaluate(*args)

    def slow_new_shapes(*args):
        train_step, predict = make_glue_steps(*args)

        def step(inputs, state):
            shape = inputs[0]["input_ids"].shape
            if shapes and shape not in shapes:  # compiles this bucket's step
                extra[0] += 1000.0
            shapes.add(shape)
            extra[0] += 1.0  # the step itself, run inside the call (as on a CPU)
            return train_step(inputs, state)

        return step, predict

    monkeypatch.setattr(seed_run, "evaluate", slow_evaluate)
    monkeypatch.setattr(seed_run, "make_glue_steps", slow_new_shapes)
    finetune(sst2_cfg(tmp_path, tokenizer_path, "glue.epochs=3", "train.log_every=1"))
    assert len(shapes) > 1  # the buckets' shapes
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [(r["seed"], r["step"], r["tokens_per_s"]) for r in rows if "tokens_per_s" in r]
    assert {seed for seed, _, _ in rates} == {0, 1}
    # Not the first row (it holds compiling), nor a row of only a step that compiled a bucket
    assert len(rates) == sum("loss" in r for r in rows) - len(shapes)
    assert all(rate > 1.0 for _, _, rate in rates), rates  # a 1,000 s window: < 1 tok/s
    # A step takes 1 s or more, of 8 rows of 64 tokens at most: a window that held the tokens of
    # the step that compiled, not its second, read 1e5 tok/s and more
    assert all(rate <= 8 * 64 for _, _, rate in rates), rates


def test_the_logged_rate_is_the_one_the_update_used_after_skipped_steps(tmp_path,
                                                                       tokenizer_path,
                                                                       monkeypatch):
    """float16's first steps overflow (skipped: no update, the schedule's count stays); the
    rows logged the rate of the step's number, 13 steps ahead of the one applied."""
    used = []

    def recording(*args):
        train_step, predict = make_glue_steps(*args)

        def step(inputs, state):
            count, = [s.count for s in jax.tree.leaves(
                state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
                if isinstance(s, optax.ScaleByScheduleState)]
            used.append(float(learning_rate("linear", count, inputs[2])))
            return train_step(inputs, state)

        return step, predict

    monkeypatch.setattr(seed_run, "make_glue_steps", recording)
    finetune(sst2_cfg(tmp_path, tokenizer_path, "precision.compute=float16", "glue.seeds=[0]",
                      "precision.loss_scale=1e9", "glue.epochs=6", "optim.warmup=0.5",
                      "train.log_every=1"))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert sum(r["skipped"] for r in steps) > 5  # the scale halved from 1e9 for a while
    assert [r["lr"] for r in steps] == pytest.approx(used, rel=1e-6, abs=1e-12)


def test_each_row_holds_every_step_since_the_row_before(tmp_path, tokenizer_path, monkeypatch):
    """An epoch's end (and a checkpoint) folded the steps not yet logged into the epoch's sums:
    the next row's loss and skipped count held only the steps after it (log_every=2 over
    3-step epochs: rows counted 11 of 13 skipped steps). Both now write those steps' row."""
    outputs = []

    def recording(*args):
        train_step, predict = make_glue_steps(*args)

        def step(inputs, state):
            state, sums = train_step(inputs, state)
            outputs.append({k: float(sums[k]) for k in ("loss", "weight", "finite")})
            return state, sums

        return step, predict

    monkeypatch.setattr(seed_run, "make_glue_steps", recording)
    glue_dir = tmp_path / "glue"  # the fixture's rows 4 times: 3 batches of 8 an epoch
    (glue_dir / "SST-2").mkdir(parents=True)
    header, *lines = (GLUE_DIR / "SST-2" / "train.tsv").read_text().splitlines(keepends=True)
    (glue_dir / "SST-2" / "train.tsv").write_text(header + "".join(lines * 4))
    finetune(sst2_cfg(tmp_path / "run", tokenizer_path, f"glue.data_dir={glue_dir}",
                      "precision.compute=float16", "glue.seeds=[0]", "precision.loss_scale=1e7",
                      "glue.epochs=4", "train.log_every=2", "train.checkpoint_every=5"))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    # Every 2 steps, and at each checkpoint (5, 10) and epoch end (3, 6, 9, 12) after an unlogged
    # step: every step is in one row.
    assert [r["step"] for r in steps] == [2, 3, 4, 5, 6, 8, 9, 10, 12] and len(outputs) == 12
    for before, row in zip([0, *(r["step"] for r in steps)], steps, strict=False):
        held = outputs[before:row["step"]]
        assert row["loss"] == pytest.approx(sum(s["loss"] for s in held) /
                                            sum(s["weight"] for s in held), rel=1e-6)
        assert row["skipped"] == sum(s["finite"] == 0.0 for s in held)
    assert 0 < sum(r["skipped"] for r in steps) < len(outputs)


def test_a_diverged_fine_tune_writes_strict_json_and_no_nan_submission(tmp_path, tokenizer_path):
    """optim.lr=1e30 makes the weights, then every logit, NaN. results.json held the bare word
    NaN (no JSON reader but Python's takes it) and submission/SST-2.tsv predicted class 0 for
    every row (argmax of NaN); STS-B's held rows of `nan`."""
    cfg = sst2_cfg(tmp_path, tokenizer_path, "optim.lr=1e30", "glue.seeds=[0]", "glue.epochs=2")
    with pytest.warns(UserWarning) as caught:
        run_dir = finetune(cfg)
    said = "\n".join(str(w.message) for w in caught)
    assert re.search(r"sst2 test: the best model's predictions are not finite .* no submission "
                     "file was written", said)
    assert re.search(r"sst2 seed 0 epoch 1: 1 of 2 steps skipped: .*lower optim\.lr", said)
    assert re.search(r"sst2 seed 0 epoch 2: 2 of 2 steps skipped \(it did not train at all\)",
                     said)
    for path in (run_dir / "results.json", run_dir / "seed0" / "result.json"):
        text = path.read_text()
        assert "NaN" not in text and "Infinity" not in text and "null" in text  # the loss
    assert not (run_dir / "submission" / "SST-2.tsv").exists()
    assert json.loads((run_dir / "results.json").read_text())["submissions"] == []


def test_random_baseline_draws_a_new_encoder_per_seed(tmp_path, tokenizer_path):
    cfg = sst2_cfg(tmp_path, tokenizer_path, "model.vocab_size=400")
    first, second = (initial_model(s, None, cfg) for s in (0, 1))
    assert not np.array_equal(jax.tree.leaves(first.encoder)[0],
                              jax.tree.leaves(second.encoder)[0])
    kept = initial_model(1, first, cfg)  # a checkpoint's encoder is kept as is
    for a, b in zip(jax.tree.leaves(kept.encoder), jax.tree.leaves(first.encoder), strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_compiles_once_per_bucket(tokenizer_path, monkeypatch):
    cfg = config.load([], [f"glue.data_dir={GLUE_DIR}", "glue.task=rte",
                           "model.vocab_size=400", "model.dropout=0.0"])
    tok = tokenizer_lib.load(tokenizer_path)
    examples = glue.load_split(cfg.glue, "train")
    enc = glue_batches.encode(tok, examples, [16, 32, 64, 128])
    model = Bert(cfg.model, key=jax.random.key(0), mlm=False, num_labels=2)
    optimizer = optax.adam(1e-3)
    state = init_state(model, optimizer, cfg.precision)
    train_step, _ = make_glue_steps(optimizer, Precision(), dropout=False)
    schedule = schedule_args(cfg.optim, 10)
    traces = count_calls(monkeypatch, step_lib, "classification_sums")
    shapes = set()
    for epoch in range(3):
        for batch in glue_batches.iter_batches(enc, 2, seed=0, epoch=epoch):
            shapes.add(batch["input_ids"].shape)
            batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "example_index"}
            state, _ = train_step((batch, jax.random.key(epoch), schedule), state)
    assert len(traces) == len(shapes) <= 4


def test_fill_mask_finds_the_word_an_overfit_model_learnt(tokenizer_path):
    tok = tokenizer_lib.load(tokenizer_path)
    cfg = config.load([], ["model.vocab_size=400", "model.dropout=0.0",
                           "model.attention_dropout=0.0"]).model
    model = Bert(cfg, key=jax.random.key(0))
    enc = tok.encode("the film is a story about the people in it .")
    ids = jnp.asarray([enc.ids], jnp.int32)
    # The masked word: the longest whole-word token of the sentence that is in the vocabulary.
    target = max((i for i, t in enumerate(enc.tokens) if t.isalpha() and t != "[UNK]"),
                 key=lambda i: len(enc.tokens[i]))
    word = enc.tokens[target]
    masked = ids.at[0, target].set(tok.token_to_id("[MASK]"))
    mask = jnp.ones(ids.shape, bool)
    optimizer = optax.adam(3e-3)
    state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(m, s):
        def loss(m):
            logits = m.mlm_logits(m(masked, jnp.zeros_like(ids), mask))
            return optax.softmax_cross_entropy_with_integer_labels(logits[0, target],
                                                                   ids[0, target])
        g = eqx.filter_grad(loss)(m)
        with jax.numpy_dtype_promotion("standard"):
            updates, s = optimizer.update(g, s)
        return eqx.apply_updates(m, updates), s

    for _ in range(60):
        model, state = step(model, state)
    text = " ".join("[MASK]" if i == target else t for i, t in enumerate(enc.tokens[1:-1], 1))
    [[top]] = fill_mask(model, tok, [text], top_k=3)
    assert len(word) > 2 and top[0][0] == word and top[0][1] > 0.5


def test_bad_inputs_are_one_line_errors(tmp_path, tokenizer_path):
    with pytest.raises(UserError, match="SST-2"):
        finetune(sst2_cfg(tmp_path, tokenizer_path, f"glue.data_dir={tmp_path}"))
    with pytest.raises(UserError, match="cola"):
        finetune(sst2_cfg(tmp_path, tokenizer_path, "glue.task=colaa"))
    with pytest.raises(UserError, match=r"go up to 64 tokens but the model has 32 positions"):
        finetune(sst2_cfg(tmp_path, tokenizer_path, "model.max_position_embeddings=32"))
    # The front door without a checkpoint, where no tokenizer exists: name both ways out.
    with pytest.raises(UserError, match="no init.checkpoint given .* tokenizer.path="):
        finetune(sst2_cfg(tmp_path, tokenizer_path, "tokenizer.path=null",
                          f"data.dir={tmp_path / 'nothing'}"))
    with pytest.raises(UserError, match="do not belong together"):
        finetune(sst2_cfg(tmp_path, tokenizer_path,
                          f"init.checkpoint={ROOT / 'tests/fixtures/hf_tiny/mlm'}"))


def test_cli_errors_exit_2_with_one_line(tmp_path):
    cases = [
        [sys.executable, "-m", "bertjax.train", "configs/mnli.yaml", f"glue.data_dir={tmp_path}",
         f"init.checkpoint={tmp_path / 'missing'}"],
        [sys.executable, "-m", "bertjax.predict", "classify",
         str(ROOT / "tests/fixtures/hf_tiny/mlm"), "some text"],
    ]
    for cmd in cases:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr


def test_a_damaged_finished_seed_names_the_file_and_keeps_the_run(tmp_path, tokenizer_path):
    # A rerun reads back what finished seeds left: result.json, and the best seed's bundle.
    cfg = sst2_cfg(tmp_path, tokenizer_path, "glue.epochs=1", "glue.seeds=[0]")
    seed_dir = finetune(cfg) / "seed0"
    kept = {name: (tmp_path / name).read_bytes() for name in ("metrics.jsonl", "results.json")}
    damages = [(seed_dir / "result.json", '{"seed": 0, "best', r"not valid JSON"),
               (seed_dir / "result.json", "[1]", "no numeric best_score and best_metrics"),
               (seed_dir / "best" / "manifest.json", None, "missing, or written only in part")]
    for path, text, problem in damages:
        good = path.read_bytes()
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
        with pytest.raises(UserError, match=rf"^{path.parent if text is None else path} is "
                                            rf"damaged \({problem}.*\); delete {seed_dir} to "
                                            "train that seed again"):
            finetune(cfg)
        path.write_bytes(good)
        assert {name: (tmp_path / name).read_bytes() for name in kept} == kept
    assert finetune(cfg) == tmp_path  # repaired: reads the seed back, trains nothing


def test_a_rerun_on_changed_inputs_is_refused_and_keeps_the_run(tmp_path, tokenizer_path):
    # The same config on other inputs said "seed 0: done before" and reported the old scores:
    # a GLUE file edited in place, or a run at init.checkpoint trained further.
    from bertjax.seed_run import check_same_inputs, input_digests

    shutil.copytree(GLUE_DIR / "SST-2", tmp_path / "glue" / "SST-2")
    run_dir = tmp_path / "run"
    cfg = sst2_cfg(run_dir, tokenizer_path, "glue.epochs=1", "glue.seeds=[0]",
                   f"glue.data_dir={tmp_path / 'glue'}")
    finetune(cfg)
    files = lambda: {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    train = tmp_path / "glue" / "SST-2" / "train.tsv"
    train.write_text(train.read_text().replace("\t0\n", "\t1\n", 1))  # one label corrected
    with pytest.raises(UserError, match=rf"^{run_dir} holds seeds fine-tuned on other inputs: the "
                                        "GLUE data or the tokenizer changed since, .*set train."
                                        "run_dir to a new directory, or train.resume=never"):
        finetune(cfg)
    assert files() == before
    # The encoder's weights count too (in-process: the digests of two start models).
    tok = tokenizer_lib.load(tokenizer_path)
    enc = glue_batches.encode(tok, glue.load_split(cfg.glue, "train"), cfg.glue.buckets)
    digests = [input_digests(Bert(dataclasses.replace(cfg.model, vocab_size=400),
                                  key=jax.random.key(key)), tok, enc, {}) for key in (0, 1)]
    (run_dir / "inputs.json").write_text(json.dumps(digests[0]))
    check_same_inputs(run_dir, "runs/enc", digests[0])
    with pytest.raises(UserError, match=r"other inputs: the weights at init.checkpoint=runs/enc "
                                        r"changed since, so"):
        check_same_inputs(run_dir, "runs/enc", digests[1])


def test_a_refused_wandb_start_leaves_the_run_directory_as_it_was(tmp_path, tokenizer_path,
                                                                  no_wandb_key):
    # wandb.mode=online without an API key is refused; it used to be refused only after
    # config.yaml was rewritten and a result-deciding change had cleared the finished seeds.
    run_dir = tmp_path / "run"
    finetune(sst2_cfg(run_dir, tokenizer_path, "glue.epochs=1", "glue.seeds=[0]"))
    before = {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
              if p.is_file() and p.name != ".lock"}
    # (through the CLI: the real wandb starts only in subprocesses, see conftest)
    out = subprocess.run([sys.executable, "-m", "bertjax.train", str(ROOT / "configs/sst2.yaml"),
                          *sst2_overrides(run_dir, tokenizer_path, "glue.epochs=2",
                                          "glue.seeds=[0]", "wandb.mode=online")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and \
        out.stderr.startswith("error: wandb.mode=online: wandb did not start"), out.stderr
    assert {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"} == before


def test_a_rerun_warns_of_an_earlier_runs_submission_and_unlisted_seeds(tmp_path, tokenizer_path):
    # Both are kept (they may be all that is left of an earlier model), and named in one line
    # each: a stale SST-2.tsv could be uploaded as this run's predictions.
    glue_dir = tmp_path / "glue"
    shutil.copytree(GLUE_DIR, glue_dir)
    run_dir = tmp_path / "run"
    finetune(sst2_cfg(run_dir, tokenizer_path, "glue.epochs=1", f"glue.data_dir={glue_dir}"))
    (glue_dir / "SST-2" / "test.tsv").unlink()
    with pytest.warns(UserWarning) as caught:
        finetune(sst2_cfg(run_dir, tokenizer_path, "glue.epochs=1", f"glue.data_dir={glue_dir}",
                          "glue.seeds=[0]"))
    messages = [str(w.message) for w in caught]
    assert f"{run_dir}/seed1: not in glue.seeds=[0], so left out of results.json (kept); " \
           "delete them, or list their seeds again" in messages
    assert f"{run_dir}/submission/SST-2.tsv was not written by this run (no sst2 test split " \
           f"in {glue_dir}): it holds an earlier run's predictions, maybe of another model; " \
           "delete it, or give the test file and run again" in messages
    assert (run_dir / "seed1" / "best").is_dir()
    assert (run_dir / "submission" / "SST-2.tsv").is_file()
    assert json.loads((run_dir / "results.json").read_text())["submissions"] == []


def test_config_change_reads_the_earlier_config_through_todays_schema(tmp_path, tokenizer_path):
    cfg = sst2_cfg(tmp_path, tokenizer_path)
    now = config.to_yaml(cfg)
    saved = tmp_path / "config.yaml"
    assert finetune_lib.config_change(saved, now) == "its config.yaml is missing or unreadable"
    for damaged in (b"\xff\xfe not utf-8", b"model: [unclosed", b"- a list"):
        saved.write_bytes(damaged)
        assert finetune_lib.config_change(saved, now) == "its config.yaml is missing or unreadable"
    older = yaml.safe_load(now)
    del older["data"]["whole_word_mask"]  # written before the key existed
    older["precision"]["param"] = "float32"  # a retired key, dropped on reading
    saved.write_text(yaml.safe_dump(older))
    assert finetune_lib.config_change(saved, now) is None
    # Keys a fine-tune never reads decide nothing: a config.yaml saved before 2026-12-01 said
    # the pretraining schedule (fine-tuning decayed linearly to 0 all the same), and a rerun
    # started its finished seeds over "(optim.final_lr_fraction, optim.schedule changed)".
    older["optim"].update(schedule="one_cycle", final_lr_fraction=0.01)
    older["train"]["steps"] = 12345
    saved.write_text(yaml.safe_dump(older))
    assert finetune_lib.config_change(saved, now) is None
    older["optim"]["lr"] = 0.5
    saved.write_text(yaml.safe_dump(older))
    assert finetune_lib.config_change(saved, now) == "optim.lr changed"


def test_a_fine_tune_runs_the_encoder_as_its_config_says(tmp_path, tokenizer_path, monkeypatch):
    """model.attention is how the encoder runs, as scan_layers and remat are, not what it is: a
    fine-tune took the checkpoint's, so a model pretrained with cuDNN attention could not be
    fine-tuned on XLA's. The schedule keys a fine-tune replaces are warned of when given."""
    from bertjax import train as train_lib

    cfg = sst2_cfg(tmp_path, tokenizer_path, "model.attention=xla", "model.remat=true")
    pretrained = dataclasses.replace(cfg.model, attention="cudnn", remat=False)
    tok = tokenizer_lib.load(tokenizer_path)
    monkeypatch.setattr(finetune_lib, "load_start", lambda c: (None, pretrained, tok))
    resolved, _, _ = finetune_lib.resolve(cfg)
    assert (resolved.model.attention, resolved.model.remat) == ("xla", True)
    assert (resolved.optim.schedule, resolved.optim.final_lr_fraction) == ("linear", 0.0)
    for key in ("optim.schedule", "optim.final_lr_fraction", "train.max_nonfinite",
                "train.fill_mask"):
        with pytest.warns(UserWarning, match=rf"^{key} applies to pretraining only and is "
                                             "ignored by GLUE fine-tuning; it reads nothing: "):
            train_lib.warn_pretraining_overrides([f"{key}=1"])


def test_bfloat16_fine_tuning_on_a_gpu_without_bfloat16_tensor_cores_is_said(
        tmp_path, tokenizer_path, monkeypatch):
    cfg = sst2_cfg(tmp_path, tokenizer_path, "precision.compute=bfloat16")
    monkeypatch.setattr(finetune_lib, "load_start", lambda c: (
        None, cfg.model, tokenizer_lib.load(tokenizer_path)))
    monkeypatch.setattr(jax, "devices", lambda *a: [fake_gpu("Tesla V100-SXM2-16GB", "7.0")])
    with pytest.warns(UserWarning, match=r"^precision.compute=bfloat16 on Tesla V100-SXM2-16GB "
                                         r"\(compute capability 7.0\)"):
        finetune_lib.resolve(cfg)


def executions(ops: list[dict]) -> dict[str, int]:
    """How many times each of the fine-tune's programs ran in a trace (its ops' run ids)."""
    runs = {(op["args"].get("hlo_module"), op["args"].get("run_id")) for op in ops}
    return dict(sorted(Counter(module for module, _ in runs
                               if module in ("jit_train_step", "jit_predict")).items()))


def test_train_profile_traces_the_first_seeds_steps_with_its_evaluation(tmp_path, tokenizer_path,
                                                                       capsys):
    """A fine-tune's steps (and the epoch ends falling in the window: evaluation, save) traced,
    once: the next seed runs untraced. A window the seed ends before is cut at its end, not
    left running through the next seed. (2 steps an epoch: the 5 rows fill two buckets; an
    evaluation runs predict once a bucket.)"""
    finetune(sst2_cfg(tmp_path, tokenizer_path, "glue.epochs=3", "train.profile=[2,3]"))
    out = capsys.readouterr().out
    assert re.search(r"^sst2: 5 training examples .* 1 process\(es\), 8 device\(s\) \(cpu\)$",
                     out, re.M), out  # which device a log is of
    said = re.findall(r"^profile: steps (.*) traced to (\S+);", out, re.M)
    assert said == [("2-3", said[0][1])] and said[0][1].startswith(f"{tmp_path}/profile/"), said
    assert executions(trace_events(tmp_path)) == {"jit_train_step": 2, "jit_predict": 2}
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["epoch"]) for r in rows if "dev_score" in r] == [
        (seed, epoch) for seed in (0, 1) for epoch in (1, 2, 3)]  # training went on alike
    with pytest.warns(UserWarning, match=r"^train.profile=\[2, 3\] lies before step 7, where "
                                         r"every seed resumes \(or is done\): nothing will"):
        finetune(sst2_cfg(tmp_path, tokenizer_path, "glue.epochs=3", "train.profile=[2,3]"))

    run_dir = tmp_path / "cut"
    finetune(sst2_cfg(run_dir, tokenizer_path, "glue.epochs=3", "train.profile=[5,9]"))
    out = capsys.readouterr().out
    assert re.search(r"^profile: steps 5-6 traced to \S+ \(the loop stopped before "
                     r"train.profile's last step\); ", out, re.M), out
    # stopped at seed 0's end (6 steps): seed 1's steps and evaluations are not in it
    assert executions(trace_events(run_dir)) == {"jit_train_step": 2, "jit_predict": 2}
    with pytest.warns(UserWarning, match=r"^train.profile=\[7, 9\] starts after a seed's last "
                                         r"step \(6\): nothing will be traced"):
        finetune_lib.setup(sst2_cfg(tmp_path / "late", tokenizer_path, "glue.epochs=3",
                                    "train.profile=[7,9]"))


def test_a_constant_schedule_asked_of_fine_tuning_is_said_to_be_replaced():
    import warnings

    from bertjax import train as train_lib

    with pytest.warns(UserWarning, match="optim.schedule=constant does not apply to GLUE"):
        cfg = finetune_lib.with_glue_schedule(config.load([], ["optim.schedule=constant"]))
    assert (cfg.optim.schedule, cfg.optim.final_lr_fraction) == ("linear", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (one_cycle, pretraining's): nothing to say
        finetune_lib.with_glue_schedule(config.load([], []))
        # Said once, not again as a pretraining-only override (a command line gave both).
        train_lib.warn_pretraining_overrides(["optim.schedule = constant"])


def test_a_learning_rate_sweep_runs_a_fine_tune_per_rate_and_names_the_best(
        tmp_path, tokenizer_path, capsys):
    """glue.learning_rates (BERT's protocol): a plain fine-tune per rate in lr<rate>/ and
    sweep.json; a rerun keeps finished rates and trains an added one only."""
    from bertjax import export, plot
    from bertjax import train as train_lib

    def sweep_args(run_dir, rates):  # optim.lr left out: said to be replaced (below)
        return [str(ROOT / "configs" / "sst2.yaml"), *(
            o for o in sst2_overrides(run_dir, tokenizer_path, "glue.epochs=3",
                                      "glue.seeds=[0,1]", f"glue.learning_rates={rates}")
            if not o.startswith("optim.lr="))]

    def run(rates):
        with pytest.warns(UserWarning, match="SST-2.tsv holds 3 predictions"):
            train_lib.main(sweep_args(tmp_path, rates))
        return json.loads((tmp_path / "sweep.json").read_text()), capsys.readouterr().out

    report, out = run("[1e-9,2e-3]")
    assert [r["lr"] for r in report["rates"]] == [1e-9, 2e-3]
    for r, folder in zip(report["rates"], ("lr1e-09", "lr0.002"), strict=True):
        saved = yaml.safe_load((tmp_path / folder / "config.yaml").read_text())
        assert (saved["optim"]["lr"], saved["glue"]["learning_rates"]) == (r["lr"], [])
        results = json.loads((tmp_path / folder / "results.json").read_text())
        assert r["main_score"] == results["summary"]["main_score"]
        assert r["run_dir"] == str(tmp_path / folder)
        assert re.search(rf"lr {r['lr']:g}: median {r['main_score']['median']:.4f}, ", out)
    best = max(report["rates"], key=lambda r: r["main_score"]["median"])  # the rule: next test
    assert report["best"] == {k: best[k] for k in ("lr", "run_dir", "best_model", "submissions")}
    assert best["submissions"] == [str(Path(best["run_dir"]) / "submission" / "SST-2.tsv")]
    assert re.search(rf"lr {best['lr']:g}: median .*<- best: {best['run_dir']}/seed\d/best\n",
                     out)
    # An added rate trains alone: the others' seeds are kept (their configs hold no sweep).
    kept = (tmp_path / "lr0.002" / "seed0" / "result.json").stat().st_mtime_ns
    report, out = run("[1e-9,2e-3,1e-3]")
    assert out.count("done before") == 4 and len(report["rates"]) == 3
    assert (tmp_path / "lr0.002" / "seed0" / "result.json").stat().st_mtime_ns == kept
    # A rate dropped from the list is kept, said, and left out.
    with pytest.warns(UserWarning, match=rf"^{tmp_path / 'lr1e-09'}: not in glue.learning_rates, "
                                         "so left out of sweep.json \\(kept\\)"):
        report, out = run("[2e-3,1e-3]")
    assert [r["lr"] for r in report["rates"]] == [2e-3, 1e-3] and out.count("done before") == 4
    # The sweep's folder holds no model of its own: predict and export name one that it holds.
    with pytest.raises(UserError, match=rf"{tmp_path} holds a learning-rate sweep .* e\.g\. "
                                        rf"{report['best']['best_model']} \(the best rate's"):
        load_pretrained(tmp_path)
    # plot draws the whole sweep (as the sweep did at its end): one colour a rate
    assert (tmp_path / "curves.png").is_file()
    assert plot.plot_run(tmp_path) == tmp_path / "curves.png"
    with pytest.raises(UserError, match=r"this is a learning-rate sweep: pass one of its runs, "
                                        rf"e\.g\. {tmp_path}/lr"):
        plot.metrics_path(tmp_path)  # what a loader of one run's metrics is told
    with pytest.raises(UserError, match=r"it is a GLUE learning-rate sweep: its runs' best epochs "
                                        r"are release bundles already, e\.g\. "
                                        rf"{report['best']['best_model']} \(the best rate's"):
        export.export_run(tmp_path, tmp_path.parent / "bundle")
    # The leaderboard's zip reads the best rate's files (the fixture's test split is cut short).
    with pytest.raises(UserError, match=rf"^{report['best']['run_dir']}/submission/SST-2.tsv has "
                                        "3 predictions but GLUE's sst2 test split has 1,821"):
        glue_submission.main([str(tmp_path), "--out", str(tmp_path.parent / "glue.zip"),
                              "--allow-missing"])
    # optim.lr given beside the sweep is said to be replaced.
    with pytest.warns(UserWarning, match=r"^optim.lr=1e-4 is replaced by each rate of glue."
                                         r"learning_rates; drop it, or set glue.learning_rates"):
        train_lib.warn_replaced_rate(["glue.seeds=[0]", "optim.lr=1e-4"])
    # Nor does a plain fine-tune go there, nor a sweep into a fine-tune's folder.
    with pytest.raises(UserError, match=r"holds a learning-rate sweep \(sweep.json\); "
                                        "fine-tuning there would overwrite"):
        finetune(sst2_cfg(tmp_path, tokenizer_path))
    with pytest.raises(UserError, match=r"holds a fine-tuning run \(its config.yaml has "
                                        r"train.task=glue\); a learning-rate sweep there"):
        train_lib.main(sweep_args(tmp_path / "lr0.002", "[1e-3]"))


def finished_rate_run(run_dir: Path, scores: list[float]) -> Path:
    """What a fine-tune leaves that a sweep reads: results.json for seeds 3, 5, 7 with these main
    scores, config.yaml and each seed's best/manifest.json (empty: only their names count)."""
    run_dir.mkdir(parents=True)
    lr = float(run_dir.name[2:]) if run_dir.name.startswith("lr") else 1e-3
    (run_dir / "config.yaml").write_text(f"train: {{task: glue}}\noptim: {{lr: {lr!r}}}\n")
    seeds = [{"seed": s, "best_score": x} for s, x in zip((3, 5, 7), scores, strict=False)]
    results = {"seeds": seeds, "submissions": [], "summary": glue_eval.summarize(
        [{**r, "best_metrics": {}} for r in seeds])}
    (run_dir / "results.json").write_text(json.dumps(results))  # after config.yaml: finished
    for seed in seeds:
        (run_dir / f"seed{seed['seed']}" / "best").mkdir(parents=True)
        (run_dir / f"seed{seed['seed']}" / "best" / "manifest.json").write_text("{}")
    return run_dir


def test_a_sweep_picks_the_rate_of_best_median_and_the_first_of_equals(tmp_path):
    def finished(folder, scores):
        return finished_rate_run(tmp_path / folder, scores)

    cfg = config.load([], ["glue.task=mrpc", "glue.learning_rates=[5e-5,4e-5,3e-5,2e-5]",
                           "glue.seeds=[3,5,7]"])
    # medians 0.6, 0.7, 0.7, 0.5: 4e-5 wins (3e-5 ties it later; 5e-5 has the best mean)
    dirs = [finished("a", [0.6, 0.99, 0.1]), finished("b", [0.7, 0.7, 0.2]),
            finished("c", [0.5, 0.7, 0.8]), finished("d", [0.5, 0.5, 0.5])]
    report = glue_sweep.summarize(cfg, dirs)
    assert [r["main_score"]["median"] for r in report["rates"]] == pytest.approx(
        [0.6, 0.7, 0.7, 0.5])
    assert report["best"] == {"lr": 4e-5, "run_dir": str(dirs[1]), "submissions": [],
                              "best_model": str(dirs[1] / "seed3" / "best")}  # 0.7 twice: first
    assert report["rates"][2]["best_model"] == str(dirs[2] / "seed7" / "best")
    assert report["main_score"] == "mean of f1 and accuracy" and report["seeds"] == [3, 5, 7]
    one = glue_sweep.for_rate(cfg, 3e-5)
    assert (one.optim.lr, one.glue.learning_rates, one.train.run_dir, one.wandb.name) == (
        3e-5, [], "runs/demo/lr3e-05", "demo-lr3e-05")


def test_an_interrupted_sweep_says_so_and_a_second_sweep_waits_for_the_first(
        tmp_path, monkeypatch):
    """sweep.json is rewritten as each rate finishes: one interrupted before its last rate names
    the rates still to run (not an earlier sweep's verdict), and so do predict and export. While a
    sweep runs, its folder is held: a second sweep there is refused, not run beside it."""
    cfg = config.load([], [f"train.run_dir={tmp_path}", "glue.task=mrpc", "glue.seeds=[3,5,7]",
                           "glue.learning_rates=[5e-5,3e-5]"])
    (tmp_path / glue_sweep.SWEEP).write_text('{"best": {"best_model": "an earlier sweep\'s"}}')

    def fine_tune(rate_cfg):  # the first rate finishes; the second is interrupted
        run_dir = Path(rate_cfg.train.run_dir)
        if rate_cfg.optim.lr == 5e-5:
            return finished_rate_run(run_dir, [0.5, 0.6, 0.7])
        report = json.loads((tmp_path / glue_sweep.SWEEP).read_text())
        assert [r["lr"] for r in report["rates"]] == [5e-5] and report["to_run"] == [3e-5]
        with pytest.raises(UserError, match=rf"^{tmp_path} is in use by another run \(pid "):
            glue_sweep.sweep(cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(glue_sweep, "finetune", fine_tune)
    with pytest.raises(KeyboardInterrupt):
        glue_sweep.sweep(cfg)
    report = json.loads((tmp_path / glue_sweep.SWEEP).read_text())
    assert report["to_run"] == [3e-5]
    assert report["best"]["best_model"] == str(tmp_path / "lr5e-05" / "seed7" / "best")
    with pytest.raises(UserError, match=rf"holds a learning-rate sweep .* e\.g\. {tmp_path}/"
                       r"lr5e-05/seed7/best \(sweep.json's best, but the sweep has yet to run "
                       r"lr 3e-05; rerun its command to finish it\)$"):
        load_pretrained(tmp_path)
    # Finished, the file says so; the lock went with the sweep.
    monkeypatch.setattr(glue_sweep, "finetune", lambda rate_cfg: finished_rate_run(
        Path(rate_cfg.train.run_dir), [0.9, 0.1, 0.2]))
    with pytest.warns(UserWarning, match="lr5e-05: not in glue.learning_rates"), \
            pytest.warns(UserWarning, match="curves.png not drawn: .* no finished epoch yet"):
        glue_sweep.sweep(dataclasses.replace(cfg, glue=dataclasses.replace(
            cfg.glue, learning_rates=[3e-5])))
    report = json.loads((tmp_path / glue_sweep.SWEEP).read_text())
    assert report["to_run"] == [] and [r["lr"] for r in report["rates"]] == [3e-5]
    with pytest.raises(UserError, match=r"\(the best rate's best seed\)$"):
        load_pretrained(tmp_path)


def test_a_sweep_json_that_no_longer_describes_its_folder_is_said_so(tmp_path, monkeypatch):
    """sweep.json names the best model of a finished sweep, found in the folder it is in (a moved
    sweep's own). An interrupted rerun (a rate's run unfinished), a rate's run trained again,
    or a damaged file is said by the readers instead of passing sweep.json's verdict on; a plain
    fine-tune at another rate is refused in a rate's folder."""
    from bertjax import sweep_state
    from bertjax.glue_submission import read_source

    cfg = config.load([], [f"train.run_dir={tmp_path / 'first'}", "glue.task=mrpc",
                           "glue.seeds=[3,5,7]", "glue.learning_rates=[5e-5,3e-5]"])
    monkeypatch.setattr(glue_sweep, "finetune", lambda rate_cfg: finished_rate_run(
        Path(rate_cfg.train.run_dir), [0.5, 0.9, 0.7] if rate_cfg.optim.lr == 3e-5 else [0.5]))
    with pytest.warns(UserWarning, match="curves.png not drawn"):
        glue_sweep.sweep(cfg)
    sweep = (tmp_path / "first").rename(tmp_path / "moved")
    state = sweep_state.read_sweep(sweep)
    assert (state.best_run, state.best_model, state.problem) == (
        sweep / "lr3e-05", sweep / "lr3e-05" / "seed5" / "best", None)
    # A rerun with a new rate, interrupted: that rate's run holds a config.yaml, no results.
    (sweep / "lr4e-05").mkdir()
    (sweep / "lr4e-05" / "config.yaml").write_text("optim: {lr: 4.0e-05}\n")
    problem = rf"{sweep}/lr4e-05 has not finished \(a sweep or fine-tune there was interrupted\)"
    assert re.match(problem, sweep_state.read_sweep(sweep).problem)
    with pytest.raises(UserError, match=rf"^{sweep} is a learning-rate sweep, but {problem}"):
        read_source(sweep)
    with pytest.raises(UserError, match=rf"e\.g\. {sweep}/lr3e-05/seed5/best \(sweep.json's "
                                        rf"best, but {problem}"):
        load_pretrained(sweep)
    shutil.rmtree(sweep / "lr4e-05")
    # A plain fine-tune at another rate is refused in a rate's folder; the same rate is not.
    with pytest.raises(UserError, match=rf"^{sweep}/lr3e-05 is the run of rate 3e-05 in the "
                                        rf"learning-rate sweep {sweep}; fine-tuning it at "
                                        r"optim.lr=0.001 would replace that rate's seeds"):
        sweep_state.check_rate_folder(sweep / "lr3e-05", 1e-3)
    sweep_state.check_rate_folder(sweep / "lr3e-05", 3e-5)
    sweep_state.check_rate_folder(tmp_path / "lr3e-05", 1e-3)  # no sweep around it
    # A rate's run trained again after sweep.json (another score), or its best model removed.
    (sweep / "lr5e-05" / "results.json").write_text(
        (sweep / "lr3e-05" / "results.json").read_text())
    assert re.match(rf"{sweep}/lr5e-05 changed after sweep.json was written",
                    sweep_state.read_sweep(sweep).problem)
    shutil.rmtree(sweep / "lr3e-05" / "seed5")
    assert re.match(rf"{sweep}/lr3e-05/seed5/best, the best model sweep.json names, is missing",
                    sweep_state.read_sweep(sweep).problem)
    with pytest.raises(UserError, match=r"is a learning-rate sweep, but .* is missing; rerun "):
        read_source(sweep)
    (sweep / "sweep.json").write_text('{"best": 3}')
    assert re.match(rf"{sweep}/sweep.json is damaged \(TypeError: ",
                    sweep_state.read_sweep(sweep).problem)
