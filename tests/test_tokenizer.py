"""Tokenizer: WordPiece training (specials, post-processor, determinism), loading a
bert-base-style tokenizer.json whose specials are 0/100/101/102/103, and clear errors."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from bertjax import tokenizer
from bertjax.config import TokenizerConfig
from bertjax.errors import UserError

WORDS = ("the cat dog sat on a mat ran far away quickly under blue green tree house river "
         "stone bird sang loudly while children played nearby").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return tokenizer.train(iter(sentences(400)), TokenizerConfig(vocab_size=300))


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
    cased = tokenizer.train(iter(sentences(200)), TokenizerConfig(vocab_size=300, lowercase=False))
    assert "The" in cased.encode("The cat").tokens


@pytest.mark.xfail(strict=False, reason="huggingface/tokenizers#1794: WordPiece training breaks "
                   "count ties in hash-map order, so two runs can differ (prepared data ships "
                   "its own tokenizer.json and sha256, so loading stays exact)")
def test_training_is_deterministic(trained):
    again = tokenizer.train(iter(sentences(400)), TokenizerConfig(vocab_size=300))
    assert again.to_str() == trained.to_str()


def test_save_load_round_trip_is_exact(trained, tmp_path):
    sha1 = tokenizer.save(trained, tmp_path / "a.json")
    loaded = tokenizer.load(tmp_path / "a.json")
    sha2 = tokenizer.save(loaded, tmp_path / "b.json")
    assert sha1 == sha2 == tokenizer.sha256_file(tmp_path / "b.json")
    text = sentences(50, seed=1)
    assert [e.ids for e in loaded.encode_batch(text)] == [e.ids for e in trained.encode_batch(text)]
    assert not list(tmp_path.glob("*.tmp"))


def bert_style_tokenizer(path, extra_words: int = 0) -> Tokenizer:
    """A tokenizer laid out like bert-base-uncased: [PAD]=0, [unused*], [UNK]=100 … [MASK]=103."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += WORDS + [".", "##s"] + [f"w{i}" for i in range(extra_words)]
    tok = tokenizer.build(TokenizerConfig())
    tok.model = models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]")
    for name in tokenizer.SPECIAL_NAMES:  # registered as special, like HF's own file
        tok.add_special_tokens([name])
    tok.save(str(path))
    return tok


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
