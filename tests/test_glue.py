"""Tests for bertjax.glue: task specs and label maps, TSV/hub readers, metrics against
independent reference computations, submission files, and bucketed batches.

Fixtures under tests/fixtures/glue hold real rows (CoLA, SST-2, RTE, STS-B, MNLI partial files)
and hand-written rows in GLUE's exact layouts (MRPC, QQP, QNLI, WNLI, MNLI originals, AX).
"""

import csv
import dataclasses
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import count_encoded_rows, rte_pairs

from bertjax import config, glue, glue_batches, glue_tasks
from bertjax import glue_metrics as gm
from bertjax.config import GlueConfig
from bertjax.errors import UserError

FIX = Path(__file__).parent / "fixtures" / "glue"


def cfg(**kw) -> GlueConfig:
    return GlueConfig(data_dir=str(FIX), **kw)


# ---------------------------------------------------------------- specs and label maps

def test_unknown_task_lists_valid_tasks():
    with pytest.raises(UserError, match="glue.task='mnlii' is unknown.*cola.*mnli.*wnli"):
        glue_tasks.get_task("mnlii")
    with pytest.raises(UserError, match="glue.task=foo is invalid: it must be one of"):
        glue.load_split(cfg(task="foo"), "train")


def test_label_maps_follow_glue_order():
    assert glue_tasks.get_task("mnli").labels == ("contradiction", "entailment", "neutral")
    assert glue_tasks.get_task("rte").labels == ("entailment", "not_entailment")
    assert glue_tasks.get_task("stsb").num_labels == 1
    assert glue_tasks.get_task("mnli").num_labels == 3


def test_splits_and_submission_names():
    names = {s.submission for t in glue_tasks.TASKS.values() for s in t.splits} - {None}
    assert names == {"CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
                     "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"}
    assert [s.name for s in glue_tasks.get_task("mnli").splits] == [
        "train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"]
    assert glue_tasks.submissions("mnli") == [
        ("mnli", "test_matched"), ("mnli", "test_mismatched"), ("ax", "test")]
    assert glue_tasks.submissions("rte") == [("rte", "test")]


# ---------------------------------------------------------------- TSV readers

# (task, split, rows, text_a[0], text_b[0] or None, GLUE label strings or floats, index)
READ_CASES = [
    ("cola", "train", 7, "Our friends won't buy this analysis, let alone the next one we propose.",
     None, ["1", "1", "1", "0", "0", "1", "1"], [0, 1, 2, 3, 4, 5, 6]),
    ("cola", "test", 3, "Bill whistled past the house.", None, None, [0, 1, 2]),
    ("sst2", "dev", 4, "it 's a charming and often affecting journey . ", None,
     ["1", "0", "1", "1"], [0, 1, 2, 3]),
    ("rte", "train", 4, "No Weapons of Mass Destruction Found in Iraq Yet.",
     "Weapons of Mass Destruction Found in Iraq.",
     ["not_entailment", "entailment", "entailment", "entailment"], [0, 1, 2, 3]),
    ("stsb", "train", 5, "A plane is taking off.", "An air plane is taking off.",
     [5.0, 3.8, 3.8, 2.6, 4.25], [0, 1, 2, 3, 4]),
    ("stsb", "test", 3, "A girl is styling her hair.", "A girl is brushing her hair.", None,
     [0, 1, 2]),
    ("mrpc", "train", 3, "The council approved the budget on Tuesday.",
     "On Tuesday the council passed the budget.", ["1", "0", "1"], [0, 1, 2]),
    ("mrpc", "test", 2, "The bridge reopened on Monday.", "Monday saw the bridge reopen.", None,
     [0, 1]),
    ("qqp", "train", 3, "How do I learn Python fast?", "What is the quickest way to learn Python?",
     ["1", "0", "1"], [10, 11, 13]),
    ("qqp", "test", 2, "Is coffee bad for you?", "Is coffee unhealthy?", None, [0, 1]),
    ("qnli", "train", 2, "When did the museum open?", "The museum opened its doors in 1905.",
     ["entailment", "not_entailment"], [0, 1]),
    ("wnli", "dev", 1, "Sam thanked Kim because she had helped him.", "Kim had helped him.",
     ["1"], [0]),
    ("mnli", "train", 3, "The door was open all night.", "Someone left the door open.",
     ["entailment", "contradiction", "neutral"], [0, 1, 2]),
    ("mnli", "dev_matched", 3, "The report was late.", "The report was long.",
     ["neutral", "contradiction", "entailment"], [0, 1, 2]),
    ("mnli", "dev_mismatched", 1, "Thank you for your gift.", "A gift was given.",
     ["entailment"], [0]),
    ("mnli", "test_mismatched", 1, "The book has ten chapters.", "The book is short.", None, [0]),
    ("ax", "test", 2, "The cat sat on the mat.", "The cat did not sit on the mat.", None, [0, 1]),
]


@pytest.mark.parametrize("task,split,n,a0,b0,labels,index", READ_CASES)
def test_read_each_task_format(task, split, n, a0, b0, labels, index):
    # AX is read next to MNLI (it is no glue.task: it has no training split)
    ex = glue.load_split(cfg(task="mnli" if task == "ax" else task), split, task=task)
    assert len(ex) == n and ex.text_a[0] == a0 and ex.index.tolist() == index
    assert (ex.text_b is None) == (b0 is None) and (b0 is None or ex.text_b[0] == b0)
    if labels is None:
        assert ex.labels is None
    elif task == "stsb":
        assert ex.labels.dtype == np.float32 and np.allclose(ex.labels, labels)
    else:
        assert ex.labels.dtype == np.int32
        assert [glue_tasks.get_task(task).labels[i] for i in ex.labels] == labels


def test_quirks_bom_malformed_rows_and_literal_quotes():
    cola = glue.load_split(cfg(task="cola"), "train")
    assert cola.text_a[5] == 'Susan whispered "Shut up".'  # CoLA: no header, 4 columns
    mrpc = glue.read_tsv("mrpc", "train", FIX / "MRPC" / "train.tsv")  # header starts with a BOM
    assert mrpc.text_a[2] == 'He said "no comment" and left.'
    qqp = glue.load_split(cfg(task="qqp"), "train")
    assert qqp.skipped == 2 and qqp.text_a[2] == '"Is it safe to fly?'
    stsb = glue.load_split(cfg(task="stsb"), "dev")
    assert len(stsb) == 5 and stsb.text_a[2].startswith('"The grass family')


def test_unquoted_quote_quirk_on_real_mnli_rows():
    path = FIX / "MNLI" / "dev_matched_subset.tsv"
    ex = glue.read_tsv("mnli", "dev_matched", path)
    assert ex.index.tolist() == [2, 4, 24, 3174, 6976, 6979]
    assert ex.text_b[3] == '"Don\'t sue me!" Royko wrote. '  # quotes are literal text
    assert ex.text_a[4].startswith('"If you people') and ex.text_a[5] == "Where is art?"
    with open(path, encoding="utf-8") as f:  # a quoting reader merges rows: the quirk is real
        assert len(list(csv.reader(f, delimiter="\t"))) < 7


def test_mnli_partial_files_by_header_names():
    c = cfg(task="mnli", train_file="train_pairs10k.tsv", dev_files=["dev_matched_subset.tsv"])
    assert glue.dev_splits(c) == ["dev_matched"]
    train = glue.load_split(c, "train")
    assert len(train) == 6 and train.index.tolist() == list(range(6))
    assert glue_tasks.get_task("mnli").labels[int(train.labels[1])] == "entailment"
    assert glue.load_split(c, "dev_matched").labels.tolist() == [1, 0, 2, 0, 1, 2]
    kshot = glue.load_split(cfg(task="mnli", train_file="train_kshot480.tsv"), "train")
    assert kshot.index.tolist()[:3] == [1541, 1980, 5078]
    assert kshot.text_a[0] == "Well, he showed them."
    assert glue.load_split(cfg(task="mnli", max_train_examples=2), "train").text_a[1].startswith(
        'He called it "a triumph"')
    assert glue.split_available(c, "dev_matched")
    assert not glue.split_available(cfg(task="rte", dev_files=["nope.tsv"]), "dev")


def test_a_missing_glue_file_names_the_key_that_reads_what_the_directory_holds(tmp_path):
    # MNLI with dev_matched.tsv but no dev_mismatched.tsv said only 'set glue.data_dir'.
    (tmp_path / "MNLI").mkdir()
    partial = GlueConfig(task="mnli", data_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"dev_mismatched.tsv does not exist; .*; or name the dev "
                                        r"files it has: glue.dev_files=\[NAME, ...\] \(read as "
                                        r"dev_matched, dev_mismatched, in order"):
        glue.load_split(partial, "dev_mismatched")
    (tmp_path / "MNLI" / "train_pairs10k.tsv").write_text("")
    with pytest.raises(UserError, match=r"train.tsv does not exist; .*glue.train_file=NAME \(.*"
                                        r"MNLI holds train_pairs10k.tsv\)$"):
        glue.load_split(partial, "train")
    # glue.data_dir set to the task's folder (SST-2/) rather than the one holding it
    inside = GlueConfig(task="sst2", data_dir=str(FIX / "SST-2"))
    with pytest.raises(UserError, match=r"SST-2/SST-2/train.tsv does not exist; glue.data_dir=.*"
                                        r"SST-2 is the SST-2 folder itself: set it to the folder "
                                        r"holding SST-2/$"):
        glue.load_split(inside, "train")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bad_inputs_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"MRPC/dev\.tsv does not exist; set glue\.data_dir"):
        glue.load_split(GlueConfig(task="mrpc", data_dir=str(tmp_path)), "dev")
    with pytest.raises(UserError, match="rte has no split 'dev_matched'"):
        glue.load_split(cfg(task="rte"), "dev_matched")
    with pytest.raises(UserError, match="no 'label' column; the train split needs labels"):
        glue.read_tsv("rte", "train", FIX / "RTE" / "test.tsv")
    with pytest.raises(UserError, match="line 2: label .not_entailment. is not"):
        glue.read_tsv("wnli", "train", FIX / "RTE" / "train.tsv")
    with pytest.raises(UserError, match="no column 'question'"):
        glue.read_tsv("qnli", "train", FIX / "SST-2" / "train.tsv")
    with pytest.raises(UserError, match="no column 'sentence2'.*needs a sentence pair"):
        glue.read_tsv("rte", "test", _write(tmp_path / "one.tsv", "index\tsentence1\n0\ta\n"))
    short = _write(tmp_path / "short.tsv", "index\tsentence1\tsentence2\tlabel\n0\tonly one\n")
    with pytest.raises(UserError, match="line 2 has 2 tab-separated fields, expected at least 4"):
        glue.read_tsv("rte", "dev", short)
    with pytest.raises(UserError, match="is empty"):
        glue.read_tsv("cola", "dev", _write(tmp_path / "empty.tsv", ""))
    with pytest.raises(UserError, match="has only the dev splits"):
        glue.load_split(cfg(task="rte", dev_files=["a.tsv", "b.tsv"]), "dev")
    with pytest.raises(UserError, match="set glue.data_dir too"):
        glue.load_split(GlueConfig(task="rte", train_file="x.tsv"), "train")


# ---------------------------------------------------------------- hub reader

def test_hub_offline_says_set_data_dir(tmp_path):
    with pytest.raises(UserError, match=r"nyu-mll/glue/rte.*set glue\.data_dir"):
        glue.read_hub("rte", "dev", cache_dir=str(tmp_path))


def test_an_unreachable_hub_is_one_line_without_its_retry_warnings(monkeypatch, caplog):
    # Without HF_HUB_OFFLINE, huggingface_hub logged ~20 retry lines before the error.
    datasets = pytest.importorskip("datasets")

    def unreachable(*args, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 8s [Retry 5/5].")
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    level = logging.getLogger("huggingface_hub").level
    with pytest.raises(UserError, match="could not load nyu-mll/glue/rte"):
        glue.read_hub("rte", "dev")
    assert not caplog.records
    assert logging.getLogger("huggingface_hub").level == level  # restored


def test_hub_labels_map_through_names(monkeypatch):
    datasets = pytest.importorskip("datasets")
    hub_order = ["entailment", "neutral", "contradiction"]  # nyu-mll/glue's mnli ClassLabel
    feats = datasets.Features({"premise": datasets.Value("string"),
                               "hypothesis": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=hub_order),
                               "idx": datasets.Value("int32")})
    rows = {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"],
            "label": [0, 1, 2], "idx": [7, 8, 9]}
    calls = []

    def fake(name, config, split, cache_dir=None):
        calls.append((name, config, split))
        test = split.startswith("test")
        return datasets.Dataset.from_dict({**rows, "label": [-1] * 3} if test else rows, feats)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ex = glue.read_hub("mnli", "dev_mismatched")
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_mismatched")
    assert [glue_tasks.get_task("mnli").labels[i] for i in ex.labels] == hub_order
    assert ex.index.tolist() == [7, 8, 9] and ex.text_b == ["h0", "h1", "h2"]
    assert glue.read_hub("mnli", "test_matched").labels is None


# ---------------------------------------------------------------- metrics

def _mcc_binary(p, y):  # the textbook tp/tn/fp/fn form
    tp, tn = np.sum((p == 1) & (y == 1)), np.sum((p == 0) & (y == 0))
    fp, fn = np.sum((p == 1) & (y == 0)), np.sum((p == 0) & (y == 1))
    d = math.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return float(tp * tn - fp * fn) / d if d else 0.0


def _mcc_onehot(p, y, k):  # covariance of one-hot indicator matrices (Gorodkin's definition)
    x, z = np.eye(k)[p], np.eye(k)[y]
    x, z = x - x.mean(0), z - z.mean(0)
    return float(np.sum(x * z) / math.sqrt(np.sum(x * x) * np.sum(z * z)))


def test_matthews_against_references():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, y = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
        assert gm.matthews(p, y) == pytest.approx(_mcc_binary(p, y), abs=1e-12)
        p3, y3 = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
        assert gm.matthews(p3, y3) == pytest.approx(_mcc_onehot(p3, y3, 3), abs=1e-12)
    # hand-computed: tp=2 tn=0 fp=1 fn=1 -> (0 - 1) / sqrt(3 * 3 * 1 * 1) = -1/3
    assert gm.matthews(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])) == pytest.approx(-1 / 3)
    assert gm.matthews(np.ones(5, int), np.array([0, 1, 0, 1, 1])) == 0.0  # undefined -> 0


def test_f1_and_accuracy_against_references():
    # hand-computed: tp=2 fp=1 fn=1 -> precision=recall=2/3 -> F1=2/3; 3 of 5 right
    m = gm.compute_metrics("mrpc", np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]))
    assert m == pytest.approx({"f1": 2 / 3, "accuracy": 0.6})
    rng = np.random.default_rng(1)
    p, y = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    prec, rec = np.sum(p & y) / np.sum(p), np.sum(p & y) / np.sum(y)
    assert gm.f1_positive(p, y) == pytest.approx(2 * prec * rec / (prec + rec))
    assert gm.f1_positive(np.zeros(3, int), np.zeros(3, int)) == 0.0


def test_pearson_spearman_against_references():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=100), rng.normal(size=100)
    assert gm.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    # scipy's documented example: spearmanr([1,2,3,4,5], [5,6,7,8,7]) = 0.8207826816681233
    assert gm.spearman(np.arange(1.0, 6), np.array([5.0, 6, 7, 8, 7])) == pytest.approx(
        0.8207826816681233, abs=1e-12)
    v = rng.integers(0, 6, 40).astype(float)  # many ties
    brute = [np.sum(v < a) + (np.sum(v == a) + 1) / 2 for a in v]  # mean rank of the tie group
    assert np.allclose(gm.average_ranks(v), brute)
    stats = pytest.importorskip("scipy.stats")  # optional extra check only
    w = rng.integers(0, 6, 40).astype(float)
    assert gm.spearman(v, w) == pytest.approx(stats.spearmanr(v, w).statistic, abs=1e-12)


def test_correlations_of_a_diverged_models_nan_predictions_are_zero():
    """Pearson's r already was (undefined); Spearman's rho ranked the NaNs last and gave a
    diverged STS-B model a made-up dev score (0.082 in the probe)."""
    gold = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    for pred in (np.full(5, np.nan), np.array([0.0, 1.0, np.nan, 3.0, 4.0])):
        assert gm.compute_metrics("stsb", pred, gold) == {"pearson": 0.0, "spearman": 0.0}


def test_compute_metrics_per_task_and_main_score():
    logits = np.array([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    assert gm.compute_metrics("mnli", logits, np.array([1, 0, 0])) == {"accuracy": 2 / 3}
    s = gm.compute_metrics("stsb", np.array([[1.0], [2.0], [3.5]]), np.array([1.0, 3.0, 2.5]))
    assert set(s) == {"pearson", "spearman"} and s["spearman"] == pytest.approx(0.5)
    assert gm.main_score("stsb", s) == pytest.approx((s["pearson"] + 0.5) / 2)
    assert gm.main_score("qqp", {"f1": 0.8, "accuracy": 0.9}) == pytest.approx(0.85)
    assert gm.main_score("cola", {"mcc": 0.4}) == 0.4
    assert gm.main_score("rte", {"accuracy": 0.7}) == 0.7
    with pytest.raises(ValueError):
        gm.compute_metrics("rte", np.array([0, 1]), np.array([0]))
    # an unlabelled split's -1 would index the confusion matrix from its end: a wrong MCC
    with pytest.raises(ValueError, match=r"class indices 0..1; got \[-1\]"):
        gm.compute_metrics("cola", np.array([0, 1, 1]), np.array([0, -1, 1]))


# ---------------------------------------------------------------- submission files

def _rows(path):
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_submission_files(tmp_path):
    rte = gm.write_submission("rte", "test", np.array([2, 0, 1]), np.array([1, 0, 0]), tmp_path)
    assert rte.name == "RTE.tsv" and _rows(rte) == [
        ["index", "prediction"], ["0", "entailment"], ["1", "entailment"], ["2", "not_entailment"]]
    cola = gm.write_submission("cola", "test", np.arange(3), np.array([[0.0, 1.0]] * 3), tmp_path)
    assert [r[1] for r in _rows(cola)[1:]] == ["1", "1", "1"]
    sts = gm.write_submission("stsb", "test", np.arange(3), np.array([-0.5, 2.25, 7.0]), tmp_path)
    assert [r[1] for r in _rows(sts)[1:]] == ["0.000", "2.250", "5.000"]
    mm = gm.write_submission("mnli", "test_mismatched", np.arange(3), np.array([0, 1, 2]),
                               tmp_path)
    assert mm.name == "MNLI-mm.tsv"
    assert [r[1] for r in _rows(mm)[1:]] == ["contradiction", "entailment", "neutral"]
    ax = gm.write_submission("ax", "test", np.arange(1), np.array([2]), tmp_path)
    assert ax.name == "AX.tsv"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "AX.tsv", "CoLA.tsv", "MNLI-mm.tsv", "RTE.tsv", "STS-B.tsv"]  # no temporary left over
    with pytest.raises(UserError, match="not a GLUE test split"):
        gm.write_submission("rte", "dev", np.arange(1), np.array([0]), tmp_path)


# ---------------------------------------------------------------- bucketed batches

def test_encode_pairs_truncates_and_buckets(glue_tokenizer):
    ex, buckets = rte_pairs(45), [8, 16, 32]
    enc = glue_batches.encode(glue_tokenizer, ex, buckets)
    lengths = np.diff(enc.offsets)
    assert lengths.max() == 32 and enc.truncated > 0  # longest-first cut to the largest bucket
    assert np.all(np.bincount(enc.bucket, minlength=3) > 0)  # the data exercise every bucket
    b = np.asarray(buckets)[enc.bucket]
    assert np.all(lengths <= b) and np.all((enc.bucket == 0) | (lengths > b - b // 2))
    row = slice(enc.offsets[0], enc.offsets[1])  # [CLS] a [SEP] b [SEP]: type 0 then 1
    types, ids = enc.type_ids[row], enc.tokens[row]
    assert ids[0] == glue_tokenizer.token_to_id("[CLS]") and types[0] == 0 and types[-1] == 1
    assert glue_tokenizer.truncation is None  # the caller's tokenizer is left untouched
    with pytest.raises(UserError, match="glue.buckets"):
        glue_batches.encode(glue_tokenizer, ex, [64, 32])


def test_encode_tokenizes_a_few_rows_at_a_time_with_the_same_result(glue_tokenizer, monkeypatch):
    # Encoded whole, MNLI's 393 k training pairs held ~2.6 GB of the tokenizer's Encoding
    # objects at once in every process: rows go through it ENCODE_ROWS at a time.
    ex, buckets = rte_pairs(45), [8, 16, 32]
    whole = glue_batches.encode(glue_tokenizer, ex, buckets)
    seen = count_encoded_rows(monkeypatch, 7)
    parts = glue_batches.encode(glue_tokenizer, ex, buckets)
    assert max(seen) == 7 and sum(seen) == 45
    for name in ("tokens", "type_ids", "offsets", "labels", "bucket"):
        assert np.array_equal(getattr(parts, name), getattr(whole, name)), name
    assert parts.truncated == whole.truncated > 0 and parts.buckets == whole.buckets
    single = dataclasses.replace(ex, text_b=None)  # a one-text task
    assert len(glue_batches.encode(glue_tokenizer, single, buckets)) == 45


def test_training_batches_shapes_coverage_determinism(glue_tokenizer):
    enc, bs = glue_batches.encode(glue_tokenizer, rte_pairs(45), [8, 16, 32]), 4
    epoch0 = list(glue_batches.iter_batches(enc, bs, seed=3, epoch=0))
    assert len(epoch0) == glue_batches.num_batches(enc, bs)
    shapes = {b["input_ids"].shape for b in epoch0}
    assert len(shapes) <= 3 and all(s[0] == bs and s[1] in (8, 16, 32) for s in shapes)
    seen = np.concatenate([b["example_index"][b["valid"]] for b in epoch0])
    assert np.array_equal(np.sort(seen), np.arange(45))  # every example exactly once
    for b in epoch0:
        assert b["input_ids"].dtype == np.int32 and b["token_type_ids"].dtype == np.int32
        assert b["attention_mask"].dtype == bool and b["labels"].dtype == np.int32
        assert np.all(b["example_index"][~b["valid"]] == -1)  # padding rows are marked
        real = b["example_index"][b["valid"]]
        assert np.array_equal(b["attention_mask"][b["valid"]].sum(1),
                              np.diff(enc.offsets)[real])
        assert np.array_equal(b["labels"][b["valid"]], real % 2)
        assert np.diff(enc.offsets)[real].max() > {8: 0, 16: 8, 32: 16}[b["input_ids"].shape[1]]
    assert sum((~b["valid"]).sum() for b in epoch0) == len(epoch0) * bs - 45
    lengths = [b["input_ids"].shape[1] for b in epoch0]
    assert lengths != sorted(lengths)  # batch order is shuffled across buckets too
    again = list(glue_batches.iter_batches(enc, bs, seed=3, epoch=0))
    assert all(np.array_equal(x["example_index"], y["example_index"])
               for x, y in zip(epoch0, again, strict=True))
    other = [b["example_index"] for b in glue_batches.iter_batches(enc, bs, seed=3, epoch=1)]
    assert not all(np.array_equal(x["example_index"], y) for x, y in zip(epoch0, other,
                                                                         strict=True))
    tail = list(glue_batches.iter_batches(enc, bs, seed=3, epoch=0, start=5))
    assert np.array_equal(tail[0]["example_index"], epoch0[5]["example_index"])


def test_eval_order_and_scatter_back(glue_tokenizer):
    ex = glue.load_split(cfg(task="stsb"), "dev")
    enc = glue_batches.encode(glue_tokenizer, ex, [16, 32, 64])
    batches = list(glue_batches.iter_batches(enc, 4))
    assert batches[0]["labels"].dtype == np.float32
    assert all(np.array_equal(x["example_index"], y["example_index"])
               for x, y in zip(batches, glue_batches.iter_batches(enc, 4), strict=True))
    # a fake model output per row: its label; scattered back it must equal the labels in order
    out = glue_batches.in_example_order(len(ex), [b["example_index"] for b in batches],
                                [b["labels"] for b in batches])
    assert np.array_equal(out, ex.labels)
    with pytest.raises(ValueError, match="each of 6 rows once"):
        glue_batches.in_example_order(6, [batches[0]["example_index"]], [batches[0]["labels"]])
    rte_test = glue.load_split(cfg(task="rte"), "test")
    test = glue_batches.encode(glue_tokenizer, rte_test, [16, 32, 64])
    assert np.all(next(glue_batches.iter_batches(test, 4))["labels"] == 0)  # no labels: zeros


# ---------------------------------------------------------------- the real files

def test_real_glue_files_row_counts(shared_data):
    c = GlueConfig(data_dir=str(shared_data / "glue"))
    counts = {"cola": (8551, 1043, 1063), "sst2": (67349, 872, 1821), "rte": (2490, 277, 3000),
              "stsb": (5749, 1500, 1379)}
    for task, want in counts.items():
        got = [glue.load_split(replace_task(c, task), s) for s in ("train", "dev", "test")]
        assert tuple(map(len, got)) == want, task
        assert got[2].labels is None and got[0].skipped == 0
        assert len(got[2]) == glue_tasks.get_task(task).split("test").rows  # no warning
    cola = glue.load_split(replace_task(c, "cola"), "train").labels
    assert np.bincount(cola).tolist() == [2528, 6023]
    m = replace_task(c, "mnli", train_file="train_pairs10k.tsv",
                     dev_files=["dev_matched_subset.tsv"])
    train, dev = glue.load_split(m, "train"), glue.load_split(m, "dev_matched")
    assert (len(train), len(dev)) == (9999, 923)
    # README: entailment 3,408 / neutral 3,313 / contradiction 3,278 (GLUE order: c, e, n)
    assert np.bincount(train.labels).tolist() == [3278, 3408, 3313]
    assert len(glue.load_split(replace_task(c, "mnli", train_file="train_kshot480.tsv"),
                               "train")) == 480


def replace_task(c: GlueConfig, task: str, **kw) -> GlueConfig:
    return GlueConfig(**{**c.__dict__, "task": task, **kw})


# ---------------------------------------------------------------- malformed files (issue 19)

def _rte_copy(tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(FIX / "RTE", tmp_path / "RTE")
    return tmp_path / "RTE"


def test_a_malformed_glue_file_names_the_file_and_line(tmp_path):
    rte = _rte_copy(tmp_path)
    header = (rte / "train.tsv").read_text().splitlines()[0]
    (rte / "train.tsv").write_text(header + "\n")
    with pytest.raises(UserError, match=r"train.tsv has no data rows besides its header"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "train")
    (rte / "train.tsv").write_bytes(f"{header}\n0\ta\tb\tentailment\n1\tcaf\xe9\tb\t"
                                    "entailment\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"train.tsv line 3: not valid UTF-8 \(byte 0xe9 at "
                                        r"column 6, file offset \d+\)"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "train")
    (rte / "train.tsv").write_text(f"{header}\n0\ta\tb\tentailment\nx\ta\tb\tentailment\n")
    with pytest.raises(UserError, match=r"train.tsv line 3: index 'x' is not a whole number"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "train")
    (rte / "train.tsv").unlink()
    (rte / "train.tsv").mkdir()
    with pytest.raises(UserError, match=r"train.tsv is a directory, not a file"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "train")
    with pytest.raises(UserError, match=r"glue.data_dir=.*header.tsv is a file; set "
                                        r"glue.data_dir to a dir"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(_write(tmp_path / "header.tsv",
                                                                      header))), "train")


def test_the_test_splits_a_submission_needs_are_read_up_front(tmp_path):
    rte = _rte_copy(tmp_path)
    glue.check_submission_inputs(GlueConfig(task="rte", data_dir=str(tmp_path)))  # all fine
    with open(rte / "test.tsv", "a") as f:
        f.write("9\tonly one sentence\n")
    with pytest.raises(UserError, match=r"RTE/test.tsv line 5 has 2 tab-separated fields"):
        glue.check_submission_inputs(GlueConfig(task="rte", data_dir=str(tmp_path)))
    (rte / "test.tsv").unlink()  # an absent test split is no error: no submission is written
    glue.check_submission_inputs(GlueConfig(task="rte", data_dir=str(tmp_path)))


def test_a_repeated_test_index_is_refused_with_file_line_and_index(tmp_path):
    # The index is the submission file's id: a repeat would submit two predictions for one row.
    rte = _rte_copy(tmp_path)
    header, first, *_ = (rte / "test.tsv").read_text().splitlines()
    (rte / "test.tsv").write_text(f"{header}\n{first}\n7\ta\tb\n{first}\n")
    index = first.split("\t")[0]
    with pytest.raises(UserError, match=rf"RTE/test.tsv line 4: index {index} repeats line 2's; "
                                        "each test example has its own index"):
        glue.check_submission_inputs(GlueConfig(task="rte", data_dir=str(tmp_path)))


def test_a_test_index_past_64_bits_is_one_line(tmp_path):
    """Was numpy's OverflowError traceback ("Python int too large to convert to C long")."""
    rte = _rte_copy(tmp_path)
    header, first, *_ = (rte / "test.tsv").read_text().splitlines()
    (rte / "test.tsv").write_text(f"{header}\n{first}\n{2**64}\ta\tb\n")
    with pytest.raises(UserError, match=rf"RTE/test.tsv line 3: index {2**64} does not fit 64 "
                                        "bits; GLUE numbers its rows from 0"):
        glue.check_submission_inputs(GlueConfig(task="rte", data_dir=str(tmp_path)))


def test_a_row_with_more_fields_than_its_header_is_named_with_the_likely_cause(tmp_path):
    rte = _rte_copy(tmp_path)
    header = (rte / "train.tsv").read_text().splitlines()[0]
    # A tab inside sentence2 used to read part of the sentence as the label.
    (rte / "train.tsv").write_text(f"{header}\n0\ta\tb\tentailment\n1\ta\tb\tc\tentailment\n")
    with pytest.raises(UserError, match=r"train.tsv line 3 has 5 tab-separated fields but the "
                                        r"header names 4 columns; a tab inside a text field"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "train")
    (rte / "train.tsv").write_text(f"{header}\n0\ta\tb\tentailment\textra\n")  # a trailing field
    with pytest.raises(UserError, match=r"line 2 has 5 tab-separated fields but the header"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "train")
    qqp = tmp_path / "qqp.tsv"  # QQP skips its malformed rows, these too
    qqp.write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\ta\tb\t1\n"
                   "2\t4\t5\ta\tx\tb\t0\n")
    assert glue.read_tsv("qqp", "train", qqp).skipped == 1


@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "42", "-0.5", "five", ""])
def test_an_sts_b_score_off_its_0_to_5_scale_is_refused(tmp_path, score):
    lines = (FIX / "STS-B" / "train.tsv").read_text().splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0] + f"\t{score}"
    path = _write(tmp_path / "train.tsv", "\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"train.tsv line 3: score '{score}' is not a number "
                                        r"from 0 to 5 \(the STS-B scale\)"):
        glue.read_tsv("stsb", "train", path)
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\t5.000"  # the ends of the scale are fine
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t0"
    labels = glue.read_tsv("stsb", "train", _write(path, "\n".join(lines) + "\n")).labels
    assert labels[1:3].tolist() == [5.0, 0.0]


def test_a_glue_file_that_is_a_git_lfs_pointer_says_so(tmp_path):
    rte = _rte_copy(tmp_path)
    (rte / "dev.tsv").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                 f"{'0' * 64}\nsize 123\n")
    with pytest.raises(UserError, match=r"RTE/dev.tsv is a git LFS pointer, not the file itself; "
                                        "fetch the real file with `git lfs"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "dev")


def test_lines_end_at_newline_only_so_a_bare_carriage_return_stays_text(tmp_path):
    """A bare '\\r' inside a sentence used to end the row (csv's and universal newlines' rule):
    the row was then refused as too short, named by a line number no editor shows."""
    rte = _rte_copy(tmp_path)
    header = (rte / "train.tsv").read_text().splitlines()[0]
    (rte / "train.tsv").write_bytes(f"{header}\r\n0\tone\rtwo\tb\tentailment\r\n\r\n"
                                    f"1\tc\td\tnot_entailment\n".encode())
    ex = glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "train")
    assert ex.text_a == ["one\rtwo", "c"] and ex.text_b == ["b", "d"]  # CRLF: no '\r' left
    assert ex.labels.tolist() == [0, 1] and ex.index.tolist() == [0, 1]
    (rte / "train.tsv").write_bytes(f"{header}\n0\ta\rb\tentailment\n".encode())
    with pytest.raises(UserError, match=r"train.tsv line 2 has 3 tab-separated fields"):
        glue.load_split(GlueConfig(task="rte", data_dir=str(tmp_path)), "train")


def test_a_submission_file_this_run_cannot_write_is_named(tmp_path):
    """MNLI's submission is MNLI-m.tsv, MNLI-mm.tsv and AX.tsv; without diagnostic/diagnostic.tsv
    the run wrote the first two and said nothing of the third."""
    from bertjax.glue_eval import warn_stale_submissions

    cfg = config.load([], ["glue.task=mnli", f"glue.data_dir={tmp_path}"])
    mnli = [("mnli", "test_matched"), ("mnli", "test_mismatched")]
    with pytest.warns(UserWarning) as said:
        warn_stale_submissions(cfg, tmp_path / "run", mnli)
    assert [str(w.message) for w in said] == [
        f"{tmp_path / 'run' / 'submission' / 'AX.tsv'} was not written: {tmp_path} has no "
        "diagnostic/diagnostic.tsv (ax test), which GLUE's mnli submission includes; add it and "
        "run again"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_stale_submissions(cfg, tmp_path / "run", [])  # no test file at all: no submission
        warn_stale_submissions(cfg, tmp_path / "run", [*mnli, ("ax", "test")])
    # An RTE run's file in the folder an MNLI run starts over in (the run directory reused).
    (tmp_path / "run" / "submission").mkdir(parents=True)
    (tmp_path / "run" / "submission" / "RTE.tsv").write_text("index\tprediction\n")
    with pytest.warns(UserWarning, match=r"submission holds RTE.tsv of an earlier run \(not "
                                         r"mnli\): not this run's predictions; delete them"):
        warn_stale_submissions(cfg, tmp_path / "run", [*mnli, ("ax", "test")])
