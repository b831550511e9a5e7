"""`python -m bertjax.glue_score`: a classifier's dev scores and test files, checked against what
`predict.classify` gives for the same rows and metrics computed here from the TSVs; class names
matched to the task's; bad input is one line and writes nothing."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import HUGE_BATCH, run_under_memory_cap

from bertjax import config, predict
from bertjax import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.export import save_bundle
from bertjax.glue_score import main
from bertjax.hf import export_hf
from bertjax.model import Bert
from bertjax.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = ROOT / "tests" / "fixtures" / "glue"
MNLI = ("contradiction", "entailment", "neutral")  # GLUE's order


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [line for f in sorted(GLUE_DIR.rglob("*.tsv")) for line in
             f.read_text(encoding="utf-8").splitlines()]
    return tokenizer_lib.train(lambda: texts * 3,
                               config.TokenizerConfig(vocab_size=400, min_frequency=1))


def fine_tuned(out: Path, tokenizer, task: str, num_labels: int, seed: int = 0,
               data_dir: str | None = str(GLUE_DIR), **heads) -> Path:
    """A bundle as a fine-tune of `task` saves its best epoch (random weights: the scores are
    whatever they predict, which is what is checked)."""
    cfg = config.load([], ["train.task=glue", f"glue.task={task}", "model.num_layers=1",
                           "model.hidden_size=32", "model.num_heads=2",
                           "model.intermediate_size=48", "model.max_position_embeddings=64",
                           f"model.vocab_size={tokenizer.get_vocab_size()}",
                           "glue.buckets=[16,64]", "glue.batch_size=8",
                           *([f"glue.data_dir={data_dir}"] if data_dir else [])])
    model = Bert(cfg.model, key=jax.random.key(seed), num_labels=num_labels, **heads)
    return save_bundle(model, cfg, tokenizer, out)


def tsv_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def classified(bundle: Path, rows: list[dict], a: str, b: str | None) -> np.ndarray:
    """predict.classify's probabilities for the rows (the command users check rows with)."""
    loaded = load_pretrained(bundle)
    tok = tokenizer_lib.load(loaded.tokenizer_path)
    return predict.classify(loaded.model, tok, [r[a] for r in rows],
                            [r[b] for r in rows] if b else None)


def test_mnli_dev_scores_and_test_files_are_the_models_predictions(tmp_path, tokenizer, capsys):
    bundle = fine_tuned(tmp_path / "mnli", tokenizer, "mnli", 3)
    with pytest.warns(UserWarning, match=r"MNLI-m.tsv holds 2 predictions, but GLUE's mnli "
                                         r"test_matched split has 9,796 examples: the leaderboard "
                                         r"will refuse it; to submit, give --data-dir the whole"):
        main([str(bundle), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out.splitlines()
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["task"] == "mnli" and list(scores["dev"]) == ["dev_matched", "dev_mismatched"]
    for n, split in enumerate(("dev_matched", "dev_mismatched")):
        rows = tsv_rows(GLUE_DIR / "MNLI" / f"{split}.tsv")
        labels = np.array([MNLI.index(r["gold_label"]) for r in rows])
        mine = classified(bundle, rows, "sentence1", "sentence2").argmax(-1)
        accuracy = float((mine == labels).mean())
        assert scores["dev"][split]["metrics"] == pytest.approx({"accuracy": accuracy})
        assert scores["dev"][split]["examples"] == len(rows)
        assert printed[n] == f"mnli {split} ({len(rows)} examples): accuracy {accuracy:.4f}; " \
                             f"main score {accuracy:.4f}"
    assert scores["submissions"] == ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    for name, source in (("MNLI-m.tsv", "MNLI/test_matched.tsv"),
                         ("AX.tsv", "diagnostic/diagnostic.tsv")):
        rows = tsv_rows(GLUE_DIR / source)
        mine = classified(bundle, rows, "sentence1", "sentence2").argmax(-1)
        assert tsv_rows(tmp_path / "out" / name) == [
            {"index": r["index"], "prediction": MNLI[k]} for r, k in zip(rows, mine, strict=True)]


def test_named_classes_in_another_order_are_put_in_glues(tmp_path, tokenizer, capsys):
    """A Hugging Face MNLI model trained on the hub's data orders its classes entailment,
    neutral, contradiction: scored in GLUE's order it would be wrong on nearly every row."""
    bundle = fine_tuned(tmp_path / "mnli", tokenizer, "mnli", 3)
    hub_order = ["entailment", "neutral", "contradiction"]
    main([str(bundle), "--labels", ",".join(hub_order), "--out", str(tmp_path / "out")])
    rows = tsv_rows(GLUE_DIR / "MNLI" / "test_matched.tsv")
    mine = classified(bundle, rows, "sentence1", "sentence2").argmax(-1)
    assert [r["prediction"] for r in tsv_rows(tmp_path / "out" / "MNLI-m.tsv")] == \
        [hub_order[k] for k in mine]
    # The same names from a Hugging Face directory's id2label (its export, renamed)
    hf_dir = tmp_path / "hf"
    loaded = load_pretrained(bundle)
    export_hf(loaded.model, loaded.model_cfg, loaded.tokenizer_path, hf_dir, "cls",
              label_names=tuple(hub_order))
    main([str(hf_dir), "--task", "mnli", "--data-dir", str(GLUE_DIR), "--out",
          str(tmp_path / "out"), "--force"])
    assert [r["prediction"] for r in tsv_rows(tmp_path / "out" / "MNLI-m.tsv")] == \
        [hub_order[k] for k in mine]
    # Unnamed classes are read in GLUE's order, and for MNLI that is said
    hf_config = json.loads((hf_dir / "config.json").read_text())
    hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(3)}
    hf_config["label2id"] = {f"LABEL_{i}": i for i in range(3)}
    (hf_dir / "config.json").write_text(json.dumps(hf_config))
    with pytest.warns(UserWarning, match=r"does not name its classes: read in GLUE's order "
                                         r"\(contradiction, entailment, neutral\).*pass --labels "
                                         r"entailment,neutral,contradiction"):
        main([str(hf_dir), "--task", "mnli", "--data-dir", str(GLUE_DIR), "--out",
              str(tmp_path / "out"), "--force"])
    assert [r["prediction"] for r in tsv_rows(tmp_path / "out" / "MNLI-m.tsv")] == \
        [MNLI[k] for k in mine]
    capsys.readouterr()


def test_a_binary_task_takes_the_hubs_names_and_a_regressor_its_correlations(tmp_path,
                                                                              tokenizer, capsys):
    bundle = fine_tuned(tmp_path / "sst2", tokenizer, "sst2", 2)
    rows = tsv_rows(GLUE_DIR / "SST-2" / "dev.tsv")
    labels = np.array([int(r["label"]) for r in rows])
    mine = classified(bundle, rows, "sentence", None).argmax(-1)
    for names, predicted in (("negative,positive", mine), ("1,0", 1 - mine)):
        main([str(bundle), "--labels", names])
        accuracy = float((predicted == labels).mean())
        assert capsys.readouterr().out == f"sst2 dev ({len(rows)} examples): accuracy " \
                                          f"{accuracy:.4f}; main score {accuracy:.4f}\n"
    stsb = fine_tuned(tmp_path / "stsb", tokenizer, "stsb", 1)
    main([str(stsb), "--out", str(tmp_path / "out")])
    rows = tsv_rows(GLUE_DIR / "STS-B" / "dev.tsv")
    scores = classified(stsb, rows, "sentence1", "sentence2")[:, 0]
    gold = np.array([float(r["score"]) for r in rows])
    metrics = json.loads((tmp_path / "out" / "scores.json").read_text())["dev"]["dev"]["metrics"]
    # (f32 logits of other padded lengths than predict's: the 5-row correlation moves ~2e-5)
    assert metrics["pearson"] == pytest.approx(np.corrcoef(scores, gold)[0, 1], abs=1e-4)
    ranks = [np.argsort(np.argsort(x)) for x in (scores, gold)]  # no ties in these rows
    assert len(set(gold)) == len(gold)
    assert metrics["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-4)
    assert (tmp_path / "out" / "STS-B.tsv").is_file()


def test_dev_files_of_other_names_are_scored_as_the_tasks_dev_splits(tmp_path, tokenizer,
                                                                     capsys):
    """A partial MNLI copy (../shared/data's: dev_matched_subset.tsv, no mismatched set) was
    refused, naming glue.dev_files, a key glue_score has no way to set."""
    bundle = fine_tuned(tmp_path / "mnli", tokenizer, "mnli", 3)
    main([str(bundle)])
    whole = capsys.readouterr().out.splitlines()[0]  # dev_matched under GLUE's name
    partial = tmp_path / "glue" / "MNLI"
    partial.mkdir(parents=True)
    shutil.copy(GLUE_DIR / "MNLI" / "dev_matched.tsv", partial / "dev_matched_subset.tsv")
    with pytest.raises(UserError, match=r"dev_matched.tsv does not exist; give --data-dir a "
                                        r"directory .*name the dev files it has: --dev-files "
                                        r"NAME,\.\.\. "
                                        r"\(read as dev_matched, dev_mismatched, in order"):
        main([str(bundle), "--data-dir", str(tmp_path / "glue")])
    main([str(bundle), "--data-dir", str(tmp_path / "glue"), "--dev-files",
          "dev_matched_subset.tsv"])
    assert capsys.readouterr().out.splitlines() == [whole]
    with pytest.raises(UserError, match=r"^--dev-files has 3 names but mnli has only the dev "
                                        r"splits \['dev_matched', 'dev_mismatched'\]; name at "
                                        r"most 2$"):
        main([str(bundle), "--dev-files", "a.tsv,b.tsv,c.tsv"])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer) -> Path:
    """The checkpoints and folders the bad inputs are given (made once: ~1 s a case before)."""
    root = tmp_path_factory.mktemp("world")
    sst2 = fine_tuned(root / "sst2", tokenizer, "sst2", 2)
    fine_tuned(root / "enc", tokenizer, "sst2", 0, mlm=True)
    fine_tuned(root / "stsb", tokenizer, "stsb", 1)
    fine_tuned(root / "rel", tokenizer, "sst2", 2, data_dir="glue_data")  # relative, not here
    (root / "taken").mkdir()
    (root / "taken" / "notes.txt").write_text("mine")
    (root / "scored").mkdir()
    (root / "scored" / "scores.json").write_text("{}")
    loaded = load_pretrained(sst2)
    export_hf(loaded.model, loaded.model_cfg, loaded.tokenizer_path, root / "hf", "cls",
              label_names=("0", "1"))
    # weights and config.json without a tokenizer
    shutil.copytree(root / "hf", root / "bare",
                    ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt"))
    return root


@pytest.mark.parametrize("case", ["encoder", "another task", "unrecorded task", "class count",
                                  "unknown names", "names for a regressor", "no data dir",
                                  "its data dir gone", "out holds other files",
                                  "out holds a score", "force without out", "no tokenizer",
                                  "hub offline", "the task's folder", "out is a file",
                                  "out cannot be made", "dev files from the hub",
                                  "a stray comma in dev files"])
def test_bad_input_is_one_line_and_writes_nothing(case, world, monkeypatch):
    sst2, hf_dir, bare = world / "sst2", world / "hf", world / "bare"
    argv, expected = {
        "encoder": ([str(world / "enc")],
                    r"has no classifier \(a pretrained encoder\); fine-tune it on the task "
                    r"first: python -m bertjax.train configs/<task>.yaml init.checkpoint="),
        "another task": ([str(sst2), "--task", "cola"],
                         r"was fine-tuned on sst2, not cola; score it on sst2 \(drop --task\)"),
        "unrecorded task": ([str(hf_dir)], r"does not record the GLUE task it was fine-tuned on "
                                           r"\(a Hugging Face classifier\); give --task, one of "
                                           r"cola, sst2"),
        "class count": ([str(hf_dir), "--task", "mnli"],
                        r"has 2 classes, but mnli needs 3 classes: it was fine-tuned on another "
                        r"task; give its --task"),
        "unknown names": ([str(sst2), "--labels", "good,bad"],
                          r"^--labels \(good, bad\) are not sst2's 2 classes \(0/negative \| "
                          r"1/positive\); pass --labels naming"),
        "names for a regressor": ([str(world / "stsb"), "--labels", "a"],
                                  r"stsb is a regression task"),
        "no data dir": ([str(sst2), "--data-dir", str(world / "nope")],
                        r"^--data-dir .*/nope does not exist; give the directory of GLUE's"),
        "its data dir gone": ([str(world / "rel")],
                              r"was fine-tuned on the GLUE files in glue_data, which does not "
                              r"exist \(in the current directory, .*\); give --data-dir DIR$"),
        "out holds other files": ([str(sst2), "--out", str(world / "taken")],
                                  r"holds files but no scores.json \(not an earlier glue_score "
                                  r"output\); give a new or empty directory"),
        "out holds a score": ([str(sst2), "--out", str(world / "scored")],
                              r"holds an earlier score \(scores.json\); pass --force"),
        "force without out": ([str(sst2), "--force"], r"^--force replaces .*; give --out DIR$"),
        "hub offline": ([str(hf_dir), "--task", "sst2"],  # the tests run offline
                        r"^could not load nyu-mll/glue/sst2 split validation from the hub .*; "
                        r"give --data-dir a directory of GLUE TSV files$"),
        "the task's folder": ([str(sst2), "--data-dir", str(GLUE_DIR / "SST-2")],
                              r"--data-dir .*/SST-2 is the SST-2 folder itself: set it to the "
                              r"folder holding SST-2/$"),
        "out is a file": ([str(sst2), "--out", str(world / "taken" / "notes.txt" / "x")],
                          r"^--out=.*notes.txt/x cannot be created: .*notes.txt is a file"),
        "out cannot be made": ([str(sst2), "--out", "/proc/scores"],
                               r"^cannot create --out=/proc/scores \(No such file or directory\)"
                               r"; set --out to a directory you can write$"),
        "dev files from the hub": ([str(hf_dir), "--task", "sst2", "--dev-files", "dev.tsv"],
                                   r"^--dev-files names files inside --data-dir \(the hub's "
                                   r"splits have no files\); give --data-dir too$"),
        "a stray comma in dev files": ([str(sst2), "--dev-files", "dev.tsv,"],
                                       r"^argument --dev-files: 'dev.tsv,' holds an empty name; "
                                       r"give file names separated by commas, .*; usage: "),
        "no tokenizer": ([str(bare), "--task", "sst2"],
                         r"bare carries no tokenizer \(tokenizer.json, or a Hugging Face "
                         r"directory's vocab.txt\); put the one its weights were trained with"),
    }[case]
    monkeypatch.chdir(world)
    before = sorted((p, p.stat().st_mtime_ns) for p in world.rglob("*"))
    with pytest.raises(UserError, match=expected) as e:
        main(argv)
    assert "\n" not in str(e.value)
    assert sorted((p, p.stat().st_mtime_ns) for p in world.rglob("*")) == before


def test_a_forced_rescore_replaces_the_earlier_files(tmp_path, tokenizer):
    out = tmp_path / "out"
    main([str(fine_tuned(tmp_path / "sst2", tokenizer, "sst2", 2)), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["SST-2.tsv", "scores.json"]
    main([str(fine_tuned(tmp_path / "rte", tokenizer, "rte", 2)), "--out", str(out), "--force"])
    assert sorted(p.name for p in out.iterdir()) == ["RTE.tsv", "scores.json"]  # SST-2's gone


@pytest.mark.slow  # a CLI subprocess
def test_the_cli_says_bad_input_in_one_line_and_exits_2(tmp_path, tokenizer):
    fine_tuned(tmp_path / "rte", tokenizer, "rte", 2)
    done = subprocess.run([sys.executable, "-m", "bertjax.glue_score", str(tmp_path / "rte"),
                           "--task", "qqp"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'rte'} was fine-tuned on rte, not qqp; score it on rte (drop "
        "--task), or fine-tune it on qqp"]


@pytest.mark.slow  # a CLI subprocess
def test_a_batch_too_large_for_memory_is_one_line_and_writes_nothing(tmp_path, tokenizer):
    """XLA's RESOURCE_EXHAUSTED (real, under an address-space cap) was a traceback."""
    fine_tuned(tmp_path / "rte", tokenizer, "rte", 2)
    done = run_under_memory_cap(["-m", "bertjax.glue_score", str(tmp_path / "rte"), "--out",
                                 str(tmp_path / "out"), "--batch-size", str(HUGE_BATCH)], ROOT)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    line, = done.stderr.strip().splitlines()
    assert line.startswith("error: out of memory (RESOURCE_EXHAUSTED: ") and \
        line.endswith("; lower --batch-size"), line
    assert not (tmp_path / "out").exists()
