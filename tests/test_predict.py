"""Inference (bertjax.predict): batches give the same outputs as one input at a time and compile
once per padded length; inputs longer than the model's positions are cut to them (they used to
crash); the nsp and classify CLIs print what the model computes, from a bundle; an input
without [MASK] is one error line before any output."""

import argparse
import dataclasses
import hashlib
import inspect
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_calls, count_encoded_rows
from make_hf_export_fixture import VOCAB, WORDS, make_tokenizer  # noqa: E402

from bertjax import config, predict
from bertjax import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.export import main as export_main
from bertjax.export import save_bundle
from bertjax.model import Bert
from bertjax.pretrained import load_bundle, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
POSITIONS = 32


@pytest.fixture(scope="module")
def cfg() -> config.Config:
    return config.load([], [f"model.vocab_size={len(VOCAB)}", "model.hidden_size=32",
                            "model.num_layers=2", "model.num_heads=2",
                            "model.intermediate_size=48",
                            f"model.max_position_embeddings={POSITIONS}", "glue.task=mnli"])


@pytest.fixture(scope="module")
def model(cfg) -> Bert:
    return Bert(cfg.model, key=jax.random.key(0), nsp=True, num_labels=3)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(2, 12)))) + "." for _ in range(n)]


def test_batches_equal_one_at_a_time_and_compile_once_per_length(model, monkeypatch):
    tok, texts, pairs = make_tokenizer(), sentences(10), sentences(10, seed=1)
    jax.clear_caches()  # an earlier test may have compiled this shape already
    traces = count_calls(monkeypatch, Bert, "classify")
    batched = predict.classify(model, tok, texts, pairs, batch_size=4)
    assert len(traces) == 1  # 3 batches of 4 rows, all within 32 tokens
    single = np.concatenate([predict.classify(model, tok, [a], [b], batch_size=1)
                             for a, b in zip(texts, pairs, strict=True)])
    assert batched.shape == (10, 3)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    tok.add_special_tokens(["[MASK]"])  # the fixture tokenizer has it in its vocabulary only
    masked = [t.replace(t.split()[0], "[MASK]", 1) + " [MASK]" for t in texts[:5]]
    top = predict.fill_mask(model, tok, masked, top_k=3, batch_size=2)
    assert [len(m) for m in top] == [2] * 5 and all(len(k) == 3 for m in top for k in m)
    for text, expected in zip(masked, top, strict=True):
        for got, want in zip(predict.fill_mask(model, tok, [text], top_k=3)[0], expected,
                             strict=True):
            assert [t for t, _ in got] == [t for t, _ in want]
            np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)


def test_inputs_are_tokenized_a_chunk_at_a_time_with_the_same_outputs(model, monkeypatch):
    # `classify --file` tokenized the whole file at once: its Encoding objects take ~20 times
    # the arrays kept (GLUE encoding's 2.8 GB peak on MNLI). Now whole batches at a time.
    tok, texts, pairs = make_tokenizer(), sentences(11), sentences(11, seed=2)
    long = " ".join(sentences(8))  # cut: the warning counts the cuts of every chunk
    texts[3] = texts[9] = long
    with pytest.warns(UserWarning, match="^2 input"):
        whole = predict.classify(model, tok, texts, pairs, batch_size=2)
    seen = count_encoded_rows(monkeypatch, 5)
    with pytest.warns(UserWarning, match="^2 input"):
        chunked = predict.classify(model, tok, texts, pairs, batch_size=2)
    assert seen == [4, 4, 3]  # whole batches of 2 per chunk
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    tok.add_special_tokens(["[MASK]"])  # the fixture tokenizer has it in its vocabulary only
    masked = [t + " [MASK]" for t in sentences(5)]
    seen.clear()
    assert [len(m) for m in predict.fill_mask(model, tok, masked, top_k=2, batch_size=3)] == \
        [1] * 5
    assert seen == [3, 2]


def test_inputs_longer_than_the_positions_are_cut(model):
    # Past the cut nothing counts (before, such an input crashed: more tokens than positions).
    tok = make_tokenizer()
    long = " ".join(sentences(8))
    assert len(tok.encode(long).ids) > POSITIONS
    with pytest.warns(UserWarning, match=f"1 input.* longer than the model's {POSITIONS} "):
        probs = predict.classify(model, tok, [long])
    with pytest.warns(UserWarning):
        longer = predict.classify(model, tok, [long + " the cat sat on the mat."])
    np.testing.assert_array_equal(probs, longer)
    with pytest.warns(UserWarning):
        pair = predict.next_sentence(model, tok, [long], ["the dog ran."])
    assert 0.0 < pair[0] < 1.0


def test_no_inputs_give_no_rows(model):
    # the library functions (the CLI refuses empty input first) failed in np.concatenate
    tok = make_tokenizer()
    assert predict.classify(model, tok, []).shape == (0, 3)
    assert predict.next_sentence(model, tok, [], []).shape == (0,)
    assert predict.fill_mask(model, tok, []) == []


def test_library_calls_refuse_one_string_and_a_missing_head_in_one_line(model, cfg, tmp_path):
    # In a notebook: one string was read as one input per character (fill_mask gave 17 empty
    # answers), and a model without the head failed inside jit ("'NoneType' object is not
    # callable"); the CLI checks both before it calls these. Unwrapped: the tests' type checker
    # (pyproject's --jaxtyping-packages) refuses a string itself, a user's Python does not.
    tok = make_tokenizer()
    fill_mask, classify, next_sentence = (inspect.unwrap(f) for f in (
        predict.fill_mask, predict.classify, predict.next_sentence))
    with pytest.raises(UserError, match=r"fill_mask: texts is one string, .*pass \[texts\]"):
        fill_mask(model, tok, "the [MASK] is here.")
    with pytest.raises(UserError, match="classify: pairs is one string"):
        classify(model, tok, ["a b"], "c d")
    with pytest.raises(UserError, match="next_sentence: first is one string"):
        next_sentence(model, tok, "a b", ["c d"])
    bare = eqx.tree_at(lambda m: (m.classifier, m.nsp), model, (None, None),
                       is_leaf=lambda x: x is None)
    with pytest.raises(UserError, match=r"^the model has no GLUE head \(fine-tune it first\), "
                                        "which classify needs$"):
        predict.classify(bare, tok, ["a b"])
    with pytest.raises(UserError, match="^the model has no NSP head, which next_sentence needs$"):
        predict.next_sentence(bare, tok, ["a b"], ["c d"])
    # The CLI says it through the same check, naming the checkpoint.
    path = str(save_bundle(bare, cfg, tok, tmp_path / "bare"))
    with pytest.raises(UserError, match=rf"^{path} has no NSP head, which `nsp` needs$"):
        predict.main(["nsp", path, "a b\tc d"])


def direct(model: Bert, tok, a: str, b: str) -> tuple[float, np.ndarray]:
    """P(IsNext) and class probabilities computed straight from the model, one pair."""
    e = tok.encode(a, b)
    ids, types = jnp.asarray([e.ids]), jnp.asarray([e.type_ids])
    mask = jnp.ones_like(ids, dtype=bool)
    hidden = model(ids, types, mask)
    return (float(jax.nn.softmax(model.pair_logits(hidden))[0, 0]),
            np.asarray(jax.nn.softmax(model.classify(hidden, mask))[0]))


@pytest.fixture(scope="module")
def bundle(model, cfg, tmp_path_factory) -> Path:
    return save_bundle(model, cfg, make_tokenizer(), tmp_path_factory.mktemp("b") / "bundle")


@pytest.mark.slow
def test_nsp_and_classify_cli_print_the_model_probabilities(model, bundle, tmp_path):
    tok = make_tokenizer()
    pairs = list(zip(sentences(3), sentences(3, seed=2), strict=True))
    inputs = tmp_path / "pairs.tsv"
    inputs.write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
    hf_dir = tmp_path / "hf"  # the same classifier exported for transformers: id2label
    export_main([str(bundle), str(hf_dir), "--format", "hf"])  # names its classes
    for command, source in (("nsp", bundle), ("classify", bundle), ("classify", hf_dir)):
        out = subprocess.run([sys.executable, "-m", "bertjax.predict", command, str(source),
                              "--file", str(inputs), "--batch-size", "2"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 3
        for line, (a, b) in zip(lines, pairs, strict=True):
            p_next, probs = direct(model, tok, a, b)
            assert line.endswith(f"\t{a} || {b}")  # both sentences (classify once showed a)
            if command == "nsp":
                assert float(re.match(r"P\(IsNext\) ([\d.]+)\t", line).group(1)) == \
                    pytest.approx(p_next, abs=1e-3)
            else:  # the predicted class, then MNLI's label names in GLUE's order
                chosen, shown = line.split("\t")[:2]
                shown = dict(re.findall(r"(\w+) ([\d.]+)", shown))
                assert list(shown) == ["contradiction", "entailment", "neutral"]
                np.testing.assert_allclose([float(v) for v in shown.values()], probs,
                                           atol=1e-3)
                assert chosen == list(shown)[int(np.argmax(probs))]


@pytest.mark.slow
def test_outputs_stream_batch_by_batch_and_a_closed_pipe_ends_quietly(bundle, tmp_path):
    """`classify --file` printed nothing until every input was computed, and `| head` then
    ended it with a BrokenPipeError traceback (exit 1). Now each batch prints as it is done,
    and a reader that stops reading ends the run: no traceback, SIGPIPE's code (141)."""
    inputs = tmp_path / "many.tsv"  # ~170 kB of output: more than a pipe holds
    inputs.write_text("".join(f"{a}\t{b}\n" for a, b in zip(sentences(2000), sentences(
        2000, seed=3), strict=True)))
    run = subprocess.Popen([sys.executable, "-m", "bertjax.predict", "classify", str(bundle),
                            "--file", str(inputs), "--batch-size", "8"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run.stdout.readline()
    run.stdout.close()
    assert run.wait(timeout=300) == 141 and run.stderr.read() == ""
    assert re.match(r"\w+\tcontradiction [\d.]+  entailment [\d.]+  neutral [\d.]+\t\w", first)
    # In process: a reader gone after the first line leaves the other 249 batches uncomputed.
    batches, probs = [], predict._class_probs

    class ClosedAfterOneLine(io.StringIO):
        def write(self, text):
            if self.getvalue():
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    def counted(*args, **kwargs):
        batches.append(1)
        return probs(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict, "_class_probs", counted)
        mp.setattr(sys, "stdout", ClosedAfterOneLine())
        with pytest.raises(BrokenPipeError):
            predict.main(["classify", str(bundle), "--file", str(inputs), "--batch-size", "8"])
    assert len(batches) == 1  # the second line, still the first batch's, found the pipe closed


def test_classify_names_the_predicted_class_where_the_rounded_figures_tie(bundle, monkeypatch,
                                                                           capsys):
    """RTE dev rows at 0.50005 / 0.49995 printed as 0.500 / 0.500: the class the model chose, and
    that dev accuracy counts, could not be read off (helper probe, session 42)."""
    near_tie = jnp.asarray([[0.33332, 0.33336, 0.33332]], jnp.float32)
    monkeypatch.setattr(predict, "_class_probs", lambda *args, **kwargs: jnp.broadcast_to(
        near_tie, (args[1].shape[0], 3)))
    predict.main(["classify", str(bundle), "the cat sat .\tthe dog ran ."])
    assert capsys.readouterr().out == "entailment\tcontradiction 0.333  entailment 0.333  " \
                                      "neutral 0.333\tthe cat sat . || the dog ran .\n"


def test_nsp_on_an_sop_model_prints_the_probability_of_the_order(model, cfg, tmp_path, capsys):
    """The pair head's class 0 of a sentence-order model means "in order", not "IsNext"."""
    sop = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, objective="mlm+sop"))
    path = save_bundle(model, sop, make_tokenizer(), tmp_path / "sop")
    predict.main(["nsp", str(path), "the cat sat .", "the dog ran ."])
    assert re.fullmatch(r"P\(in order\) [\d.]+\tthe cat sat \. \|\| the dog ran \.\n",
                        capsys.readouterr().out)


@pytest.mark.slow
def test_fill_mask_cli_refuses_an_input_without_a_mask(bundle):
    out = subprocess.run([sys.executable, "-m", "bertjax.predict", "fill-mask", str(bundle),
                          "the [MASK] sat.", "the cat sat."], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and out.stdout == "", out.stdout
    assert out.stderr.strip() == ("error: input 2 has no [MASK] token (1 of 2 inputs have none); "
                                  "fill-mask needs one per input")


def test_a_hugging_face_directory_without_a_tokenizer_is_told_what_to_put_there(capsys):
    # It said "carries no tokenizer.json; export it with one": export writes bertjax's runs, and
    # a Hugging Face directory's vocab.txt is a tokenizer too (glue_score's words, now both).
    mlm = ROOT / "tests" / "fixtures" / "hf_tiny" / "mlm"  # weights and config.json only
    with pytest.raises(UserError, match=r"mlm carries no tokenizer \(tokenizer.json, or a Hugging "
                       r"Face directory's vocab.txt\); put the one its weights were trained "
                       r"with beside them$"):
        predict.main(["fill-mask", str(mlm), "the [MASK] sat."])
    assert capsys.readouterr().out == ""



def test_a_loaded_model_gives_its_checked_tokenizer(bundle, model):
    """From Python a tokenizer took `load_tokenizer(p.tokenizer_path, p.kind, path)`; now
    `p.tokenizer()`, with the CLI's checks (none carried; one the model's table cannot hold)."""
    pretrained = load_pretrained(bundle)
    tok = pretrained.tokenizer()
    assert tok.get_vocab() == make_tokenizer().get_vocab()
    mlm = ROOT / "tests" / "fixtures" / "hf_tiny" / "mlm"  # weights and config.json only
    with pytest.raises(UserError, match=rf"^{re.escape(str(mlm))} carries no tokenizer \("):
        load_pretrained(str(mlm)).tokenizer()
    small = dataclasses.replace(pretrained, model=eqx.tree_at(
        lambda m: m.encoder.embeddings.word, model, model.encoder.embeddings.word[:10]))
    with pytest.raises(UserError, match=r"tokens but the model's vocabulary has 10 rows"):
        small.tokenizer()

# ---- issue 19: argument and input mistakes are one line, before the model is loaded ----
@pytest.mark.parametrize("argv, fragment", [
    (["fill-mask"], "required: checkpoint.*; usage: python -m bertjax.predict"),
    ([], "required: command, checkpoint; usage"),  # not TEXT: --file may stand for it
    (["fill-mask", "x", "a [MASK]", "--top-k", "x"], "--top-k: invalid int value: 'x'; usage"),
    (["guess", "x", "a"], "invalid choice: 'guess'"),
    # "" (an unset shell variable) read as the current directory
    (["fill-mask", "", "a [MASK]"], "argument checkpoint: an empty path .*; usage"),
    (["fill-mask", "x", "--file", " "], "argument --file: an empty path .*; usage"),
])
def test_argument_errors_are_one_line_with_the_usage(argv, fragment):
    with pytest.raises(UserError, match=fragment) as e:
        predict.main(argv)
    assert "\n" not in str(e.value)


def test_a_bad_input_file_names_file_line_and_byte(bundle, tmp_path):
    with pytest.raises(UserError, match=f"--file {tmp_path} is a directory, not a file"):
        predict.main(["fill-mask", str(bundle), "--file", str(tmp_path)])
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("the [MASK] sat\nthe caf\xe9 [MASK]\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt line 2: not valid UTF-8 \(byte 0xe9 at "
                                        r"column 8, file offset 22\)"):
        predict.main(["fill-mask", str(bundle), "--file", str(latin)])


@pytest.mark.parametrize("lines, text, fragment", [
    ("a\tb\tc\n", [], r"line 1 has 3 tab-separated columns"),
    ("a\tb\nsingle\n", [], r"line 1 is a pair \(first<TAB>second\) but .* line 2 is a single"),
    ("a\t \n", [], r"line 1 is empty on one side of its tab"),
    ("a\n", ["text"], r"got 1 TEXT argument\(s\) and --file"),
    (None, [""], r"TEXT argument 1 is empty"),
    (None, ["a\tb", "c"], r"TEXT argument 1 is a pair .* but TEXT argument 2 is a single"),
], ids=["three-columns", "mixed", "empty-half", "text-and-file", "empty-text", "mixed-text"])
def test_malformed_inputs_are_refused_before_the_model_is_loaded(tmp_path, lines, text, fragment):
    argv = ["classify", str(tmp_path / "no-such-checkpoint"), *text]
    if lines is not None:
        (tmp_path / "in.txt").write_text(lines)
        argv += ["--file", str(tmp_path / "in.txt")]
    with pytest.raises(UserError, match=fragment):
        predict.main(argv)


def test_text_after_file_is_read_as_text_and_a_pair_is_no_fill_mask_input(tmp_path):
    (tmp_path / "in.txt").write_text("a [MASK]\n")
    with pytest.raises(UserError, match=r"got 1 TEXT argument\(s\) and --file"):
        predict.main(["fill-mask", str(tmp_path), "--file", str(tmp_path / "in.txt"), "text"])
    with pytest.raises(UserError, match="fill-mask takes single texts"):
        predict.main(["fill-mask", str(tmp_path), "a [MASK]\tb"])


def test_a_byte_order_mark_is_no_part_of_the_first_input(tmp_path):
    (tmp_path / "in.txt").write_bytes("\ufeffa [MASK]\tb\nc\td\n".encode())
    args = argparse.Namespace(command="classify", text=[], file=str(tmp_path / "in.txt"))
    assert predict._inputs(args) == (["a [MASK]", "c"], ["b", "d"])


def test_file_dash_reads_standard_input(monkeypatch):
    """`... | predict ... --file -` was "--file - does not exist"."""
    def stdin(data: bytes):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))

    args = argparse.Namespace(command="classify", text=[], file="-")
    stdin("\ufeffa\tb\r\n\nc\td\n".encode())
    assert predict._inputs(args) == (["a", "c"], ["b", "d"])
    stdin("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"--file - \(standard input\): not valid UTF-8 \(byte "
                                        r"0xe9 at offset 3\)"):
        predict._inputs(args)


def rehashed_copy(bundle: Path, to: Path, edit: dict) -> Path:
    """A copy of `bundle` with files replaced ({name: text}) and its manifest re-hashed."""
    copy = Path(shutil.copytree(bundle, to))
    manifest = json.loads((copy / "manifest.json").read_text())
    for name, text in edit.items():
        (copy / name).write_text(text)
        data = (copy / name).read_bytes()
        manifest["files"][name] |= {"sha256": hashlib.sha256(data).hexdigest(),
                                    "size": len(data)}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("text", ["", "model:\n  vocab_size: null\n"], ids=["empty", "null"])
def test_a_bundle_config_without_a_vocabulary_size_is_named(bundle, tmp_path, text):
    copy = rehashed_copy(bundle, tmp_path / "b", {"config.yaml": text})
    with pytest.raises(UserError, match=f"{copy}/config.yaml does not record model.vocab_size"):
        predict.main(["fill-mask", str(copy), "the [MASK] sat ."])


def test_a_missing_bundle_names_its_manifest_and_the_fix(tmp_path):
    (tmp_path / "seed0").mkdir()
    with pytest.raises(UserError, match=f"{tmp_path}/seed0/best/manifest.json is missing.*delete "
                                        f"{tmp_path}/seed0 and run the same command again"):
        load_bundle(tmp_path / "seed0" / "best")
    with pytest.raises(UserError, match="copy the whole bundle directory, or export it again"):
        load_bundle(tmp_path)


def test_a_damaged_tokenizer_json_of_a_checkpoint_says_to_fetch_it_again(bundle, tmp_path):
    """It said "set tokenizer.path to a tokenizer.json or null to train one": a training key,
    meaningless to predict. The fix is the directory's own file, downloaded or exported again."""
    damaged = '{"model": {'
    hf_dir = tmp_path / "hf"
    export_main([str(bundle), str(hf_dir), "--format", "hf"])
    (hf_dir / "tokenizer.json").write_text(damaged)
    copy = rehashed_copy(bundle, tmp_path / "b", {"tokenizer.json": damaged})
    for source, fix in ((hf_dir, rf"download {hf_dir}'s tokenizer.json again"),
                        (copy, rf"download the bundle {copy} again, or export it again")):
        with pytest.raises(UserError, match=rf"{source}/tokenizer.json is not a valid "
                                            rf"tokenizer.json \(.*\); {fix}") as e:
            predict.main(["fill-mask", str(source), "the [MASK] sat ."])
        assert "tokenizer.path" not in str(e.value) and "\n" not in str(e.value)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(cfg, tmp_path):
    small = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                               vocab_size=len(VOCAB) - 4))
    model = Bert(small.model, key=jax.random.key(1))
    bundle = save_bundle(model, small, make_tokenizer(), tmp_path / "small")
    with pytest.raises(UserError, match=f"has {len(VOCAB)} tokens but the model's vocabulary has "
                                        f"{len(VOCAB) - 4} rows"):
        predict.main(["fill-mask", str(bundle), "the [MASK] sat ."])


def test_rows_past_the_tokenizer_are_never_predicted_and_far_more_rows_are_warned_of(cfg,
                                                                                     tmp_path):
    """A table padded past its tokenizer printed `None` for the rows without a token; a table
    hundreds of rows larger than its tokenizer (another model's tokenizer) passed unsaid."""
    rows = len(VOCAB) + 200
    big = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=rows))
    model = Bert(big.model, key=jax.random.key(2))
    # the padding rows' bias far above the rest: each would be the top prediction
    model = eqx.tree_at(lambda m: m.mlm.bias, model,
                        model.mlm.bias.at[len(VOCAB):].set(50.0))
    tok = make_tokenizer()
    tok.add_special_tokens(["[MASK]"])
    tokens = len(set(VOCAB))  # one word is in VOCAB twice: its first id has no token
    predictions = predict.fill_mask(model, tok, ["the [MASK] sat ."], top_k=tokens)
    assert None not in [token for token, _ in predictions[0][0]]
    assert sum(p for _, p in predictions[0][0]) == pytest.approx(1.0, abs=1e-4)
    bundle = save_bundle(model, big, make_tokenizer(), tmp_path / "big")
    with pytest.warns(UserWarning, match=f"has {len(VOCAB)} tokens but the model's vocabulary "
                                         f"has {rows} rows; if it is not the model's own"):
        predict.main(["fill-mask", str(bundle), "the [MASK] sat ."])


def test_a_top_k_beyond_the_vocabulary_is_refused_before_any_output(bundle, model, capsys):
    tokens = len(set(VOCAB))  # one word is in VOCAB twice: its first id has no token
    with pytest.raises(UserError, match=f"top-k {len(VOCAB) + 1}: the model's vocabulary has "
                                        f"{tokens} tokens, so ask for 1 to {tokens}"):
        predict.main(["fill-mask", str(bundle), "the [MASK] sat .", "--top-k",
                      str(len(VOCAB) + 1)])
    assert capsys.readouterr().out == ""  # not the whole vocabulary, cut short
    tok = make_tokenizer()
    tok.add_special_tokens(["[MASK]"])  # the fixture tokenizer has it in its vocabulary only
    everything = predict.fill_mask(model, tok, ["the [MASK] sat ."], tokens)
    assert len(everything[0][0]) == tokens  # the whole vocabulary, when asked for exactly


def test_fill_mask_reads_as_many_slots_as_masks(model, monkeypatch):
    """The vocabulary logits and top-k ran for 16 slots per row whatever the [MASK]s: a third
    of fill-mask's time with one [MASK] per text."""
    tok = make_tokenizer()
    tok.add_special_tokens(["[MASK]"])
    slots, top_k = [], predict._top_k

    def recorded(model, ids, types, mask, k, positions, *rest):
        slots.append(positions.shape[1])
        return top_k(model, ids, types, mask, k, positions, *rest)

    monkeypatch.setattr(predict, "_top_k", recorded)
    texts = [t.replace(t.split()[0], "[MASK]", 1) for t in sentences(3)]
    predict.fill_mask(model, tok, texts, top_k=2)
    predict.fill_mask(model, tok, [t + " [MASK] [MASK]" for t in texts], top_k=2)
    assert slots == [1, 4]


def test_a_fill_mask_sentence_cut_before_its_mask_ends_a_pretraining_run_cleanly(
        cfg, model, capsys, monkeypatch, tmp_path):
    """train.fill_mask with a [MASK] past the model's positions: an IndexError traceback at the
    end of a finished pretraining run (predict's CLI said so already)."""
    from bertjax import plot, pretrain
    monkeypatch.setattr(plot, "plot_finished_run", lambda run_dir: None)
    tok = make_tokenizer()
    tok.add_special_tokens(["[MASK]"])
    long = " ".join(["the"] * (2 * POSITIONS)) + " [MASK] ."
    run = object.__new__(pretrain.Run)  # finish reads only these three
    run.run_dir, run.tokenizer = tmp_path, tok
    run.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, fill_mask=[long]))
    pretrain.finish(run, model)
    assert "[MASK] lies beyond the model's positions" in capsys.readouterr().out


def test_classify_refuses_single_texts_for_a_pair_task_and_pairs_for_a_single_one(
        model, cfg, tmp_path, capsys):
    """`classify MNLI_RUN "a" "b"` (nsp's spelling of a pair) classified "a" and "b" each
    alone, exit 0; the task recorded in the fine-tuned config says which the model reads."""
    def glue_bundle(task):
        fine_tuned = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, task="glue"),
                                         glue=dataclasses.replace(cfg.glue, task=task))
        return str(save_bundle(model, fine_tuned, make_tokenizer(), tmp_path / task))

    mnli = glue_bundle("mnli")
    with pytest.raises(UserError, match="fine-tuned on MNLI, which classifies sentence pairs, "
                                        "but the inputs are single texts"):
        predict.main(["classify", mnli, "the cat sat .", "the dog sat ."])
    with pytest.raises(UserError, match="fine-tuned on SST-2, which classifies single sentences"):
        predict.main(["classify", glue_bundle("sst2"), "the cat sat .\tthe dog sat ."])
    assert capsys.readouterr().out == ""
    predict.main(["classify", mnli, "the cat sat .\tthe dog sat ."])
    assert capsys.readouterr().out.endswith("\tthe cat sat . || the dog sat .\n")


def test_classify_cuts_a_glue_model_s_inputs_as_its_dev_set_was_cut(model, cfg, tmp_path,
                                                                      capsys, monkeypatch):
    """A fine-tune cuts its dev pairs to its largest bucket; classify cut them only to the
    model's positions, so its scores on the dev file disagreed with the run's dev metrics."""
    fine_tuned = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, task="glue"),
                                     glue=dataclasses.replace(cfg.glue, buckets=[8]))
    path = str(save_bundle(model, fine_tuned, make_tokenizer(), tmp_path / "mnli"))
    a, b = " ".join(WORDS[:12]) + " .", "the dog sat ."
    lengths, encode = [], tokenizer_lib.encode_truncated

    def recorded(tok, texts, pairs, max_len, *args):
        out = encode(tok, texts, pairs, max_len, *args)
        lengths.append(max(len(e.ids) for e in out[0]))
        return out

    monkeypatch.setattr(tokenizer_lib, "encode_truncated", recorded)
    with pytest.warns(UserWarning, match="the 8 tokens it was fine-tuned and evaluated on"):
        predict.main(["classify", path, f"{a}\t{b}"])
    shown = [float(v) for v in re.findall(r"\w+ ([\d.]+)",
                                                  capsys.readouterr().out.split("\t")[1])]
    cut = encode(make_tokenizer(), [a], [b], 8)[0][0]
    ids, types = jnp.asarray([cut.ids]), jnp.asarray([cut.type_ids])
    mask = jnp.ones_like(ids, dtype=bool)
    probs = np.asarray(jax.nn.softmax(model.classify(model(ids, types, mask), mask))[0])
    np.testing.assert_allclose(shown, probs, atol=1e-3)
    assert lengths == [8]  # (a random model's probabilities hardly move with the cut)
    # From Python the same: classify took no length and cut to the model's positions only.
    pretrained = load_pretrained(path)
    with pytest.warns(UserWarning, match="the 8 tokens it was fine-tuned and evaluated on"):
        library = predict.classify(pretrained.model, make_tokenizer(), [a], [b],
                                   max_len=predict.fine_tuned_length(pretrained))
    np.testing.assert_allclose(library[0], probs, atol=1e-5)
    assert lengths == [8, 8]


def test_a_file_line_ends_at_a_newline_only(tmp_path):
    """str.splitlines also broke at U+2028, U+0085 and form feeds inside a sentence: a 3-line
    file gave 4 predictions, out of step with its lines (the GLUE reader keeps them whole)."""
    (tmp_path / "in.txt").write_bytes("a\u2028b\tc\r\nd\x85e\tf\n\ng\x0ch\ti\n".encode())
    args = argparse.Namespace(command="classify", text=[], file=str(tmp_path / "in.txt"))
    assert predict._inputs(args) == (["a\u2028b", "d\x85e", "g\x0ch"], ["c", "f", "i"])


def test_fill_mask_says_which_masks_the_cut_took(model, capsys):
    """A second [MASK] past the model's positions was dropped without a word for that input."""
    tok = make_tokenizer()
    tok.add_special_tokens(["[MASK]"])
    long = "[MASK] " + " ".join(["the"] * (2 * POSITIONS)) + " [MASK] [MASK] ."
    args = argparse.Namespace(command="fill-mask", top_k=2, batch_size=8)
    predict.print_predictions(args, argparse.Namespace(model=model), tok, ([long], None))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("  [MASK] 1: ")
    assert out[2] == "  [MASK] 2 on: beyond the model's positions (the input was cut)"
