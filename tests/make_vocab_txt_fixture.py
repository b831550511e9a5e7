"""Writes tests/fixtures/vocab_txt: BERT vocab.txt directories and the ids transformers'
BertTokenizer gives for tricky texts in each (tests/test_tokenizer.py reads them back through
bertjax.tokenizer.from_vocab_txt). Run with transformers installed (no torch needed), from the
repository root: `python tests/make_vocab_txt_fixture.py`.

The vocabularies are WordPiece trained here on log.md (cased and lowercased), laid out as
Google's BERT files are: [PAD], [unused0-9], [UNK], [CLS], [SEP], [MASK], then the pieces, plus
a few accented and CJK pieces so the normalizer's options change the ids.
"""

import json
import shutil
import sys
from pathlib import Path

import tokenizers
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import BertTokenizer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "vocab_txt"
SPECIAL = ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EXTRA = ["café", "naïve", "é", "ï", "中", "文", "字", "Ü", "über"]
TEXTS = ["Hello, WORLD! The naïve café serves CRÈME brûlée.",
         "中文字符 mixed with English, and Über über.",
         "don't stop -- it's 3.14159 (roughly); e-mail: a@b.c",
         "a literal [MASK] and [SEP] in the text, and [mask] lowercase",
         "control\x00chars\ttab\u200bzero-width and\u00a0nbsp",
         "x" * 120 + " a very long word then normal words",
         "emoji 🙂 and symbols ™ ©",
         "   "]
PAIRS = [("A man sleeps.", "Nobody Sleeps."), ("Short", "a much longer second segment here")]
DIRS = {  # directory -> tokenizer_config.json (None: no file), lowercased vocabulary
    "uncased": ({"do_lower_case": True}, True),
    "cased": ({"do_lower_case": False}, False),
    "cased_no_config": (None, False),
    "uncased_keep_accents": ({"do_lower_case": True, "strip_accents": False}, True),
    "no_chinese_split": ({"do_lower_case": True, "tokenize_chinese_chars": False}, True),
}


def vocabulary(lowercase: bool) -> list[str]:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=1500, special_tokens=SPECIAL,
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train([str(ROOT / "log.md")], trainer)
    by_id = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    pieces = [p for p, _ in by_id if p not in SPECIAL]
    extra = [e.lower() if lowercase else e for e in EXTRA]
    pieces += [e for e in dict.fromkeys(extra) if e not in pieces]
    return ["[PAD]", *(f"[unused{i}]" for i in range(10)), *SPECIAL, *pieces]


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    expected = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "python": sys.version.split()[0], "texts": TEXTS, "pairs": PAIRS, "dirs": {}}
    for name, (config, lowercase) in DIRS.items():
        d = OUT / name
        d.mkdir(parents=True)
        (d / "vocab.txt").write_text("".join(f"{p}\n" for p in vocabulary(lowercase)))
        if config is not None:
            (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        # Without a tokenizer_config.json transformers lowercases; bertjax follows the
        # vocabulary, so the reference for that directory is transformers told it is cased.
        hf = BertTokenizer.from_pretrained(str(d), **({} if config else {"do_lower_case": False}))
        singles = [hf(t) for t in TEXTS]
        pairs = [hf(a, b) for a, b in PAIRS]
        expected["dirs"][name] = {
            "ids": [e["input_ids"] for e in singles + pairs],
            "type_ids": [e["token_type_ids"] for e in singles + pairs]}
    (OUT / "expected.json").write_text(json.dumps(expected, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
