"""Hugging Face interop for tokenizers: the files an export writes so transformers'
`AutoTokenizer` loads them (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
vocab.txt), and the check on import that transformers would lowercase as tokenizer.json does.
"""

import json
import warnings
from pathlib import Path

from tokenizers import Tokenizer

from bertjax import tokenizer as tokenizer_lib


def tokenizer_files(tokenizer_json: Path, out: Path, max_length: int) -> dict:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json (+ vocab.txt for
    WordPiece), so `AutoTokenizer.from_pretrained(out)` works; returns the special token ids."""
    tok = tokenizer_lib.load(tokenizer_json, "tokenizer", "export with a BERT tokenizer.json")
    # The ids through the tokenizers library: a Unigram vocabulary is [token, score] pairs.
    ids = tokenizer_lib.special_tokens(tok)
    # transformers frames text only through the file's post-processor, and a tokenizer.json
    # trained with `tokenizers` alone may have none: the model was trained on [CLS] a [SEP].
    tokenizer_lib.add_bert_framing(tok)
    tok.save(str(out / "tokenizer.json"))
    spec = json.loads(tok.to_str())  # a vocab.txt has no JSON of its own
    names = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    tokens = {f"{k}_token": v for k, v in names.items()}
    wordpiece = (spec.get("model") or {}).get("type") == "WordPiece"
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        # BertTokenizer is WordPiece (its slow form reads vocab.txt); any other model loads as
        # the generic fast tokenizer, from tokenizer.json alone
        {"tokenizer_class": "BertTokenizer" if wordpiece else "PreTrainedTokenizerFast",
         "do_lower_case": tokenizer_lib.lowercases(tok), "model_max_length": max_length,
         "clean_up_tokenization_spaces": False, **tokens}, indent=2))
    if wordpiece:  # for older, vocab.txt-based loaders
        by_id = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
        (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in by_id))
    return ids._asdict()



def check_lowercasing(path: Path, tokenizer: Path, model_type: str) -> None:
    """Say when transformers would lowercase other than tokenizer.json does (ids then differ
    from those the model was trained on with transformers, silently)."""
    theirs = tokenizer_lib.transformers_lowercase(path, model_type)
    if theirs is None:
        return
    try:
        ours = tokenizer_lib.lowercases(Tokenizer.from_file(str(tokenizer)))
    except Exception:  # noqa: BLE001 -- a damaged file is reported where it is loaded
        return
    if ours != theirs:
        said = ("tokenizer_config.json's do_lower_case" if (path / "tokenizer_config.json")
                .is_file() else "BertTokenizer's default do_lower_case (no tokenizer_config.json)")
        warnings.warn(f"{tokenizer} {'lowercases' if ours else 'keeps case'}, but transformers "
                      f"{'lowercases' if theirs else 'keeps case'} here ({said} is "
                      f"{str(theirs).lower()} and wins over tokenizer.json): bertjax follows "
                      "tokenizer.json, so token ids may differ from transformers'; make the two "
                      "files agree", stacklevel=2)
