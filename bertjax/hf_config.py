"""Hugging Face config.json <-> bertjax's ModelConfig, both directions in one place.

`config_from_hf` reads the fields bertjax understands (each type-checked; unsupported variants
are one line), `config_to_hf` writes the config.json transformers loads (architecture, GLUE class
names), `hf_label_names` reads a classifier's class names back.
"""

import json
import warnings
from pathlib import Path

from bertjax.config import MODEL_SIZES, ModelConfig
from bertjax.errors import UserError

ARCHITECTURES = {("post", "mlm"): "BertForMaskedLM", ("post", "pretrain"): "BertForPreTraining",
                 ("post", "cls"): "BertForSequenceClassification",
                 ("post", "nsp"): "BertForNextSentencePrediction",
                 ("pre", "mlm"): "RobertaPreLayerNormForMaskedLM",
                 ("pre", "cls"): "RobertaPreLayerNormForSequenceClassification"}

# hidden_act -> model.gelu. gelu_python is transformers' erf formula of "gelu"; gelu_new,
# gelu_fast, gelu_accurate and gelu_python_tanh are its formulas of the tanh approximation that
# gelu_pytorch_tanh computes in torch (transformers/activations.py: the same expression).
HF_GELU = {"gelu": "exact", "gelu_python": "exact", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh",
           "gelu_fast": "tanh", "gelu_accurate": "tanh", "gelu_python_tanh": "tanh"}

# The config.json fields bertjax reads: (type, default when absent or null).
HF_FIELDS = {"model_type": (str, "bert"), "hidden_act": (str, "gelu"),
             "position_embedding_type": (str, "absolute"), "is_decoder": (bool, False),
             "add_cross_attention": (bool, False), "pad_token_id": (int, None),
             "num_hidden_layers": (int, 12), "hidden_size": (int, 768),
             "num_attention_heads": (int, 12), "intermediate_size": (int, None),
             "vocab_size": (int, 30522), "max_position_embeddings": (int, 512),
             "type_vocab_size": (int, 2), "hidden_dropout_prob": (float, 0.1),
             "attention_probs_dropout_prob": (float, 0.1), "layer_norm_eps": (float, 1e-12),
             "classifier_dropout": (float, None)}


def field(c: dict, name: str, source: str):
    """config.json's `name`, checked to be of the type transformers writes there (an int is a
    fine float; a bool is no number)."""
    kind, default = HF_FIELDS[name]
    value = c.get(name)
    fits = isinstance(value, int | float if kind is float else kind) and \
        (kind is bool) == isinstance(value, bool)
    if value is not None and not fits:
        raise UserError(f"{source}: config.json has {name}={json.dumps(value)}, which is not "
                        f"{kind.__name__}; fix the file or download the model again")
    return default if value is None else value


def config_from_hf(c: object, source: str = "config.json") -> tuple[ModelConfig, int]:
    """HF config.json -> (ModelConfig, pad_token_id); unsupported variants are UserErrors."""
    if not isinstance(c, dict):
        raise UserError(f"{source}: config.json holds a JSON {type(c).__name__}, not an object; "
                        "fix the file or download the model again")
    c = {name: field(c, name, source) for name in HF_FIELDS}  # read once, each type checked
    model_type = c["model_type"]
    if model_type not in ("bert", "roberta-prelayernorm"):
        raise UserError(f"{source}: model_type={model_type!r} is not supported; bertjax imports "
                        "'bert' (post-LN) and 'roberta-prelayernorm' (pre-LN) checkpoints")
    if c["hidden_act"] not in HF_GELU:
        raise UserError(f"{source}: hidden_act={c['hidden_act']!r} is not supported; bertjax "
                        f"has {', '.join(repr(a) for a in HF_GELU)}")
    if c["position_embedding_type"] != "absolute":
        raise UserError(f"{source}: position_embedding_type={c['position_embedding_type']!r} is "
                        "not supported; bertjax has learned absolute positions only")
    if c["is_decoder"] or c["add_cross_attention"]:
        raise UserError(f"{source} is a decoder / cross-attention model; bertjax has encoders only")
    pre = model_type == "roberta-prelayernorm"
    pad = c["pad_token_id"]
    pad = (1 if pre else 0) if pad is None else pad
    layers, hidden, heads = c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"]
    size = next((n for n, shape in MODEL_SIZES.items() if shape == (layers, hidden, heads)), "tiny")
    try:
        model_cfg = ModelConfig(
            size=size, num_layers=layers, hidden_size=hidden, num_heads=heads,
            intermediate_size=c["intermediate_size"] or 4 * hidden, vocab_size=c["vocab_size"],
            max_position_embeddings=c["max_position_embeddings"] - (pad + 1 if pre else 0),
            type_vocab_size=c["type_vocab_size"], norm="pre" if pre else "post",
            dropout=float(c["hidden_dropout_prob"]),
            attention_dropout=float(c["attention_probs_dropout_prob"]),
            layer_norm_eps=float(c["layer_norm_eps"]), gelu=HF_GELU[c["hidden_act"]])
    except UserError as e:  # a value outside bertjax's domains, named by our key
        raise UserError(f"{source}: config.json describes no model bertjax can build ({e})"
                        ) from None
    return model_cfg, pad


def config_to_hf(model_cfg: ModelConfig, kind: str, num_labels: int = 0,
                 special: dict | None = None, label_names: tuple[str, ...] = (),
                 multi_label: bool = False, classifier_dropout: float | None = None) -> dict:
    """config.json for `kind` (mlm | cls | pretrain | nsp); `special`: pad/cls/sep token ids;
    `label_names`: a classifier's class names by index (else transformers' LABEL_i);
    `multi_label`: a multi-label classifier's problem_type; `classifier_dropout`: the rate before
    the classifier (None: transformers then takes hidden_dropout_prob)."""
    special = special or {"pad": 0}
    pre = model_cfg.norm == "pre"
    positions = model_cfg.max_position_embeddings + (special["pad"] + 1 if pre else 0)
    c = {"architectures": [ARCHITECTURES["pre" if pre else "post", kind]],
         "model_type": "roberta-prelayernorm" if pre else "bert",
         "vocab_size": model_cfg.vocab_size, "hidden_size": model_cfg.hidden_size,
         "num_hidden_layers": model_cfg.num_layers,
         "num_attention_heads": model_cfg.num_heads,
         "intermediate_size": model_cfg.intermediate_size,
         "hidden_act": "gelu" if model_cfg.gelu == "exact" else "gelu_pytorch_tanh",
         "hidden_dropout_prob": model_cfg.dropout,
         "attention_probs_dropout_prob": model_cfg.attention_dropout,
         "max_position_embeddings": positions, "type_vocab_size": model_cfg.type_vocab_size,
         "layer_norm_eps": model_cfg.layer_norm_eps, "initializer_range": 0.02,
         "pad_token_id": special["pad"], "position_embedding_type": "absolute",
         "tie_word_embeddings": True, "is_decoder": False, "dtype": "float32"}
    if pre:
        c |= {"bos_token_id": special.get("cls"), "eos_token_id": special.get("sep")}
    if kind == "cls":
        names = (list(label_names) if len(label_names) == num_labels else
                 [f"LABEL_{i}" for i in range(num_labels)])
        c |= {"id2label": {str(i): name for i, name in enumerate(names)},
              "label2id": {name: i for i, name in enumerate(names)},
              "classifier_dropout": classifier_dropout}
        if multi_label:
            c["problem_type"] = MULTI_LABEL
        elif num_labels == 1:  # else transformers' pipelines put a sigmoid on the score (STS-B)
            c["problem_type"] = "regression"
    return c


MULTI_LABEL = "multi_label_classification"


def hf_multi_label(path: Path, num_labels: int) -> bool:
    """Whether config.json's problem_type makes the classifier multi-label: one independent
    sigmoid per class, as transformers' pipelines score it (a softmax over them means nothing)."""
    return num_labels > 1 and json.loads((path / "config.json").read_text()).get(
        "problem_type") == MULTI_LABEL


def hf_label_names(path: Path, num_labels: int) -> tuple[str, ...]:
    """A classifier's class names by index from config.json's id2label (as transformers'
    pipelines show them), or () when it names no complete set of `num_labels` classes.
    config.json was checked by import_hf already."""
    id2label = json.loads((path / "config.json").read_text()).get("id2label")
    if not isinstance(id2label, dict) or not num_labels:  # no classifier (or its head left out)
        return ()
    names = tuple(id2label.get(str(i)) for i in range(num_labels))
    if len(id2label) == num_labels and all(isinstance(n, str) for n in names):
        return names
    # transformers sizes the classifier by id2label, so it would refuse these weights
    warnings.warn(f"{path / 'config.json'}: id2label does not name the classifier's "
                  f"{num_labels} classes 0..{num_labels - 1} (it has {len(id2label)} entries); "
                  "classes are shown by index: fix id2label to name them", stacklevel=3)
    return ()
