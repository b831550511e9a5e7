"""Check that a pre-LN BERT maps exactly onto HF's RobertaPreLayerNorm (see PRELN_NOTES.md).

Run with the peer environment: /work/peer/bin/python tests/check_preln_mapping.py
A float64 numpy pre-LN BERT (positions 0..n-1) is compared with HF's RobertaPreLayerNormForMaskedLM
in both directions (HF weights -> pre-LN, random pre-LN weights -> HF); prints max abs differences.
"""

import math

import numpy as np
import torch
import transformers
from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

SEED = 0
PAD = 1  # RoBERTa's padding_idx; HF derives position ids from input_ids != PAD
MAX_POS = 64  # rows of the pre-LN BERT position table
LENGTHS = (12, 9, 5)
SEQ_LEN = 12
TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=MAX_POS + PAD + 1,  # RoBERTa convention: 514 for 512 positions
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    pad_token_id=PAD,
    initializer_range=0.2,
)
EPS = TINY["layer_norm_eps"]
HEADS = TINY["num_attention_heads"]
P = "roberta_prelayernorm"
erf = np.vectorize(math.erf)


# ---- pre-LN BERT in numpy: emb LN, x + attn(LN1 x), x + ffn(LN2 x), final LN, BERT MLM head ----
def layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * p["w"] + p["b"]


def dense(x, p):  # p["w"] is [out, in], as torch.nn.Linear stores it
    return x @ p["w"].T + p["b"]


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def attention(x, mask, p):
    b, t, h = x.shape
    d = h // HEADS

    def split(y):
        return y.reshape(b, t, HEADS, d)

    q, k, v = split(dense(x, p["q"])), split(dense(x, p["k"])), split(dense(x, p["v"]))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    scores = np.where(mask[:, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return dense(np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h), p["o"])


def preln_forward(params, input_ids, token_type_ids, mask):
    """Returns (final hidden after the final LN, MLM logits); positions are 0..n-1."""
    n = input_ids.shape[1]
    x = params["word"][input_ids] + params["pos"][:n][None] + params["type"][token_type_ids]
    x = layer_norm(x, params["emb_ln"])
    for lp in params["layers"]:
        x = x + attention(layer_norm(x, lp["ln1"]), mask, lp)
        x = x + dense(gelu(dense(layer_norm(x, lp["ln2"]), lp["ffn_in"])), lp["ffn_out"])
    h = layer_norm(x, params["final_ln"])
    z = layer_norm(gelu(dense(h, params["head_dense"])), params["head_ln"])
    return h, z @ params["word"].T + params["head_bias"]


# ---- the mapping ----
LAYER_KEYS = {  # pre-LN name -> HF module path inside encoder.layer.N
    "ln1": "attention.LayerNorm",
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "ln2": "intermediate.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
TOP_KEYS = {
    "emb_ln": f"{P}.embeddings.LayerNorm",
    "final_ln": f"{P}.LayerNorm",
    "head_dense": "lm_head.dense",
    "head_ln": "lm_head.layer_norm",
}


def wb(sd, prefix):
    return {"w": sd[f"{prefix}.weight"], "b": sd[f"{prefix}.bias"]}


def roberta_to_preln(sd: dict[str, np.ndarray]) -> dict:
    word = sd[f"{P}.embeddings.word_embeddings.weight"]
    assert np.array_equal(sd["lm_head.decoder.weight"], word), "decoder is not tied"
    assert np.array_equal(sd["lm_head.decoder.bias"], sd["lm_head.bias"]), "bias is not tied"
    n_layers = 1 + max(int(k.split(".")[3]) for k in sd if ".encoder.layer." in k)
    return {
        "word": word,
        # RoBERTa's real token i (0-based) reads row PAD + 1 + i.
        "pos": sd[f"{P}.embeddings.position_embeddings.weight"][PAD + 1 :],
        "type": sd[f"{P}.embeddings.token_type_embeddings.weight"],
        **{name: wb(sd, path) for name, path in TOP_KEYS.items()},
        "head_bias": sd["lm_head.bias"],
        "layers": [
            {name: wb(sd, f"{P}.encoder.layer.{i}.{path}") for name, path in LAYER_KEYS.items()}
            for i in range(n_layers)
        ],
    }


def preln_to_roberta(params: dict) -> dict[str, torch.Tensor]:
    pos = params["pos"]
    # Rows 0..PAD are never read for real tokens (row PAD is what padding tokens read); zeros.
    pos = np.concatenate([np.zeros((PAD + 1, pos.shape[1]), pos.dtype), pos])
    sd = {
        f"{P}.embeddings.word_embeddings.weight": params["word"],
        f"{P}.embeddings.position_embeddings.weight": pos,
        f"{P}.embeddings.token_type_embeddings.weight": params["type"],
        "lm_head.bias": params["head_bias"],
        "lm_head.decoder.weight": params["word"],
        "lm_head.decoder.bias": params["head_bias"],
    }
    for name, path in TOP_KEYS.items():
        sd[f"{path}.weight"], sd[f"{path}.bias"] = params[name]["w"], params[name]["b"]
    for i, lp in enumerate(params["layers"]):
        for name, path in LAYER_KEYS.items():
            sd[f"{P}.encoder.layer.{i}.{path}.weight"] = lp[name]["w"]
            sd[f"{P}.encoder.layer.{i}.{path}.bias"] = lp[name]["b"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in sd.items()}


# ---- helpers ----
def build_roberta() -> RobertaPreLayerNormForMaskedLM:
    torch.manual_seed(SEED)
    cfg = RobertaPreLayerNormConfig(**TINY, attn_implementation="eager")
    model = RobertaPreLayerNormForMaskedLM(cfg)
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():  # HF inits LayerNorms to 1/0 and biases to 0: perturb them
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def random_preln(rng: np.random.Generator) -> dict:
    h, f, v = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"]

    def lin(n_out, n_in):
        return {"w": rng.normal(0, 0.2, (n_out, n_in)), "b": rng.normal(0, 0.1, n_out)}

    def ln():
        return {"w": 1 + rng.normal(0, 0.1, h), "b": rng.normal(0, 0.1, h)}

    shapes = dict(q=(h, h), k=(h, h), v=(h, h), o=(h, h), ffn_in=(f, h), ffn_out=(h, f))
    return {
        "word": rng.normal(0, 0.2, (v, h)),
        "pos": rng.normal(0, 0.2, (MAX_POS, h)),
        "type": rng.normal(0, 0.2, (2, h)),
        "emb_ln": ln(),
        "final_ln": ln(),
        "head_dense": lin(h, h),
        "head_ln": ln(),
        "head_bias": rng.normal(0, 0.1, v),
        "layers": [
            {"ln1": ln(), "ln2": ln(), **{k: lin(*s) for k, s in shapes.items()}}
            for _ in range(TINY["num_hidden_layers"])
        ],
    }


def make_inputs(rng: np.random.Generator, left_pad: bool = False):
    ids = np.full((len(LENGTHS), SEQ_LEN), PAD, np.int64)
    types = np.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        real = rng.integers(5, TINY["vocab_size"], n)
        real[0], real[-1] = 0, 2  # <s>-like and </s>-like ids, never PAD
        sl = slice(SEQ_LEN - n, SEQ_LEN) if left_pad else slice(0, n)
        ids[row, sl] = real
    types[0, 7:] = 1  # row 0 (no padding) has a segment B
    return ids, types, ids != PAD


def hf_forward(model, ids, types, mask, position_ids=None):
    t = {k: torch.from_numpy(v.astype(np.int64)) for k, v in dict(a=ids, b=types, c=mask).items()}
    with torch.no_grad():
        out = model(
            input_ids=t["a"],
            token_type_ids=t["b"],
            attention_mask=t["c"],
            position_ids=position_ids,
            output_hidden_states=True,
        )
        base = model.roberta_prelayernorm(
            input_ids=t["a"], token_type_ids=t["b"], attention_mask=t["c"]
        )
    return base.last_hidden_state.double().numpy(), out.logits.double().numpy(), out


def max_diff(a, b, mask):
    return float(np.abs(a - b)[mask].max())


def main() -> None:
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    rng = np.random.default_rng(SEED)
    ids, types, mask = make_inputs(rng)

    model = build_roberta()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print("RobertaPreLayerNormForMaskedLM state_dict:")
    for k, v in model.state_dict().items():
        print(f"  {k} {list(v.shape)}")
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}

    emb = model.roberta_prelayernorm.embeddings
    print(f"position ids HF derives (padding_idx={PAD}, right padded):")
    print(emb.create_position_ids_from_input_ids(torch.from_numpy(ids), PAD).numpy())

    rows = []
    # 1. HF weights -> pre-LN BERT (numpy, float64), right padded input, real positions.
    params = roberta_to_preln(sd)
    hf_h, hf_logits, out = hf_forward(model, ids, types, mask)
    np_h, np_logits = preln_forward(params, ids, types, mask)
    rows.append(("HF -> pre-LN, final hidden", max_diff(hf_h, np_h, mask)))
    rows.append(("HF -> pre-LN, MLM logits", max_diff(hf_logits, np_logits, mask)))
    # transformers 5 (capture_outputs, tie_last_hidden_states=True) overwrites hidden_states[-1]
    # with last_hidden_state, i.e. AFTER the final LayerNorm; the raw last-layer output is hidden.
    tied_last = np.array_equal(out.hidden_states[-1].double().numpy(), hf_h)
    print(f"hidden_states[-1] == last_hidden_state (post final LN): {tied_last}")

    # 2. Random pre-LN weights -> HF (export), strict load, real positions.
    params2 = random_preln(np.random.default_rng(SEED + 2))
    exported = build_roberta()
    loaded = exported.load_state_dict(preln_to_roberta(params2), strict=True)
    assert not loaded.missing_keys and not loaded.unexpected_keys
    hf_h2, hf_logits2, _ = hf_forward(exported, ids, types, mask)
    np_h2, np_logits2 = preln_forward(params2, ids, types, mask)
    rows.append(("pre-LN -> HF (export), final hidden", max_diff(hf_h2, np_h2, mask)))
    rows.append(("pre-LN -> HF (export), MLM logits", max_diff(hf_logits2, np_logits2, mask)))
    # Round trip of the mapping is exact.
    back = roberta_to_preln({k: v.double().numpy() for k, v in exported.state_dict().items()})
    rt = preln_to_roberta(back)
    assert all(torch.equal(rt[k], v) for k, v in preln_to_roberta(params2).items())

    # 3. Controls: what breaks the equivalence.
    no_shift = dict(params, pos=sd[f"{P}.embeddings.position_embeddings.weight"])
    rows.append(
        (
            "control: no position shift, logits",
            max_diff(hf_logits, preln_forward(no_shift, ids, types, mask)[1], mask),
        )
    )
    lids, ltypes, lmask = make_inputs(np.random.default_rng(SEED), left_pad=True)
    _, hf_l, _ = hf_forward(model, lids, ltypes, lmask)
    rows.append(
        (
            "control: LEFT padded, logits",
            max_diff(hf_l, preln_forward(params, lids, ltypes, lmask)[1], lmask),
        )
    )
    pos_ids = torch.arange(PAD + 1, PAD + 1 + SEQ_LEN).expand(len(LENGTHS), -1)
    _, hf_lp, _ = hf_forward(model, lids, ltypes, lmask, position_ids=pos_ids)
    rows.append(
        (
            "LEFT padded with explicit position_ids=PAD+1+arange, logits",
            max_diff(hf_lp, preln_forward(params, lids, ltypes, lmask)[1], lmask),
        )
    )

    print("\nmax |difference| on real (non-pad) positions, HF float32 vs numpy float64:")
    for label, value in rows:
        print(f"  {label}: {value:.3g}")
    exact = [v for label, v in rows if "control" not in label]
    assert max(exact) < 1e-4, exact
    assert all(v > 1e-2 for label, v in rows if "control" in label)
    print("OK: the mapping is exact up to float32 rounding")


if __name__ == "__main__":
    main()
