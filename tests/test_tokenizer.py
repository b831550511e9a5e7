"""Tokenizer: WordPiece training (specials, post-processor, reproducible), loading a
bert-base-style tokenizer.json whose specials are 0/100/101/102/103, and clear errors."""

import json
from pathlib import Path

import pytest
from conftest import WORDS, bert_style_tokenizer, sentences
from tokenizers import Tokenizer, models

from bertjax import tokenizer
from bertjax.config import TokenizerConfig
from bertjax.errors import UserError


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return tokenizer.train(lambda: sentences(400), TokenizerConfig(vocab_size=300))


def test_specials_come_first_and_post_processor_frames_pairs(trained):
    assert tokenizer.special_tokens(trained) == tokenizer.SpecialTokens(0, 1, 2, 3, 4)
    single = trained.encode("The cat sat.")
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]"
    pair = trained.encode("The cat sat.", "A dog ran.")
    sep = pair.tokens.index("[SEP]")
    assert pair.type_ids[: sep + 1] == [0] * (sep + 1)
    assert pair.type_ids[sep + 1:] == [1] * (len(pair.ids) - sep - 1)
    assert pair.tokens[-1] == "[SEP]"


def test_lowercase_option_and_decoder(trained):
    assert trained.decode(trained.encode("The CAT sat.").ids) == "the cat sat."
    cased = tokenizer.train(lambda: sentences(200),
                            TokenizerConfig(vocab_size=300, lowercase=False))
    assert "The" in cased.encode("The cat").tokens


def test_retraining_on_the_same_text_gives_the_same_file(trained):
    # Hugging Face's trainer alone breaks count ties in hash-map order (tokenizers#1794): eight
    # trainings of these sentences in one process gave eight different files.
    for _ in range(3):
        again = tokenizer.train(lambda: sentences(400), TokenizerConfig(vocab_size=300))
        assert again.to_str() == trained.to_str()
    assert all(tokenizer.special_tokens(trained).unk not in e.ids
               for e in trained.encode_batch(sentences(50, seed=3)))


def test_continuing_pieces_are_plain_vocabulary(trained):
    # train() hands them to the trainer as specials; left so, they would be cut out of decoded
    # text and matched whole in raw text
    assert sorted(trained.get_added_tokens_decoder()) == [0, 1, 2, 3, 4]
    pieces = trained.encode("catsdogs", add_special_tokens=False).tokens
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert trained.decode(trained.encode("catsdogs").ids) == "catsdogs"
    assert "##s" in trained.get_vocab() and "##s" not in trained.encode("x##s").tokens


def test_save_load_round_trip_is_exact(trained, tmp_path):
    sha1 = tokenizer.save(trained, tmp_path / "a.json")
    loaded = tokenizer.load(tmp_path / "a.json")
    sha2 = tokenizer.save(loaded, tmp_path / "b.json")
    assert sha1 == sha2 == tokenizer.sha256_file(tmp_path / "b.json")
    text = sentences(50, seed=1)
    assert [e.ids for e in loaded.encode_batch(text)] == [e.ids for e in trained.encode_batch(text)]
    assert not list(tmp_path.glob("*.tmp"))


def test_load_bert_base_style_ids(tmp_path):
    bert_style_tokenizer(tmp_path / "tokenizer.json")
    tok = tokenizer.load(tmp_path / "tokenizer.json")
    assert tokenizer.special_tokens(tok) == (0, 100, 101, 102, 103)
    assert tokenizer.vocab_size(tok) == 104 + len(WORDS) + 2


def test_missing_file_bad_json_and_missing_specials_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        tokenizer.load(tmp_path / "bad.json")
    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.save(str(tmp_path / "few.json"))
    with pytest.raises(UserError, match=r"no \[PAD\], \[CLS\], \[SEP\], \[MASK\]"):
        tokenizer.load(tmp_path / "few.json")
    assert json.loads((tmp_path / "few.json").read_text())["model"]["type"] == "WordPiece"


def test_an_lfs_pointer_is_named_as_such(tmp_path):
    """A checkout without `git lfs pull` (tokenizer.path, or a prepared tokenizer.json)."""
    (tmp_path / "tokenizer.json").write_text("version https://git-lfs.github.com/spec/v1\n"
                                             f"oid sha256:{'0' * 64}\nsize 1234\n")
    with pytest.raises(UserError, match=r"tokenizer.json is a git LFS pointer.*git lfs pull"):
        tokenizer.load(tmp_path / "tokenizer.json")


def test_special_tokens_written_in_text_are_text_but_for_fill_masks_mask(tmp_path):
    # A "[SEP]" in a GLUE sentence was a separator (a third segment the model never saw in
    # pretraining, where prepare encodes it as text), "[MASK]" a mask, "[CLS]" a second [CLS].
    tok = bert_style_tokenizer(tmp_path / "tokenizer.json")
    (enc,), _ = tokenizer.encode_truncated(tok, ["the [SEP] cat [MASK]"], ["a [CLS] dog"], 32)
    cls, sep, mask = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
    assert enc.ids.count(cls) == 1 and enc.ids.count(sep) == 2 and mask not in enc.ids  # frame
    (masked,), _ = tokenizer.encode_truncated(tok, ["the [MASK] sat"], None, 32, marks_masks=True)
    assert masked.tokens == ["[CLS]", "the", "[MASK]", "sat", "[SEP]"]


def test_pairs_are_framed_the_bert_way_whatever_the_files_post_processor(tmp_path):
    # A tokenizer.json without BERT's post-processor (trained with `tokenizers` directly; or
    # this conftest helper) was taken as it was: GLUE trained on "a b" with no [CLS] (the
    # classifier pooled the first word) and no [SEP], type ids all 0, exit 0.
    tok = bert_style_tokenizer(tmp_path / "tokenizer.json")
    assert tok.post_processor is None
    (enc,), cut = tokenizer.encode_truncated(tok, ["the cat sat"], ["a dog"], 16)
    assert enc.tokens == ["[CLS]", "the", "cat", "sat", "[SEP]", "a", "dog", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 0, 1, 1, 1] and cut == 0
    (single,), _ = tokenizer.encode_truncated(tok, ["the cat"], None, 16)
    assert single.tokens == ["[CLS]", "the", "cat", "[SEP]"]
    assert tok.post_processor is None  # the caller's tokenizer is left as it was


# ---- BERT vocab.txt (Google's releases, older transformers) ----
VOCAB_TXT = Path(__file__).parent / "fixtures" / "vocab_txt"
VOCAB_EXPECTED = json.loads((VOCAB_TXT / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(VOCAB_EXPECTED["dirs"]))
def test_a_vocab_txt_encodes_as_transformers_bert_tokenizer(name):
    """Ids and type ids of tricky texts (accents, CJK, control characters, an over-long word,
    literal specials, pairs) as transformers' BertTokenizer gave them for the same directory:
    its tokenizer_config.json options (lowercase, strip_accents, tokenize_chinese_chars) apply;
    without one, a vocabulary with capitals is read cased (tests/make_vocab_txt_fixture.py)."""
    tok = tokenizer.load(VOCAB_TXT / name / "vocab.txt")
    want = VOCAB_EXPECTED["dirs"][name]
    encodings = [tok.encode(t) for t in VOCAB_EXPECTED["texts"]] + \
        [tok.encode(a, b) for a, b in VOCAB_EXPECTED["pairs"]]
    assert [e.ids for e in encodings] == want["ids"]
    assert [e.type_ids for e in encodings] == want["type_ids"]
    assert tokenizer.special_tokens(tok) == (0, 11, 12, 13, 14)  # BERT's layout: [unused] first


def test_a_vocab_txt_is_read_whatever_its_line_ends_and_copied_as_json(tmp_path):
    lines = (VOCAB_TXT / "cased" / "vocab.txt").read_text().split("\n")[:-1]
    text = "The naïve café, 中文"
    want = tokenizer.load(VOCAB_TXT / "cased" / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    for name, content in (("crlf.txt", "\r\n".join(lines) + "\r\n"),
                          ("no_final_newline.txt", "\n".join(lines))):
        (tmp_path / name).write_text(content, newline="")
        tok = tokenizer.load(tmp_path / name)
        assert tok.encode(text).ids == want.encode(text).ids
        assert tokenizer.vocab_size(tok) == len(lines)
    # Copies (prepare, bundles) are the tokenizer.json it stands for, and the same each time.
    copied = tokenizer.file_bytes(tmp_path / "crlf.txt", tokenizer.load(tmp_path / "crlf.txt"))
    assert copied == tokenizer.file_bytes(tmp_path / "crlf.txt", tok)
    assert Tokenizer.from_str(copied.decode()).encode(text, "B").ids == \
        want.encode(text, "B").ids
    # tokenizer_config.json is part of what a vocab.txt stands for
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    assert tokenizer.file_bytes(tmp_path / "crlf.txt", tokenizer.load(tmp_path / "crlf.txt")) \
        != copied


@pytest.mark.parametrize("vocab, config_json, message", [
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n", None, r"vocab.txt has no \[MASK\] token"),
    ('{"model": {}}', None, "holds JSON, not one WordPiece per line; a tokenizer.json must be "
                            r"named \*.json"),
    (b"[PAD]\n\xff\xfe\n", None, "is not UTF-8 text"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", "{oops", r"tokenizer_config.json is not valid JSON"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", '["x"]', "holds a JSON list, not an object"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", '{"do_lower_case": "yes"}',
     r'has do_lower_case="yes", which is not true or false'),
])
def test_a_bad_vocab_txt_or_its_config_is_one_line(tmp_path, vocab, config_json, message):
    path = tmp_path / "vocab.txt"
    path.write_bytes(vocab if isinstance(vocab, bytes) else vocab.encode())
    if config_json is not None:
        (tmp_path / "tokenizer_config.json").write_text(config_json)
    with pytest.raises(UserError, match=message):
        tokenizer.load(path)
