"""Hugging Face interop: parity with transformers' BERT on the hf_tiny fixtures, exact round trips
of the weight mapping, exported directories against what transformers computed on them
(tests/fixtures/hf_export, made by tests/make_hf_export_fixture.py), and clear errors."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from bertjax import config
from bertjax.errors import UserError
from bertjax.hf import (
    bert_from_hf,
    bert_to_hf,
    export_hf,
    import_hf,
)
from bertjax.hf_config import config_from_hf, config_to_hf
from bertjax.model import Bert
from bertjax.pretrained import load_pretrained
from bertjax.starting_points import initial_model
from bertjax.weights import state_dict

FIXTURES = Path(__file__).parent / "fixtures"
HF_TINY = FIXTURES / "hf_tiny"
HF_EXPORT = FIXTURES / "hf_export"
import make_hf_export_fixture as export_fixture  # noqa: E402

TOL = 1e-4  # f32; HF's own f32 rounding at this scale is ~2e-6, converter mistakes are > 1e-3


def forward(model, ref):
    ids, types, mask = (jnp.asarray(ref[k]) for k in ("input_ids", "token_type_ids",
                                                      "attention_mask"))
    return model(ids, types, mask.astype(bool))


def assert_close(ours, theirs, mask=None, tol=TOL):
    diff = np.abs(np.asarray(ours, np.float64) - theirs)
    assert (diff if mask is None else diff[mask]).max() < tol


@pytest.mark.parametrize("name", ["mlm", "cls", "pretrain"])
def test_hf_fixture_parity_at_real_and_pad_positions(name):
    model, cfg, _ = import_hf(HF_TINY / name)
    ref = load_file(str(HF_TINY / name / "reference.safetensors"))
    real = ref["attention_mask"].astype(bool)
    assert cfg.norm == "post" and cfg.hidden_size == 32 and cfg.intermediate_size == 37
    hidden = forward(model, ref)
    # HF computes padded query rows too (they attend to real keys only), and so do we: the
    # outputs match at pad positions as well, so both are checked.
    for mask in (real, ~real):
        assert_close(hidden, ref["hidden_states"], mask)
    if name in ("mlm", "pretrain"):
        logits = ref["logits" if name == "mlm" else "prediction_logits"]
        for mask in (real, ~real):
            assert_close(model.mlm_logits(hidden), logits, mask)
    if name in ("cls", "pretrain"):
        assert_close(model.pooled(hidden), ref["pooler_output"])
    if name == "cls":
        assert model.classifier.bias.shape == (3,) and model.mlm is None
        assert_close(model.classify(hidden), ref["logits"])
    if name == "pretrain":
        assert_close(model.pair_logits(hidden), ref["seq_relationship_logits"])


@pytest.mark.parametrize("name", ["mlm", "cls", "pretrain"])
def test_hf_to_ours_to_hf_gives_the_file_back(name):
    original = load_file(str(HF_TINY / name / "model.safetensors"))
    model, cfg, _ = import_hf(HF_TINY / name)
    back = bert_to_hf(model, cfg, name)
    assert set(back) == set(original)
    for key, value in original.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


@pytest.mark.parametrize("name", list(export_fixture.MODELS))
def test_ours_to_hf_to_ours_is_identical(name):
    model, cfg = export_fixture.build_model(name)
    norm, kind, heads, _ = export_fixture.MODELS[name]
    special = {"pad": 0, "cls": 2, "sep": 3}
    hf_config = json.loads(json.dumps(config_to_hf(cfg, kind, heads["num_labels"], special)))
    back, back_cfg = bert_from_hf(bert_to_hf(model, cfg, kind), hf_config)
    ours, theirs = state_dict(model), state_dict(back)
    assert set(ours) == set(theirs)
    for key in ours:
        assert np.array_equal(ours[key], theirs[key]), key
    for field in ("norm", "num_layers", "hidden_size", "num_heads", "intermediate_size",
                  "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps"):
        assert getattr(back_cfg, field) == getattr(cfg, field), field


def test_a_converter_mistake_is_caught_by_the_parity_tolerance():
    """Honesty check of TOL: a transposed query weight in layer 0 must fail it."""
    sd = load_file(str(HF_TINY / "mlm" / "model.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    sd[key] = np.ascontiguousarray(sd[key].T)
    model, _ = bert_from_hf(sd, json.loads((HF_TINY / "mlm" / "config.json").read_text()))
    ref = load_file(str(HF_TINY / "mlm" / "reference.safetensors"))
    with pytest.raises(AssertionError):
        assert_close(model.mlm_logits(forward(model, ref)), ref["logits"])


@pytest.mark.parametrize("name", list(export_fixture.MODELS))
def test_exported_directory_matches_transformers(name, tmp_path):
    """Our outputs equal what transformers computed on the same export (fixture), and today's
    export is byte-identical to the one the fixture was made from."""
    meta = json.loads((HF_EXPORT / "meta.json").read_text())["models"][name]
    ref = load_file(str(HF_EXPORT / "reference.safetensors"))
    norm, kind, _, _ = export_fixture.MODELS[name]
    model, cfg = export_fixture.build_model(name)
    tok = tmp_path / "tokenizer.json"
    export_fixture.make_tokenizer().save(str(tok))
    note = export_hf(model, cfg, tok, tmp_path / name, kind)
    out = tmp_path / name
    for file in ("model.safetensors", "config.json"):
        assert export_fixture.sha256(out / file) == meta[file], f"{file}: regenerate the fixture"
    assert meta["class"] == json.loads((out / "config.json").read_text())["architectures"][0]
    assert not any(meta["loading_info"].values()) and meta["warnings"] == []
    assert ("right-padded" in note) == (norm == "pre")
    hidden = forward(model, ref)
    real = ref["attention_mask"].astype(bool)
    # Pre-LN: RoBERTa gives pad tokens position row `pad` (zeros), we give them their index, so
    # only real positions match there; post-LN matches everywhere.
    masks = [real] if norm == "pre" else [real, ~real]
    for mask in masks:
        assert_close(hidden, ref[f"{name}.hidden_states"], mask)
    if kind in ("mlm", "pretrain"):
        for mask in masks:
            assert_close(model.mlm_logits(hidden), ref[f"{name}.logits"], mask)
    if kind == "pretrain":
        assert_close(model.pair_logits(hidden), ref[f"{name}.nsp_logits"])
    if kind == "cls":
        assert_close(model.classify(hidden), ref[f"{name}.logits"])
    # And back: import_hf of the exported directory is the same model.
    again, again_cfg, tok_path = import_hf(out)
    assert again_cfg.norm == norm and tok_path == out / "tokenizer.json"
    assert all(np.array_equal(a, state_dict(again)[k]) for k, a in state_dict(model).items())


def test_exported_tokenizer_files_encode_like_transformers_autotokenizer(tmp_path):
    meta = json.loads((HF_EXPORT / "meta.json").read_text())["tokenizer"]
    assert meta["class"] == "BertTokenizer"
    enc = export_fixture.make_tokenizer().encode(*meta["text"])
    assert enc.ids == meta["input_ids"] and enc.type_ids == meta["token_type_ids"]
    model, cfg = export_fixture.build_model("post_mlm")
    tok = tmp_path / "tokenizer.json"
    export_fixture.make_tokenizer().save(str(tok))
    export_hf(model, cfg, tok, tmp_path / "out", "mlm")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= files
    special = json.loads((tmp_path / "out" / "special_tokens_map.json").read_text())
    assert special["mask_token"] == "[MASK]" and special["pad_token"] == "[PAD]"


def test_export_refuses_a_non_empty_directory_and_unsupported_kinds(tmp_path):
    model, cfg = export_fixture.build_model("pre_mlm")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    for force in (False, True):  # force replaces a previous export only
        with pytest.raises(UserError, match="not a previous Hugging Face directory"):
            export_hf(model, cfg, None, tmp_path / "busy", "mlm", force=force)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="pre-LN model as kind='pretrain'"):
        export_hf(model, cfg, None, tmp_path / "new", "pretrain")
    with pytest.raises(UserError, match="classifier head"):
        export_hf(model, cfg, None, tmp_path / "new", "cls")
    mean_pooled = Bert(cfg, key=jax.random.key(0), mlm=False, num_labels=2, pooling="mean")
    with pytest.raises(UserError, match="read \\[CLS\\] only"):
        export_hf(mean_pooled, cfg, None, tmp_path / "new", "cls")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temporary directory left


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "relu"}, "hidden_act='relu' is not supported"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
    ({"model_type": "distilbert"}, "model_type='distilbert' is not supported"),
])
def test_unsupported_configs_are_refused(change, message):
    hf_config = json.loads((HF_TINY / "mlm" / "config.json").read_text()) | change
    with pytest.raises(UserError, match=message):
        config_from_hf(hf_config)


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": "2"}, 'num_hidden_layers="2", which is not int'),
    ({"hidden_dropout_prob": "none"}, 'hidden_dropout_prob="none", which is not float'),
    ({"vocab_size": True}, "vocab_size=true, which is not int"),
    ({"is_decoder": "no"}, 'is_decoder="no", which is not bool'),
    ({"num_attention_heads": 0}, r"describes no model bertjax can build \(model.num_heads=0"),
    (None, "config.json holds a JSON list, not an object"),
])
def test_a_config_json_field_of_the_wrong_type_is_one_line(tmp_path, change, message):
    d = hf_copy(tmp_path)
    hf_config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps([hf_config] if change is None else
                                              hf_config | change))
    with pytest.raises(UserError, match=message) as e:
        load_pretrained(d)
    assert "\n" not in str(e.value)


def hf_copy(tmp_path: Path, name: str = "mlm") -> Path:
    out = tmp_path / name
    shutil.copytree(HF_TINY / name, out)
    return out


def with_vocab_txt(d: Path) -> None:
    """A BERT vocab.txt for the fixtures' 99 rows: the five specials, then w0..w93."""
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(94))]
    (d / "vocab.txt").write_text("".join(f"{p}\n" for p in pieces))


@pytest.mark.parametrize("weights, message", [
    ("pytorch_model.bin", "pickled weights.*convert it to model.safetensors"),
    ("pytorch_model.bin.index.json", "pickled weights.*convert it to model.safetensors"),
    ("tf_model.h5", r"only tf_model.h5.*from_pretrained\(dir, from_tf=True\)"),
    ("flax_model.msgpack", r"only flax_model.msgpack.*from_flax=True")])
def test_weights_bertjax_does_not_read_are_refused_with_the_fix(tmp_path, weights, message):
    d = hf_copy(tmp_path)
    (d / "model.safetensors").rename(d / weights)
    with pytest.raises(UserError, match=message) as e:
        import_hf(d)
    assert "\n" not in str(e.value)


def test_untied_decoder_and_unknown_tensors_are_refused(tmp_path):
    d = hf_copy(tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"] + 1
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(UserError, match="decoder.weight differs"):
        import_hf(d)
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
    sd["bert.encoder.layer.0.attention.self.distance_embedding.weight"] = np.zeros((3, 32))
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(UserError, match="cannot place.*distance_embedding"):
        import_hf(d)


def test_old_gamma_beta_names_and_bare_bertmodel_keys_load(tmp_path):
    d = hf_copy(tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    renamed = {k.removeprefix("bert.").replace("LayerNorm.weight", "LayerNorm.gamma")
               .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in sd.items()
               if k.startswith("bert.")}
    save_file(renamed, str(d / "model.safetensors"))
    model, _, _ = import_hf(d)
    assert model.mlm is None and model.pooler is None
    ref = load_file(str(d / "reference.safetensors"))
    assert_close(forward(model, ref), ref["hidden_states"])


def test_load_pretrained_reads_a_hugging_face_directory():
    p = load_pretrained(HF_TINY / "pretrain")
    assert p.kind == "hf" and p.config is None and p.tokenizer_path is None
    assert p.model.nsp is not None and p.model_cfg.vocab_size == 99
    assert p.label_names == ()  # no classifier


def test_a_classifier_s_class_names_come_from_config_json_id2label(tmp_path):
    # transformers' default names are names too (its pipelines show LABEL_0)
    assert load_pretrained(HF_TINY / "cls").label_names == ("LABEL_0", "LABEL_1", "LABEL_2")
    d = tmp_path / "cls"
    shutil.copytree(HF_TINY / "cls", d)
    config = json.loads((d / "config.json").read_text())
    for id2label, names in [({"0": "no", "1": "maybe", "2": "yes"}, ("no", "maybe", "yes")),
                            (None, ())]:
        (d / "config.json").write_text(json.dumps(config | {"id2label": id2label}))
        assert load_pretrained(d).label_names == names
    # not one name per class (transformers would refuse the weights): said, not dropped silently
    for id2label in ({"0": "no", "1": "yes"}, {"0": "no", "1": "maybe", "3": "yes"}):
        (d / "config.json").write_text(json.dumps(config | {"id2label": id2label}))
        with pytest.warns(UserWarning, match=r"id2label does not name the classifier's 3 classes "
                                             r"0\.\.2 \(it has \d entries\); classes are shown "
                                             "by index"):
            assert load_pretrained(d).label_names == ()


def test_sharded_safetensors_load_like_a_single_file(tmp_path):
    d = hf_copy(tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: sd[k] for k in names}, str(d / shard))
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, names in shards.items() for k in names}}))
    sharded, _, _ = import_hf(d)
    single, _, _ = import_hf(HF_TINY / "mlm")
    for key, value in state_dict(single).items():
        assert np.array_equal(state_dict(sharded)[key], value), key
    # a shard not downloaded was "… does not exist; pass a directory that holds its
    # model.safetensors", which the sharded directory never had
    # a tensor in both shards is taken from the one the index names, not the last one read
    twice = next(k for k in shards["model-00001-of-00002.safetensors"] if "LayerNorm" in k)
    save_file({k: sd[k] for k in shards["model-00002-of-00002.safetensors"]}
              | {twice: np.zeros_like(sd[twice])}, str(d / "model-00002-of-00002.safetensors"))
    again, _, _ = import_hf(d)
    for key, value in state_dict(single).items():
        assert np.array_equal(state_dict(again)[key], value), key
    # a shard without a tensor the index puts there names it
    save_file({k: sd[k] for k in shards["model-00002-of-00002.safetensors"][1:]},
              str(d / "model-00002-of-00002.safetensors"))
    lacking = shards["model-00002-of-00002.safetensors"][0]
    with pytest.raises(UserError, match=rf"model-00002-of-00002.safetensors lacks {lacking} \(1 of "
                       r"the \d+ tensors model.safetensors.index.json puts there\); download"):
        import_hf(d)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match=r"model-00002-of-00002.safetensors is missing \(1 of the 2 "
                       r"shards model.safetensors.index.json lists\); download"):
        import_hf(d)


@pytest.mark.parametrize("change, says", [
    ({"num_hidden_layers": 3}, "says num_hidden_layers=3"),
    (None, r"has no num_hidden_layers \(so transformers' default, 12\)")])
def test_a_config_json_that_disagrees_with_the_weights_says_so(tmp_path, change, says):
    d = hf_copy(tmp_path)
    hf_config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32,
                                               "num_attention_heads": 4} if change is None else
                                              hf_config | change))
    with pytest.raises(UserError, match=f"config.json {says} but the weights hold 2 layers; "
                                        "config.json does not belong to these weights"):
        load_pretrained(d)


def test_weights_without_config_json_name_it(tmp_path):
    d = hf_copy(tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(UserError, match="has model.safetensors but no config.json"):
        load_pretrained(d)
    (d / "config.yaml").write_text("model: {}\n")  # a release bundle's, less its manifest
    with pytest.raises(UserError, match="manifest.json is missing, so .* no complete release"):
        load_pretrained(d)


def test_a_checkpoint_without_a_tokenizer_says_where_it_looked_and_the_fix(tmp_path):
    from bertjax import config
    from bertjax.starting_points import load_start

    start = [f"init.checkpoint={HF_TINY / 'mlm'}"]
    with pytest.raises(UserError, match=r"mlm carries no tokenizer.json \(looked in it.*\) and "
                                        "tokenizer.path is not set; set tokenizer.path="):
        load_start(config.load([], start))
    with pytest.raises(UserError, match=f"tokenizer.path={tmp_path}/no.json is not a file"):
        load_start(config.load([], [*start, f"tokenizer.path={tmp_path}/no.json"]))


def test_a_vocab_txt_only_directory_loads_predicts_and_exports(tmp_path, capsys):
    """Older transformers and Google's BERT releases save vocab.txt without tokenizer.json: such
    a directory was refused (with a transformers command to write the file); now its vocabulary
    is read as transformers' BertTokenizer reads it, for fine-tuning, predict and export."""
    from bertjax import export, predict, tokenizer
    from bertjax.starting_points import load_start

    d = hf_copy(tmp_path)
    with_vocab_txt(d)
    tok = load_start(config.load([], [f"init.checkpoint={d}"]))[2]
    assert tok.encode("W5 w93", "w7").tokens == ["[CLS]", "w5", "w93", "[SEP]", "w7", "[SEP]"]
    predict.main(["fill-mask", str(d), "w1 [MASK] w3"])
    from_vocab = capsys.readouterr().out
    # the same as with the tokenizer.json it stands for
    with_json = shutil.copytree(d, tmp_path / "with_json")
    (with_json / "vocab.txt").unlink()
    (with_json / "tokenizer.json").write_bytes(tokenizer.file_bytes(d / "vocab.txt", tok))
    predict.main(["fill-mask", str(with_json), "w1 [MASK] w3"])
    assert capsys.readouterr().out == from_vocab and "w" in from_vocab
    # and back out as a Hugging Face directory: the same vocab.txt, lowercasing said
    export.main([str(d), str(tmp_path / "hf"), "--format", "hf"])
    assert (tmp_path / "hf" / "vocab.txt").read_text() == (d / "vocab.txt").read_text()
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["do_lower_case"]


def test_a_unigram_tokenizer_exports_its_special_ids_not_its_scores(tmp_path):
    # A Unigram tokenizer.json lists its vocabulary as [token, score] pairs: the special "ids"
    # were read as their scores (floats), and `export --format hf` died in a TypeError traceback.
    from tokenizers import Tokenizer, models

    names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [(t, -0.5 * i) for i, t in enumerate(["x", "y", *names, "a", "b"])]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3))
    tok.save(str(tmp_path / "tokenizer.json"))
    model, cfg = export_fixture.build_model("pre_mlm")
    export_hf(model, cfg, tmp_path / "tokenizer.json", tmp_path / "out", "mlm")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (2, 4, 5)
    assert import_hf(tmp_path / "out")[1] == cfg  # positions offset by pad_token_id + 1
    # Released framed as BERT (the file had no post-processor: transformers would add no [CLS]
    # or [SEP]), and as the generic fast tokenizer, not BertTokenizer (WordPiece only).
    released = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert released.encode("a", "b").ids == [4, 7, 5, 8, 5]
    assert tok.encode("a", "b").ids == [7, 8]
    tokenizer_config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not (tmp_path / "out" / "vocab.txt").exists()


def test_a_bare_bertmodel_s_pooler_is_loaded_and_glue_starts_from_it(tmp_path):
    # BertModel (no heads) keeps a trained pooler; transformers' BertForSequenceClassification
    # starts from it, so a GLUE fine-tune must too (it was dropped: a random pooler)
    d = hf_copy(tmp_path, "pretrain")
    sd = load_file(str(d / "model.safetensors"))
    save_file({k.removeprefix("bert."): v for k, v in sd.items() if k.startswith("bert.")},
              str(d / "model.safetensors"))
    model, cfg, _ = import_hf(d)
    assert model.mlm is None and model.nsp is None and model.classifier is None
    np.testing.assert_array_equal(np.asarray(model.pooler.weight),
                                  sd["bert.pooler.dense.weight"].T)
    glue_cfg = dataclasses.replace(config.load([], ["glue.task=sst2"]), model=cfg)
    start = initial_model(0, load_pretrained(d).model, glue_cfg)
    np.testing.assert_array_equal(np.asarray(start.pooler.weight),
                                  sd["bert.pooler.dense.weight"].T)


@pytest.mark.parametrize("arch", ["BertForTokenClassification", "BertForMultipleChoice"])
def test_a_token_or_multiple_choice_model_s_head_is_left_out(tmp_path, arch):
    # Both name their head `classifier`: a token classifier (no pooler) was refused as "not a
    # complete BERT checkpoint", a multiple-choice head ([1, hidden]) read as a regression head
    d = hf_copy(tmp_path, "cls")
    sd = load_file(str(d / "model.safetensors"))
    hidden = sd["classifier.weight"].shape[1]
    sd["classifier.weight"], sd["classifier.bias"] = np.ones((1, hidden), np.float32), \
        np.zeros(1, np.float32)
    if arch == "BertForTokenClassification":
        sd = {k: v for k, v in sd.items() if "pooler" not in k}
    save_file(sd, str(d / "model.safetensors"))
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"architectures": [arch]}))
    # and said (it was left out without a word; transformers lists the weights it did not use)
    with pytest.warns(UserWarning, match=rf"is a {arch}: its task head \(classifier.bias, "
                      r"classifier.weight\) is left out"):
        model, _, _ = import_hf(d)
    assert model.classifier is None and model.mlm is None
    assert (model.pooler is None) == (arch == "BertForTokenClassification")
    ref = load_file(str(d / "reference.safetensors"))
    assert_close(forward(model, ref), ref["hidden_states"])


def test_a_token_or_span_head_without_architectures_is_told_its_fix(tmp_path):
    # its classifier without a pooler was refused as "lacks bert.pooler.dense.weight; it is not
    # a complete BERT checkpoint": the fix (naming the class) went unsaid
    d = hf_copy(tmp_path, "cls")
    sd = load_file(str(d / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if "pooler" not in k}, str(d / "model.safetensors"))
    config = json.loads((d / "config.json").read_text())
    config.pop("architectures", None)
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"has a classifier but no pooler \(bert.pooler.dense\): a "
                                        r"per-token head \(BertForTokenClassification\) without "
                                        r"`architectures`.*add \"architectures\": "
                                        r"\[\"BertForTokenClassification\"\]"):
        import_hf(d)
    (d / "config.json").write_text(json.dumps(config | {"architectures": [
        "BertForTokenClassification"]}))
    with pytest.warns(UserWarning, match="its task head"):  # as that fix says: the encoder loads
        assert import_hf(d)[0].classifier is None
    # a span head without architectures: the same fix named
    sd = {k.replace("classifier.", "qa_outputs."): v for k, v in sd.items() if "pooler" not in k}
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"cannot place: \['qa_outputs.bias', 'qa_outputs.weight'\]"
                                        r".*add \"architectures\": \[\"BertForQuestionAnswering"):
        import_hf(d)


def test_an_mlm_bias_stored_only_as_the_decoder_s_loads(tmp_path):
    # transformers ties cls.predictions.bias and .decoder.bias both ways; with only the
    # decoder's stored, the MLM head was lost and its transform refused as "cannot place"
    d = hf_copy(tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    sd["cls.predictions.decoder.bias"] = sd.pop("cls.predictions.bias")
    save_file(sd, str(d / "model.safetensors"))
    model, _, _ = import_hf(d)
    ref = load_file(str(d / "reference.safetensors"))
    assert_close(model.mlm_logits(forward(model, ref)), ref["logits"])


@pytest.mark.parametrize("rate, expected", [(0.0, 0.0), (0.3, 0.3), (None, 0.1)])
def test_classifier_dropout_is_read_as_transformers_reads_it(rate, expected):
    # 0.0 was taken for "not set" and replaced by hidden_dropout_prob (0.1)
    hf_config = json.loads((HF_TINY / "cls" / "config.json").read_text())
    model, _ = bert_from_hf(load_file(str(HF_TINY / "cls" / "model.safetensors")),
                            hf_config | {"classifier_dropout": rate})
    assert model.classifier_dropout == expected


def test_an_untied_mlm_head_without_its_decoder_is_said(tmp_path):
    # transformers starts such a decoder at random; bertjax tied it without a word
    d = hf_copy(tmp_path)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"tie_word_embeddings": False}))
    with pytest.warns(UserWarning, match=r"tie_word_embeddings=false but the weights hold no "
                                         r"cls\.predictions\.decoder\.weight: transformers would "
                                         "start that decoder at random; bertjax ties it"):
        import_hf(d)
    import warnings

    with warnings.catch_warnings():  # tied, the default: nothing to say
        warnings.simplefilter("error")
        import_hf(hf_copy(tmp_path / "tied"))


def test_an_exported_classifier_keeps_its_dropout_rate(tmp_path):
    # written as null, transformers fine-tuned the export with hidden_dropout_prob (0.1) instead
    from bertjax import export

    d = hf_copy(tmp_path, "cls")
    with_vocab_txt(d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"classifier_dropout": 0.0}))
    export.main([str(d), str(tmp_path / "out"), "--format", "hf"])
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert out["classifier_dropout"] == 0.0 and out["hidden_dropout_prob"] == 0.1


def test_a_hugging_face_classifier_re_exported_keeps_its_class_names(tmp_path):
    # only a GLUE run's names were passed on: id2label came out as LABEL_0..2
    from bertjax import export

    d = hf_copy(tmp_path, "cls")
    with_vocab_txt(d)
    names = {"0": "negative", "1": "neutral", "2": "positive"}
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"id2label": names, "label2id": {
        name: int(i) for i, name in names.items()}}))
    export.main([str(d), str(tmp_path / "out"), "--format", "hf"])
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert out["id2label"] == names and out["label2id"] == {"negative": 0, "neutral": 1,
                                                            "positive": 2}


@pytest.mark.parametrize("tokenizer_config, warned", [
    (None, True),  # transformers' BertTokenizer: do_lower_case defaults to true
    ({"tokenizer_class": "BertTokenizer"}, True),
    ({"tokenizer_class": "BertTokenizer", "do_lower_case": False}, False),
    ({"tokenizer_class": "PreTrainedTokenizerFast"}, False)])  # follows tokenizer.json
def test_a_tokenizer_json_transformers_would_lowercase_otherwise_is_said(tmp_path,
                                                                        tokenizer_config, warned):
    # transformers 5.25 (measured: AutoTokenizer on such directories) rebuilds a BERT
    # tokenizer's normalizer from tokenizer_config.json, so a cased tokenizer.json there was
    # read cased by bertjax and lowercased by transformers, without a word
    import warnings

    from tokenizers import models, normalizers, pre_tokenizers

    d = hf_copy(tmp_path)
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"W{i}" for i in range(94))]
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.save(str(d / "tokenizer.json"))
    if tokenizer_config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import_hf(d)
    said = [str(w.message) for w in caught if "transformers lowercases" in str(w.message)]
    assert len(said) == int(warned)
    assert not said or "keeps case, but transformers lowercases here" in said[0]


def test_a_multi_label_classifier_is_scored_and_exported_as_one(tmp_path, capsys):
    # config.json's problem_type multi_label_classification: transformers' pipelines give each
    # class its own sigmoid; predict classify showed a softmax over them (summing to 1), and
    # export --format hf dropped the problem_type
    from bertjax import export, predict
    from bertjax.starting_points import load_start

    d = hf_copy(tmp_path, "cls")
    with_vocab_txt(d)
    assert not load_pretrained(d).multi_label
    hf_config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(hf_config | {"problem_type":
                                                           "multi_label_classification"}))
    loaded = load_pretrained(d)
    assert loaded.multi_label
    tok = load_start(config.load([], [f"init.checkpoint={d}"]))[2]
    each = predict.classify(loaded.model, tok, ["w5 w6 w7"], multi_label=True)[0]
    softmax = predict.classify(loaded.model, tok, ["w5 w6 w7"])[0]
    logits = np.log(each) - np.log1p(-each)
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), softmax, rtol=1e-4)
    predict.main(["classify", str(d), "w5 w6 w7"])
    chosen, shown = capsys.readouterr().out.split("\t")[:2]
    assert shown.split() == [x for i, p in enumerate(each) for x in (f"LABEL_{i}", f"{p:.3f}")]
    assert chosen == (",".join(f"LABEL_{i}" for i, p in enumerate(each) if p > 0.5) or "-")
    export.main([str(d), str(tmp_path / "out"), "--format", "hf"])
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert out["problem_type"] == "multi_label_classification"


def test_an_exported_regression_head_says_so():
    # without problem_type, transformers' text-classification pipeline takes a one-label head
    # for a binary classifier and shows sigmoid(score): an STS-B 4.2 became 0.985
    model_cfg = config.load([], ["model.vocab_size=99"]).model
    assert config_to_hf(model_cfg, "cls", 1)["problem_type"] == "regression"
    assert "problem_type" not in config_to_hf(model_cfg, "cls", 3)


def test_hidden_act_gelu_python_is_the_exact_gelu_it_is():
    # transformers' "gelu_python" is GELUActivation(use_gelu_python=True), x * Phi(x) by erf:
    # it was refused as an unsupported activation
    hf_config = json.loads((HF_TINY / "mlm" / "config.json").read_text())
    model, _ = bert_from_hf(load_file(str(HF_TINY / "mlm" / "model.safetensors")),
                            hf_config | {"hidden_act": "gelu_python"})
    ref = load_file(str(HF_TINY / "mlm" / "reference.safetensors"))
    assert_close(model.mlm_logits(forward(model, ref)), ref["logits"])


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_the_tanh_gelu_goes_to_config_json_and_back(norm):
    model_cfg = config.load([], ["model.vocab_size=99", "model.gelu=tanh", f"model.norm={norm}"]
                            ).model
    hf_config = config_to_hf(model_cfg, "mlm")
    assert hf_config["hidden_act"] == "gelu_pytorch_tanh"
    assert config_from_hf(hf_config)[0].gelu == "tanh"
    # transformers' other spellings of the same tanh formula were refused as unsupported
    for act in ("gelu_new", "gelu_fast", "gelu_accurate", "gelu_python_tanh"):
        assert config_from_hf(hf_config | {"hidden_act": act})[0].gelu == "tanh"
    assert config_from_hf(hf_config | {"hidden_act": "gelu"})[0].gelu == "exact"
    # as transformers' heads: BERT's MLM head takes hidden_act, RoBERTa-PreLayerNorm's exact GELU
    model = Bert(model_cfg, key=jax.random.key(0))
    assert model.mlm.approximate_gelu == (norm == "post")
    assert model.encoder.blocks.ffn.approximate_gelu


def test_a_tanh_gelu_checkpoint_computes_the_tanh_gelu():
    """The fixture's weights read as hidden_act gelu_pytorch_tanh: the blocks and BERT's MLM
    head (whose GELU is hidden_act's) take the tanh approximation, which moves the logits past
    the parity tolerance (the fixture's init makes a tanh-GELU mistake visible: its README)."""
    hf_config = json.loads((HF_TINY / "mlm" / "config.json").read_text())
    weights = load_file(str(HF_TINY / "mlm" / "model.safetensors"))
    model, cfg = bert_from_hf(weights, hf_config | {"hidden_act": "gelu_pytorch_tanh"})
    assert cfg.gelu == "tanh" and model.mlm.approximate_gelu
    ref = load_file(str(HF_TINY / "mlm" / "reference.safetensors"))
    logits = np.asarray(model.mlm_logits(forward(model, ref)))
    with pytest.raises(AssertionError):
        assert_close(logits, ref["logits"])
    np.testing.assert_allclose(logits, ref["logits"], atol=0.01)  # the same function, roughly


def test_a_next_sentence_prediction_model_exports_as_one(tmp_path):
    # BertForNextSentencePrediction loaded (encoder, pooler, NSP head), but export --format hf
    # refused it as having "neither an MLM head nor a classifier"
    from bertjax import export

    d = hf_copy(tmp_path, "pretrain")
    sd = {k: v for k, v in load_file(str(d / "model.safetensors")).items()
          if not k.startswith("cls.predictions.")}
    save_file(sd, str(d / "model.safetensors"))
    with_vocab_txt(d)
    export.main([str(d), str(tmp_path / "out"), "--format", "hf"])
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert out["architectures"] == ["BertForNextSentencePrediction"]
    back = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("tokenizer_class, refused", [
    ("BertJapaneseTokenizer", True), ("HerbertTokenizer", True),
    ("BertTokenizerFast", False), ("DistilBertTokenizer", False)])
def test_a_vocab_txt_of_another_tokenizer_class_is_refused(tmp_path, tokenizer_class, refused):
    # cl-tohoku's Japanese BERT (model_type bert) keeps vocab.txt with tokenizer_class
    # BertJapaneseTokenizer (MeCab splits words first): it was read as BertTokenizer's,
    # tokenizing its text into other ids without a word
    from bertjax.starting_points import load_start

    d = hf_copy(tmp_path)
    with_vocab_txt(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class,
                                                         "do_lower_case": False}))
    cfg = config.load([], [f"init.checkpoint={d}"])
    if not refused:
        assert load_start(cfg)[2].encode("w5").tokens == ["[CLS]", "w5", "[SEP]"]
        return
    with pytest.raises(UserError, match=f'tokenizer_class "{tokenizer_class}", whose text '
                       "processing bertjax does not reproduce.*put a tokenizer.json") as e:
        load_start(cfg)
    assert "\n" not in str(e.value)
