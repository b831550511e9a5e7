"""Build tiny, randomly initialised Hugging Face BERT reference fixtures for converter parity tests.

Run with the peer environment (torch + transformers are NOT test dependencies):
    /work/peer/bin/python tests/make_hf_fixture.py
Writes tests/fixtures/hf_tiny/{mlm,cls,pretrain}/ and tests/fixtures/hf_tiny/README.md,
byte-identically on every run with the same torch/transformers versions.
"""

import hashlib
import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import torch
import transformers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
)

OUT = Path(__file__).resolve().parent / "fixtures" / "hf_tiny"
SEED = 0
NOISE_STD = 0.1  # added to every bias and every LayerNorm weight/bias
# 0.02 (HF's default) leaves attention almost uniform in a 32-wide model: a transposed query weight
# or tanh-GELU then moves the logits by only ~1e-5, below a float32 parity tolerance. 0.2 makes
# those mistakes visible; README.md holds the measured table for both values.
INIT_RANGE = 0.2
ATTN_IMPL = "eager"
TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    pad_token_id=0,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    initializer_range=INIT_RANGE,
)
LENGTHS = (12, 9, 5)  # real tokens per row; the rest is right padding
SEQ_LEN = 12
CLS_ID, SEP_ID, PAD_ID = 2, 3, 0
BERT_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
)
COMMAND = "/work/peer/bin/python tests/make_hf_fixture.py"


def tiny_config(**overrides) -> BertConfig:
    kw = {**TINY, **overrides}
    return BertConfig(**kw, attn_implementation=ATTN_IMPL)


def perturb(model: torch.nn.Module) -> None:
    """Add N(0, NOISE_STD) to every bias and LayerNorm parameter (HF inits them to 0 / 1)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters are listed once
            if name.endswith(".bias") or ".LayerNorm." in name:
                p.add_(NOISE_STD * torch.randn(p.shape, generator=gen))


def build(model_cls, init_range: float = INIT_RANGE, **overrides):
    torch.manual_seed(SEED)
    model = model_cls(tiny_config(initializer_range=init_range, **overrides))
    perturb(model)
    return model.eval()


def make_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    n = len(LENGTHS)
    input_ids = np.full((n, SEQ_LEN), PAD_ID, np.int32)
    token_type_ids = np.zeros((n, SEQ_LEN), np.int32)
    attention_mask = np.zeros((n, SEQ_LEN), np.int32)
    for row, length in enumerate(LENGTHS):
        input_ids[row, :length] = rng.integers(5, TINY["vocab_size"], size=length)
        input_ids[row, 0] = CLS_ID
        input_ids[row, length - 1] = SEP_ID
        attention_mask[row, :length] = 1
    # Row 0 is a sentence pair: [CLS] A A A A A [SEP] B B B B [SEP], segment B gets type 1.
    input_ids[0, 6] = SEP_ID
    token_type_ids[0, 7 : LENGTHS[0]] = 1
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)


def torch_inputs(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}


def forward(model, inputs: dict[str, np.ndarray]):
    with torch.no_grad():
        out = model(**torch_inputs(inputs), output_hidden_states=True)
        # Sanity: hidden_states[0] is the embedding output and [-1] the base model's last layer.
        t = torch_inputs(inputs)
        emb = model.bert.embeddings(input_ids=t["input_ids"], token_type_ids=t["token_type_ids"])
        assert torch.equal(out.hidden_states[0], emb)
        base = model.bert(**t)
        assert torch.equal(out.hidden_states[-1], base.last_hidden_state)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    return out, base


def f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy().astype(np.float32))


def save_model(model, name: str, arrays: dict[str, np.ndarray]) -> dict:
    out_dir = OUT / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    safetensors.numpy.save_file(arrays, str(out_dir / "reference.safetensors"))
    with safetensors.safe_open(str(out_dir / "model.safetensors"), "np") as f:
        saved_keys = sorted(f.keys())
    # Round trip: from_pretrained must rebuild the same model (re-tying the decoder if dropped).
    reloaded = type(model).from_pretrained(out_dir, attn_implementation=ATTN_IMPL).eval()
    t = torch_inputs({k: arrays[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
    with torch.no_grad():
        first = next(iter(model(**t).values()))
        again = next(iter(reloaded(**t).values()))
    assert torch.equal(first, again), f"{name}: from_pretrained does not reproduce the outputs"
    state = model.state_dict()
    return dict(
        saved_keys=saved_keys,
        dropped=sorted(set(state) - set(saved_keys)),
        arrays={k: (v.dtype.name, list(v.shape)) for k, v in arrays.items()},
    )


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_counts() -> dict[str, int]:
    """Unique parameters (tied decoder weight once), built on the meta device: no memory needed."""
    with torch.device("meta"):
        base = BertConfig()
        large = BertConfig(**BERT_LARGE)
        counts = {
            "BertForMaskedLM(BertConfig()) [BERT-base]": count(BertForMaskedLM(base)),
            "BertForMaskedLM(BertConfig(hidden 1024, 24 layers, 16 heads, intermediate 4096))"
            " [BERT-large]": count(BertForMaskedLM(large)),
            "BertModel(BertConfig()) with pooler": count(BertModel(base)),
            "BertModel(BertConfig(), add_pooling_layer=False)": count(
                BertModel(base, add_pooling_layer=False)
            ),
            "BertForPreTraining(BertConfig())": count(BertForPreTraining(base)),
        }
        tied = BertForMaskedLM(base)
        assert tied.cls.predictions.decoder.weight is tied.bert.embeddings.word_embeddings.weight
    return counts


def sensitivity(init_range: float, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |delta logits| of the MLM fixture under typical converter mistakes."""
    t = torch_inputs(inputs)
    ref_model = build(BertForMaskedLM, init_range)
    state = ref_model.state_dict()

    def logits(model, **kw) -> torch.Tensor:
        with torch.no_grad():
            return model(**{**t, **kw}).logits

    ref = logits(ref_model)
    result = {"logits std (scale)": ref.std().item()}

    def delta(model, **kw) -> float:
        return (logits(model, **kw) - ref).abs().max().item()

    for label, override in [
        (
            "hidden_act gelu_pytorch_tanh instead of exact gelu",
            dict(hidden_act="gelu_pytorch_tanh"),
        ),
        ("layer_norm_eps 1e-5 instead of 1e-12", dict(layer_norm_eps=1e-5)),
    ]:
        other = build(BertForMaskedLM, init_range, **override)
        other.load_state_dict(state)
        result[label] = delta(other)

    def edited(fn) -> float:
        other = build(BertForMaskedLM, init_range)
        with torch.no_grad():
            fn(other)
        return delta(other)

    def transpose_query(m) -> None:
        q = m.bert.encoder.layer[0].attention.self.query.weight
        q.copy_(q.T.clone())

    def swap_layernorm(m) -> None:
        ln = m.bert.encoder.layer[1].output.LayerNorm
        w = ln.weight.clone()
        ln.weight.copy_(ln.bias)
        ln.bias.copy_(w)

    result["layer-0 query weight transposed"] = edited(transpose_query)
    result["layer-1 output LayerNorm weight/bias swapped"] = edited(swap_layernorm)
    # cls.predictions.bias is the very tensor the decoder adds (tied), so zero it in place.
    result["MLM output bias (cls.predictions.bias) dropped"] = edited(
        lambda m: m.cls.predictions.bias.zero_()
    )
    result["attention_mask ignored"] = delta(
        ref_model, attention_mask=torch.ones_like(t["input_ids"])
    )
    result["token_type_ids ignored (all 0)"] = delta(
        ref_model, token_type_ids=torch.zeros_like(t["token_type_ids"])
    )
    with torch.no_grad():
        ref64 = build(BertForMaskedLM, init_range).double()(**t).logits
    result["none: same model evaluated in float64 (float32 rounding noise)"] = (
        (ref.double() - ref64).abs().max().item()
    )
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def readme(info: dict, keys_with_shapes, counts, sens, sharing: list[str]) -> str:
    cfg = json.loads((OUT / "mlm" / "config.json").read_text())
    lines = [
        "# hf_tiny: Hugging Face BERT reference fixtures",
        "",
        "Generated by `tests/make_hf_fixture.py`; do not edit by hand (the script rewrites "
        "this file).",
        "",
        f"- command: `{COMMAND}` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, "
        f"safetensors {safetensors.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}",
        f"- attention implementation: `{ATTN_IMPL}` (additive mask of float32 min on padded keys)",
        "- float32, `model.eval()` (dropout off), `torch.manual_seed("
        f"{SEED})` before each model is built, `torch.set_num_threads(1)`",
        f"- config: {json.dumps(TINY)}; `initializer_range={INIT_RANGE}` instead of HF's 0.02 "
        "(see the sensitivity table below)",
        f"- after HF's init, N(0, {NOISE_STD}) noise (generator seed {SEED + 1}) is added to every "
        "bias and every LayerNorm weight and bias, so a converter that drops or swaps them fails",
        "- the three models are separate random models from the same seed; measured, "
        "`bert.embeddings.*` + `bert.encoder.*` are: " + "; ".join(sharing),
        "",
        "## Inputs (in every `reference.safetensors`, int32)",
        "",
        f"Batch {len(LENGTHS)} x length {SEQ_LEN}, right padded with id {PAD_ID}; real lengths "
        f"{list(LENGTHS)}. Each row starts with id {CLS_ID} ([CLS]-like) and its last real token "
        f"is id {SEP_ID} ([SEP]-like); other real ids are in [5, 99). Row 0 is a sentence pair: "
        f"id {SEP_ID} also at position 6 and `token_type_ids` 1 at positions 7..11. "
        "`attention_mask` is 1 on real tokens, 0 on padding.",
        "",
        "Outputs are stored at every position, padding included: HF computes padded query rows too "
        "(they attend only to real keys), so a correct converter matches them as well.",
        "",
        "## Files",
        "",
        "Each of `mlm/` (`BertForMaskedLM`), `cls/` (`BertForSequenceClassification`, "
        "num_labels=3) and `pretrain/` (`BertForPreTraining`, MLM + NSP heads) holds:",
        "",
        "- `config.json`, `model.safetensors`: what `save_pretrained(dir, "
        "safe_serialization=True)` writes (checked: `from_pretrained` on it reproduces the "
        "outputs bit for bit)",
        "- `reference.safetensors` (written with `safetensors.numpy`): the inputs and float32 "
        "outputs",
        "",
        "| dir | array | dtype | shape |",
        "|---|---|---|---|",
    ]
    notes = {
        "hidden_states": "last encoder layer output = `output_hidden_states=True` -> [-1]",
        "all_hidden_states": "stack of embedding output + every layer output",
        "pooler_output": "tanh(dense(hidden [CLS])), feeds the cls / NSP heads",
    }
    for name, item in info.items():
        for key, (dtype, shape) in item["arrays"].items():
            note = f" ({notes[key]})" if key in notes else ""
            lines.append(f"| {name} | `{key}`{note} | {dtype} | {shape} |")
    lines += [
        "",
        "## Tied decoder weights in model.safetensors",
        "",
        "`BertForMaskedLM` / `BertForPreTraining` tie `cls.predictions.decoder.weight` to "
        "`bert.embeddings.word_embeddings.weight` and `cls.predictions.decoder.bias` to "
        "`cls.predictions.bias` (config `tie_word_embeddings`: "
        f"{cfg.get('tie_word_embeddings', 'absent (default True)')}). Measured in the files "
        "written here, the keys of `state_dict()` that are NOT in `model.safetensors`:",
        "",
    ]
    for name, item in info.items():
        dropped = ", ".join(f"`{k}`" for k in item["dropped"]) or "none"
        lines.append(f"- {name}: {dropped} ({len(item['saved_keys'])} tensors saved)")
    lines += [
        "",
        "So a converter must read the decoder weight from the word embeddings and the decoder bias "
        "from `cls.predictions.bias`; older HF checkpoints (e.g. `pytorch_model.bin` of "
        "`bert-base-uncased`) may still carry the duplicate keys, which should then be equal.",
        "",
        "## HF parameter names of the MLM model (`state_dict()` keys, shapes; torch Linear weights "
        "are [out, in])",
        "",
        "```",
    ]
    lines += [f"{k} {shape}" for k, shape in keys_with_shapes]
    lines += [
        "```",
        "",
        "## Parameter counts, measured",
        "",
        "`sum(p.numel() for p in model.parameters())`, which counts the tied decoder weight once "
        f"(transformers {transformers.__version__}):",
        "",
        "| model | parameters |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {v:,} ({v}) |" for k, v in counts.items()]
    lines += [
        "",
        "## Sensitivity of the MLM fixture (max |delta logits|)",
        "",
        "Why `initializer_range` is raised: the same converter mistakes, measured on the MLM model "
        "built with HF's default 0.02 and with the fixture's value.",
        "",
        f"| mistake | init 0.02 | init {INIT_RANGE} (fixture) |",
        "|---|---|---|",
    ]
    low, high = sens
    lines += [f"| {k} | {low[k]:.3g} | {high[k]:.3g} |" for k in high]
    lines += [
        "",
        "The last row is the float32 rounding error of HF's own forward pass at this scale; a "
        "parity tolerance between it and the smallest mistake above (e.g. atol 1e-5 to 1e-4 on "
        "logits) separates them.",
        "",
        "## sha256 of the generated files",
        "",
        "```",
    ]
    for path in sorted(OUT.glob("*/*.*")):
        if path.parent.name in info:
            lines.append(f"{sha256(path)}  {path.relative_to(OUT)}")
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs()
    info = {}

    mlm = build(BertForMaskedLM)
    out, _ = forward(mlm, inputs)
    info["mlm"] = save_model(
        mlm,
        "mlm",
        {
            **inputs,
            "hidden_states": f32(out.hidden_states[-1]),
            "logits": f32(out.logits),
            "all_hidden_states": f32(torch.stack(out.hidden_states)),
        },
    )
    keys_with_shapes = [(k, list(v.shape)) for k, v in mlm.state_dict().items()]

    cls = build(BertForSequenceClassification, num_labels=3)
    out, base = forward(cls, inputs)
    info["cls"] = save_model(
        cls,
        "cls",
        {
            **inputs,
            "logits": f32(out.logits),
            "hidden_states": f32(out.hidden_states[-1]),
            "pooler_output": f32(base.pooler_output),
        },
    )

    pretrain = build(BertForPreTraining)
    out, base = forward(pretrain, inputs)
    info["pretrain"] = save_model(
        pretrain,
        "pretrain",
        {
            **inputs,
            "prediction_logits": f32(out.prediction_logits),
            "seq_relationship_logits": f32(out.seq_relationship_logits),
            "hidden_states": f32(out.hidden_states[-1]),
            "pooler_output": f32(base.pooler_output),
        },
    )
    models = dict(mlm=mlm, cls=cls, pretrain=pretrain)
    sharing = []
    for a, b in [("mlm", "cls"), ("mlm", "pretrain"), ("cls", "pretrain")]:
        sa, sb = models[a].state_dict(), models[b].state_dict()
        same = all(
            torch.equal(v, sb[k])
            for k, v in sa.items()
            if k.startswith(("bert.embeddings.", "bert.encoder."))
        )
        sharing.append(f"{'identical' if same else 'different'} in {a} and {b}")

    counts = parameter_counts()
    sens = (sensitivity(0.02, inputs), sensitivity(INIT_RANGE, inputs))
    (OUT / "README.md").write_text(readme(info, keys_with_shapes, counts, sens, sharing))

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    assert total < 1_000_000, f"fixtures too large: {total} bytes"
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)
    for k, v in counts.items():
        print(f"{k}: {v}", file=sys.stderr)


if __name__ == "__main__":
    main()
