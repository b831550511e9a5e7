"""Make tests/fixtures/hf_export: what `transformers` computes on directories bertjax exported.

Run from the repository root with the peer environment (torch + transformers):
    /work/peer/bin/python tests/make_hf_export_fixture.py
It first runs itself under .venv (`export DIR`: bertjax builds deterministic tiny models and
`export_hf`s them), then loads each directory with transformers' Auto classes and records outputs.
"""

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "hf_export"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a cat dog sat on mat ran to park is was big small red blue and of in it he she "
         "they we you house tree bird fish water sun moon day night good bad old new").split()
VOCAB = SPECIALS + list("abcdefghijklmnopqrstuvwxyz.,!?") + WORDS + ["##s", "##ed", "##ing"]
TEXT = ("The cats sat on the mat.", "A dog ran to the park!")
LENGTHS = (12, 9, 5)
SEQ = 12
# name: (norm, kind, heads for bertjax's Bert, seed)
MODELS = {
    "post_mlm": ("post", "mlm", dict(mlm=True, nsp=False, num_labels=0), 1),
    "post_cls": ("post", "cls", dict(mlm=False, nsp=False, num_labels=3), 2),
    "post_pretrain": ("post", "pretrain", dict(mlm=True, nsp=True, num_labels=0), 3),
    "pre_mlm": ("pre", "mlm", dict(mlm=True, nsp=False, num_labels=0), 4),
    "pre_cls": ("pre", "cls", dict(mlm=False, nsp=False, num_labels=2), 5),
}
AUTO = {"mlm": "AutoModelForMaskedLM", "cls": "AutoModelForSequenceClassification",
        "pretrain": "AutoModelForPreTraining"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_inputs() -> dict[str, np.ndarray]:
    """Right-padded with [PAD] = 0; rows start with [CLS] (2) and end with [SEP] (3)."""
    rng = np.random.default_rng(0)
    ids = np.zeros((len(LENGTHS), SEQ), np.int32)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = rng.integers(5, len(VOCAB), n)
        ids[row, 0], ids[row, n - 1] = 2, 3
    ids[0, 6] = 3
    types = np.zeros_like(ids)
    types[0, 7:] = 1
    return {"input_ids": ids, "token_type_ids": types,
            "attention_mask": (np.arange(SEQ)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)}


# ---- bertjax side (.venv) ----
def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def build_model(name: str):
    """A tiny Bert with random weights drawn by numpy (independent of bertjax's init), LayerNorm
    weights near 1 and non-zero biases, so a converter that drops or swaps them fails."""
    import jax

    from bertjax.config import ModelConfig
    from bertjax.weights import abstract_bert, load_state_dict

    norm, _, heads, seed = MODELS[name]
    cfg = ModelConfig(size="tiny", num_layers=2, hidden_size=32, num_heads=4,
                      intermediate_size=37, vocab_size=len(VOCAB), max_position_embeddings=24,
                      norm=norm)
    abstract = abstract_bert(cfg, **heads)
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        key = jax.tree_util.keystr(path, simple=True, separator=".")
        if "norm" in key and key.endswith(".weight"):
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        elif key.endswith("bias"):
            value = 0.1 * rng.standard_normal(leaf.shape)
        else:
            value = 0.2 * rng.standard_normal(leaf.shape)
        arrays[key] = value.astype(np.float32)
    return load_state_dict(abstract, arrays, name), cfg


def export_all(out: Path) -> None:
    from bertjax.hf import export_hf

    tok = make_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / "tokenizer.json"
    tok.save(str(tok_path))
    for name, (_, kind, _, _) in MODELS.items():
        model, cfg = build_model(name)
        print(export_hf(model, cfg, tok_path, out / name, kind), file=sys.stderr)


# ---- transformers side (peer environment) ----
def run_transformers(directory: Path, kind: str, inputs: dict) -> tuple[dict, dict]:
    import logging

    import torch
    import transformers

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    transformers.utils.logging.get_logger().addHandler(handler)
    auto = getattr(transformers, AUTO[kind])
    model, info = auto.from_pretrained(directory, output_loading_info=True,
                                       attn_implementation="eager")
    transformers.utils.logging.get_logger().removeHandler(handler)
    model.eval()
    t = {k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}
    with torch.no_grad():
        out = model(**t, output_hidden_states=True)
    arrays = {"hidden_states": out.hidden_states[-1]}
    if kind == "pretrain":
        arrays |= {"logits": out.prediction_logits, "nsp_logits": out.seq_relationship_logits}
    else:
        arrays["logits"] = out.logits
    meta = {"class": type(model).__name__, "warnings": records,
            "loading_info": {k: [str(x) for x in v] for k, v in info.items()},
            "model.safetensors": sha256(directory / "model.safetensors"),
            "config.json": sha256(directory / "config.json")}
    return {k: v.float().numpy() for k, v in arrays.items()}, meta


def readme(meta: dict, arrays: dict) -> str:
    lines = ["# hf_export: transformers outputs on directories bertjax exported", "",
             "Generated by `/work/peer/bin/python tests/make_hf_export_fixture.py` (from the "
             "repository root); do not edit by hand.", "",
             f"- transformers {meta['transformers']}, torch {meta['torch']}, eager attention, "
             "float32, eval mode", "- models: tiny random bertjax models (numpy draws, see "
             "`build_model`), exported with `bertjax.hf.export_hf`, loaded with the Auto class "
             "of their kind; `meta.json` holds the class loaded, the loading report (missing / "
             "unexpected keys, captured transformers warnings) and the sha256 of the exported "
             "`model.safetensors` and `config.json`",
             "- inputs: right padded with [PAD] = 0, real lengths "
             f"{list(LENGTHS)}; outputs at every position", "", "| array | shape |", "|---|---|"]
    lines += [f"| `{k}` | {list(v.shape)} |" for k, v in arrays.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["export"]:
        export_all(Path(sys.argv[2]))
        return
    import tokenizers
    import torch
    import transformers
    from safetensors.numpy import save_file

    torch.set_num_threads(1)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    python = sys.argv[sys.argv.index("--bertjax-python") + 1] if "--bertjax-python" in sys.argv \
        else str(ROOT / ".venv" / "bin" / "python")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([python, __file__, "export", tmp], check=True, cwd=ROOT)
        inputs = make_inputs()
        arrays = dict(inputs)
        meta = {"transformers": transformers.__version__, "torch": torch.__version__,
                "tokenizers": tokenizers.__version__, "models": {}}
        for name, (_, kind, _, _) in MODELS.items():
            outputs, meta["models"][name] = run_transformers(Path(tmp) / name, kind, inputs)
            arrays |= {f"{name}.{k}": v for k, v in outputs.items()}
        auto_tok = transformers.AutoTokenizer.from_pretrained(Path(tmp) / "post_mlm")
        meta["tokenizer"] = {"class": type(auto_tok).__name__, "text": list(TEXT),
                             **{k: list(map(int, v)) for k, v in auto_tok(*TEXT).items()}}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
              str(OUT / "reference.safetensors"))
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (OUT / "README.md").write_text(readme(meta, arrays))
    total = sum(p.stat().st_size for p in OUT.iterdir())
    assert total < 300_000, total
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
