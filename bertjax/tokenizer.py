"""WordPiece tokenizer: train one from an iterator of texts, or load an existing tokenizer.json
or BERT vocab.txt.

Special-token ids are read from the tokenizer (`special_tokens`), never hard-coded: ours puts
[PAD] at 0 and the rest at 1-4, bert-base-uncased uses 0/100/101/102/103.
"""

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import (
    Encoding,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from bertjax.config import TokenizerConfig
from bertjax.errors import UserError
from bertjax.files import check_file, check_not_lfs_pointer, sha256_file, write_atomic

SPECIAL_NAMES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class SpecialTokens(NamedTuple):
    """Ids of the five BERT special tokens; hashable, so it can be a static jit argument."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def build(cfg: TokenizerConfig) -> Tokenizer:
    """An untrained BERT WordPiece pipeline (normalizer, pre-tokenizer, model, decoder)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    return _bert_text_pipeline(tok, cfg.lowercase)


def _bert_text_pipeline(tok: Tokenizer, lowercase: bool, strip_accents: bool | None = None,
                        chinese_chars: bool = True) -> Tokenizer:
    """`tok` with BERT's normalizer, pre-tokenizer and '##' decoder (BertTokenizer's defaults
    but for `lowercase`), for a trained tokenizer and a vocab.txt alike."""
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=strip_accents,
        lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def add_bert_framing(tok: Tokenizer) -> None:
    """[CLS] A [SEP] for one text, [CLS] A [SEP] B [SEP] with type ids 0/1 for a pair (BERT)."""
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )


def train(texts: Callable[[], Iterable[str]], cfg: TokenizerConfig) -> Tokenizer:
    """Train WordPiece on what `texts()` yields, read twice (the trainer counts words; the texts
    are not kept). The same texts give the same tokenizer.json, byte for byte.

    The specials come first, so [PAD] = 0 and [UNK], [CLS], [SEP], [MASK] = 1..4. Why two
    passes: Hugging Face's trainer numbers the continuing pieces ('##s') in hash-map order and
    breaks count ties between merges by those numbers, so one pass gives another vocabulary each
    time (huggingface/tokenizers#1794). The first pass only finds those pieces (no merges); the
    second is given them sorted, as specials (the one list it numbers in the order given), and
    they become plain vocabulary again afterwards.
    """
    if cfg.vocab_size < len(SPECIAL_NAMES) + 1:
        raise UserError(f"tokenizer.vocab_size={cfg.vocab_size} is too small; use at least 100")
    probe = build(cfg)
    probe.train_from_iterator(texts(), _trainer(cfg, SPECIAL_NAMES, vocab_size=1))
    continuing = sorted(piece for piece in probe.get_vocab() if piece.startswith("##"))
    tok = build(cfg)
    tok.train_from_iterator(texts(), _trainer(cfg, (*SPECIAL_NAMES, *continuing)))
    tok = _as_plain_vocabulary(tok, set(continuing))
    add_bert_framing(tok)
    special_tokens(tok, "the trained tokenizer")  # sanity: all five specials exist
    return tok


def _trainer(cfg: TokenizerConfig, specials: Sequence[str],
             vocab_size: int | None = None) -> trainers.WordPieceTrainer:
    return trainers.WordPieceTrainer(
        vocab_size=vocab_size or cfg.vocab_size, min_frequency=cfg.min_frequency,
        special_tokens=list(specials), continuing_subword_prefix="##", show_progress=False)


def _as_plain_vocabulary(tok: Tokenizer, pieces: set[str]) -> Tokenizer:
    """`tok` with `pieces` no longer added tokens (which are matched whole in raw text and left
    out of decoding) but plain vocabulary, at the same ids."""
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["content"] not in pieces]
    return Tokenizer.from_str(json.dumps(spec))


def load(path: str | Path, what: str = "tokenizer file",
         fix: str = "set tokenizer.path to a tokenizer.json or null to train one") -> Tokenizer:
    """Load a tokenizer.json, or a BERT vocab.txt (a path ending in .txt: `from_vocab_txt`); a
    missing, unreadable or incomplete file is a UserError naming it as `what` (how the user gave
    it) and ending with `fix`."""
    path = check_file(path, what, fix)
    check_not_lfs_pointer(path)
    if is_vocab_txt(path):
        return from_vocab_txt(path, what, fix)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception on bad JSON
        raise UserError(f"{what} {path} is not a valid tokenizer.json "
                        f"({str(e).splitlines()[0]}); {fix}") from None
    special_tokens(tok, f"{what} {path}")
    return tok


def is_vocab_txt(path: str | Path) -> bool:
    """Whether `path` names a vocabulary list (vocab.txt, bert-base-uncased-vocab.txt) rather
    than a tokenizer.json."""
    return Path(path).suffix == ".txt"


# transformers' BertTokenizer defaults for the keys of tokenizer_config.json that shape the text
VOCAB_TXT_OPTIONS = {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True}


# transformers' classes that tokenize a vocab.txt as BertTokenizer does (their own copies of it)
BERT_TOKENIZER_CLASSES = ("BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer",
                          "MobileBertTokenizer", "SqueezeBertTokenizer", "LayoutLMTokenizer")


def from_vocab_txt(path: Path, what: str = "vocab file",
                   fix: str = "give a BERT vocab.txt (one WordPiece per line)") -> Tokenizer:
    """A BERT vocab.txt (line n is the piece with id n: how Google's BERT releases and older
    transformers save a vocabulary) as the tokenizer transformers' BertTokenizer builds from it,
    with the options of the tokenizer_config.json beside it. Without that file, lowercasing is
    what the vocabulary shows: transformers would lowercase, which leaves a cased vocabulary's
    capitalised pieces unreachable."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}), so "
                        f"not a BERT vocab.txt; {fix}") from None
    if text.lstrip().startswith("{"):
        raise UserError(f"{what} {path} holds JSON, not one WordPiece per line; a tokenizer.json "
                        "must be named *.json to be read as one")
    # Pieces end at "\n" only: str.splitlines would also cut at the separators (U+2028, U+0085)
    # a multilingual vocabulary holds as pieces.
    pieces = text.split("\n")
    if pieces[-1] == "":
        pieces.pop()
    if pieces and all(p.endswith("\r") for p in pieces):  # saved with Windows line ends
        pieces = [p[:-1] for p in pieces]
    # A repeated piece keeps its last id, as in transformers' load_vocab.
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    special_tokens(tok, f"{what} {path}")  # before anything needs [UNK], [CLS] or [SEP]
    options = _vocab_txt_options(path.parent / "tokenizer_config.json", vocab)
    _bert_text_pipeline(tok, options["do_lower_case"], options["strip_accents"],
                        options["tokenize_chinese_chars"])
    tok.add_special_tokens(list(SPECIAL_NAMES))  # kept whole in text, as in a trained one
    add_bert_framing(tok)
    return tok


def _vocab_txt_options(config_path: Path, vocab: dict[str, int]) -> dict:
    """VOCAB_TXT_OPTIONS as tokenizer_config.json sets them, checked; without the file,
    do_lower_case is whether no piece but the [bracketed] specials has a capital letter."""
    if not config_path.is_file():
        cased = any(p != p.lower() for p in vocab if not (p.startswith("[") and p.endswith("]")))
        return VOCAB_TXT_OPTIONS | {"do_lower_case": not cased}
    check_not_lfs_pointer(config_path)
    fix = "fix it (transformers reads it too)"
    try:
        found = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(found, dict):
        raise UserError(f"{config_path} holds a JSON {type(found).__name__}, not an object; {fix}")
    # A vocab.txt is also what other tokenizers keep (BertJapaneseTokenizer splits words with
    # MeCab first): read as BertTokenizer's, its text would silently give other ids
    cls = found.get("tokenizer_class")
    if cls is not None and str(cls).removesuffix("Fast") not in BERT_TOKENIZER_CLASSES:
        raise UserError(f"{config_path} names tokenizer_class {json.dumps(cls)}, whose text "
                        f"processing bertjax does not reproduce (it reads a vocab.txt as "
                        "BertTokenizer does); put a tokenizer.json that tokenizes as that "
                        "class does beside it (it is read first), or set tokenizer.path to one")
    options = VOCAB_TXT_OPTIONS | {k: found[k] for k in VOCAB_TXT_OPTIONS if k in found}
    for key, value in options.items():
        if not isinstance(value, bool) and not (value is None and key == "strip_accents"):
            raise UserError(f"{config_path} has {key}={json.dumps(value)}, which is not "
                            f"true or false; {fix}")
    return options


def transformers_lowercase(directory: Path, model_type: str) -> bool | None:
    """Whether transformers lowercases text for the BERT directory's tokenizer.json, where it
    does not follow that file: its BertTokenizer (tokenizer_config.json's tokenizer_class, or
    none and config.json's model_type 'bert') rebuilds the normalizer from tokenizer_config.json's
    do_lower_case (default true) whatever tokenizer.json says. None: it follows the file (or
    the files are unreadable, which their loaders report)."""
    config_path = directory / "tokenizer_config.json"
    try:
        found = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() \
            else {}
        spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        wordpiece = spec["model"]["type"] == "WordPiece"
        options = _vocab_txt_options(config_path, {}) if found else VOCAB_TXT_OPTIONS
    except (OSError, ValueError, TypeError, KeyError, UserError):
        return None
    cls = found.get("tokenizer_class") if isinstance(found, dict) else None
    bert = cls in ("BertTokenizer", "BertTokenizerFast") or (cls is None and model_type == "bert")
    return options["do_lower_case"] if bert and wordpiece else None


def file_bytes(path: str | Path, tok: Tokenizer) -> bytes:
    """The tokenizer.json that `path` (loaded as `tok`) stands for: a tokenizer.json's own
    bytes, or the JSON of the tokenizer a vocab.txt was read as. Copies and digests use these,
    so a copy of a vocab.txt is a tokenizer.json, and its digest follows its options too."""
    return tok.to_str(pretty=True).encode() if is_vocab_txt(path) else Path(path).read_bytes()


def special_tokens(tok: Tokenizer, name: str = "the tokenizer") -> SpecialTokens:
    """The ids of [PAD] [UNK] [CLS] [SEP] [MASK]; a UserError names any that is missing."""
    ids = [tok.token_to_id(t) for t in SPECIAL_NAMES]
    missing = [t for t, i in zip(SPECIAL_NAMES, ids, strict=True) if i is None]
    if missing:
        raise UserError(f"{name} has no {', '.join(missing)} token; a BERT tokenizer needs "
                        f"all of {', '.join(SPECIAL_NAMES)}")
    return SpecialTokens(*ids)


def vocab_size(tok: Tokenizer) -> int:
    """Rows an embedding table needs: one more than the largest id (added tokens included)."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def lowercases(tok: Tokenizer) -> bool:
    """Whether the tokenizer's normalizer lowercases text: asked of the normalizer itself, so a
    Sequence holding Lowercase counts as BertNormalizer(lowercase=True) does."""
    return tok.normalizer is not None and tok.normalizer.normalize_str("A") == "a"


def continuing_prefix(tok: Tokenizer) -> str:
    """The prefix of the pieces that continue a word ('##'); a UserError for a tokenizer without
    such pieces (not WordPiece), which whole-word masking cannot group."""
    prefix = getattr(tok.model, "continuing_subword_prefix", None)
    if not prefix:
        raise UserError(f"data.whole_word_mask=true needs a WordPiece tokenizer, whose '##' "
                        f"pieces mark where words continue; this one is "
                        f"{type(tok.model).__name__}: set data.whole_word_mask=false")
    return prefix


def continuation_pieces(tok: Tokenizer) -> np.ndarray:
    """[vocab] bool: True for the pieces that continue the word before them ('##ing'), what
    whole-word masking groups by."""
    prefix = continuing_prefix(tok)
    table = np.zeros(vocab_size(tok), bool)
    for piece, i in tok.get_vocab(with_added_tokens=True).items():
        table[i] = piece.startswith(prefix) and len(piece) > len(prefix)
    return table


def save(tok: Tokenizer, path: str | Path) -> str:
    """Write tokenizer.json atomically (temporary name, then rename); returns its sha256."""
    write_atomic(path, tok.to_str(pretty=True))
    return sha256_file(path)


def encode_truncated(tok: Tokenizer, texts: Sequence[str], pairs: Sequence[str] | None,
                     max_len: int, marks_masks: bool = False) -> tuple[list[Encoding], int]:
    """Encodings of texts (or text pairs: [CLS] a [SEP] b [SEP], type ids 0/1), cut
    longest-first to `max_len` tokens; and how many were cut. A "[SEP]" or "[MASK]" written in
    the text is text, as in prepared data (bertjax.token_files), unless `marks_masks` (fill-mask:
    the user's [MASK] marks a slot). Works on a copy, so the caller's tokenizer keeps its
    padding and truncation settings."""
    copy = Tokenizer.from_str(tok.to_str())
    copy.encode_special_tokens = not marks_masks
    # BERT's framing whatever the file says: a tokenizer.json trained with `tokenizers` alone
    # often has no post-processor, and its pairs would be "a b" (no [CLS] to pool, no [SEP]).
    add_bert_framing(copy)
    copy.no_padding()
    copy.enable_truncation(max_len, strategy="longest_first")
    inputs = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
    encodings = copy.encode_batch(inputs)
    return encodings, sum(bool(e.overflowing) for e in encodings)


# Rows tokenized at a time by the callers that keep only arrays (GLUE encoding, predict). The
# tokenizer's Encoding objects (tokens, offsets, masks, the cut overflow) take ~20 times the
# arrays kept from them: encoded whole, MNLI's 393 k training pairs peaked near 2.6 GB in every
# process (100 k pairs: 670 MB for 35 MB of arrays).
ENCODE_ROWS = 8192


def encode_in_chunks(tok: Tokenizer, texts: Sequence[str], pairs: Sequence[str] | None,
                     max_len: int, marks_masks: bool = False,
                     batch: int = 1) -> Iterator[tuple[list[Encoding], int]]:
    """encode_truncated about ENCODE_ROWS rows at a time, in order: (encodings, how many were
    cut) per chunk. Each chunk but the last holds a whole number of `batch`-row batches."""
    rows = batch * max(1, ENCODE_ROWS // batch)
    for first in range(0, len(texts), rows):
        chunk = slice(first, first + rows)
        yield encode_truncated(tok, texts[chunk], None if pairs is None else pairs[chunk],
                               max_len, marks_masks)


def pad_rows(rows: Sequence[tuple], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids, type ids) per row -> right-padded int32 ids and types [rows, length] (pad id
    0 here: padding positions are masked out) and the boolean attention mask."""
    ids = np.zeros((len(rows), length), np.int32)
    types = np.zeros_like(ids)
    mask = np.zeros(ids.shape, bool)
    for r, (row_ids, row_types) in enumerate(rows):
        ids[r, :len(row_ids)], types[r, :len(row_ids)], mask[r, :len(row_ids)] = \
            row_ids, row_types, True
    return ids, types, mask
