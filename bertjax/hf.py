"""Hugging Face interop: BERT weights <-> bertjax, as state dicts and as directories.

Post-LN models map onto `BertForMaskedLM` / `BertForSequenceClassification` / `BertForPreTraining`;
pre-LN models onto `RobertaPreLayerNormForMaskedLM` / `...ForSequenceClassification` (the same
function on right-padded input; see tests/fixtures/hf_tiny/PRELN_NOTES.md). torch Linear weights
are [out, in], ours [in, out]; our fused QKV is HF's query | key | value. No torch, no pickle.
Over the guide's ~350 lines because one name table serves both directions (import and export)
and config.json is read and written next to it; split, the two halves of one mapping drift.
"""

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from bertjax.config import MODEL_SIZES, ModelConfig
from bertjax.errors import UserError
from bertjax.files import check_not_lfs_pointer, staged_dir
from bertjax.model import Bert
from bertjax.weights import model_from_arrays, read_safetensors
from bertjax.weights import state_dict as our_state_dict

PRE = "roberta_prelayernorm"
KINDS = ("mlm", "cls", "pretrain")
ARCHITECTURES = {("post", "mlm"): "BertForMaskedLM", ("post", "pretrain"): "BertForPreTraining",
                 ("post", "cls"): "BertForSequenceClassification",
                 ("pre", "mlm"): "RobertaPreLayerNormForMaskedLM",
                 ("pre", "cls"): "RobertaPreLayerNormForSequenceClassification"}
RIGHT_PAD_NOTE = ("inputs must be right-padded: transformers derives RoBERTa position ids from "
                  "input_ids != pad_token_id, so left padding shifts every position")


# ---- the name mapping (one table serves both directions) ----
def _dense(ours: str, hf: str) -> list[tuple]:
    return [(f"{ours}.weight", f"{hf}.weight", True), (f"{ours}.bias", f"{hf}.bias", False)]


def _norm(ours: str, hf: str) -> list[tuple]:
    return [(f"{ours}.weight", f"{hf}.weight", False), (f"{ours}.bias", f"{hf}.bias", False)]


def _tables(pre: bool, heads: dict) -> tuple[list, list, str]:
    """(top-level (ours, hf, transpose) triples, per-layer triples, HF layer prefix)."""
    base = PRE if pre else "bert"
    top = [("encoder.embeddings.word", f"{base}.embeddings.word_embeddings.weight", False),
           ("encoder.embeddings.token_type", f"{base}.embeddings.token_type_embeddings.weight",
            False), *_norm("encoder.embeddings.norm", f"{base}.embeddings.LayerNorm")]
    if pre:
        top += _norm("encoder.final_norm", f"{PRE}.LayerNorm")
        if heads["mlm"]:
            top += [*_dense("mlm.transform", "lm_head.dense"),
                    *_norm("mlm.norm", "lm_head.layer_norm"), ("mlm.bias", "lm_head.bias", False)]
        if heads["classifier"]:  # RobertaClassificationHead: dense + tanh on <s>, out_proj
            top += [*_dense("pooler", "classifier.dense"), *_dense("classifier",
                                                                   "classifier.out_proj")]
    else:
        if heads["mlm"]:
            top += [*_dense("mlm.transform", "cls.predictions.transform.dense"),
                    *_norm("mlm.norm", "cls.predictions.transform.LayerNorm"),
                    ("mlm.bias", "cls.predictions.bias", False)]
        if heads["nsp"] or heads["classifier"]:
            top += _dense("pooler", "bert.pooler.dense")
        if heads["nsp"]:
            top += _dense("nsp", "cls.seq_relationship")
        if heads["classifier"]:
            top += _dense("classifier", "classifier")
    layer = [*_dense("attn.out", "attention.output.dense"), *_dense("ffn.up", "intermediate.dense"),
             *_dense("ffn.down", "output.dense")]
    layer += (_norm("norm1", "attention.LayerNorm") + _norm("norm2", "intermediate.LayerNorm")
              if pre else
              _norm("norm1", "attention.output.LayerNorm") + _norm("norm2", "output.LayerNorm"))
    return top, layer, f"{base}.encoder.layer"


QKV = ("query", "key", "value")


def _pairs(pre: bool, heads: dict, num_layers: int):
    """Every (our name, layer or None, part of the fused QKV or None, HF name, transpose)."""
    top, layer, prefix = _tables(pre, heads)
    out = [(ours, None, None, hf, t) for ours, hf, t in top]
    for i in range(num_layers):
        out += [(f"encoder.blocks.{ours}", i, None, f"{prefix}.{i}.{hf}", t)
                for ours, hf, t in layer]
        for part, name in enumerate(QKV):
            out += [(f"encoder.blocks.attn.qkv.{w}", i, part,
                     f"{prefix}.{i}.attention.self.{name}.{w}", w == "weight")
                    for w in ("weight", "bias")]
    return out


def _position_name(pre: bool) -> str:
    return f"{PRE if pre else 'bert'}.embeddings.position_embeddings.weight"


def bert_to_hf(model: Bert, model_cfg: ModelConfig, kind: str,
               pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """Our model as an HF state dict (float32, HF names; tied decoder tensors left out, as
    `save_pretrained` does)."""
    pre = model_cfg.norm == "pre"
    heads = _heads_for(model, pre, kind)
    ours = our_state_dict(model)
    out = {}
    for name, layer, part, hf, transpose in _pairs(pre, heads, model_cfg.num_layers):
        x = ours[name] if layer is None else ours[name][layer]
        x = x if part is None else np.split(x, 3, axis=-1)[part]
        out[hf] = np.ascontiguousarray((x.T if transpose else x).astype(np.float32))
    position = ours["encoder.embeddings.position"].astype(np.float32)
    if pre:  # RoBERTa's real token i reads row pad + 1 + i; rows 0..pad are never read by them
        position = np.concatenate([np.zeros((pad_token_id + 1, position.shape[1]), np.float32),
                                   position])
    out[_position_name(pre)] = position
    return out


def _heads_for(model: Bert, pre: bool, kind: str) -> dict:
    norm = "pre" if pre else "post"
    if (norm, kind) not in ARCHITECTURES:
        raise UserError(f"cannot export a {norm}-LN model as kind={kind!r} (transformers has no "
                        f"such class); use one of {[k for n, k in ARCHITECTURES if n == norm]}")
    heads = {"mlm": kind in ("mlm", "pretrain"), "nsp": kind == "pretrain",
             "classifier": kind == "cls"}
    have = {"mlm": model.mlm is not None, "nsp": model.nsp is not None,
            "classifier": model.classifier is not None}
    lacking = [h for h in heads if heads[h] and not have[h]]
    if lacking:
        raise UserError(f"kind={kind!r} needs the model's {', '.join(lacking)} head, which it "
                        "does not have; pick the kind that matches the model")
    if heads["classifier"] and model.pooling != "cls":
        raise UserError(f"this classifier pools with glue.pooling={model.pooling!r}; transformers' "
                        "sequence classifiers read [CLS] only, so it cannot be exported as "
                        "kind='cls'; fine-tune with glue.pooling=cls to export one")
    return heads


def _normalise(sd: dict[str, np.ndarray], pre: bool) -> dict[str, np.ndarray]:
    """Old TF-converted names (LayerNorm.gamma/beta) and a bare BertModel's unprefixed keys."""
    renamed = {}
    base = PRE if pre else "bert"
    bare = not any(k.startswith(f"{base}.") for k in sd)
    for key, value in sd.items():
        key = key.removesuffix(".gamma") + ".weight" if key.endswith(".gamma") else key
        key = key.removesuffix(".beta") + ".bias" if key.endswith(".beta") else key
        if bare and key.split(".")[0] in ("embeddings", "encoder", "pooler", "LayerNorm"):
            key = f"{base}.{key}"
        renamed[key] = value
    return renamed


def bert_from_hf(sd: dict[str, np.ndarray], hf_config: dict,
                 source: str = "the HF state dict") -> tuple[Bert, ModelConfig]:
    """An HF BERT (or RobertaPreLayerNorm) state dict + config.json -> (Bert, ModelConfig)."""
    model_cfg, pad = config_from_hf(hf_config, source)
    pre = model_cfg.norm == "pre"
    sd = _normalise(sd, pre)
    classifier = "classifier.out_proj.weight" if pre else "classifier.weight"
    heads = {"mlm": ("lm_head.bias" if pre else "cls.predictions.bias") in sd,
             "nsp": not pre and "cls.seq_relationship.weight" in sd, "classifier": classifier in sd}
    _check_tied(sd, pre, source)
    _check_layer_count(sd, _tables(pre, heads)[2], hf_config, model_cfg.num_layers, source)
    pieces: dict[str, dict] = {}
    used = set()
    for name, layer, part, hf, transpose in _pairs(pre, heads, model_cfg.num_layers):
        if hf not in sd:
            raise UserError(f"{source} lacks {hf}; it is not a complete BERT checkpoint")
        used.add(hf)
        pieces.setdefault(name, {})[(layer, part)] = sd[hf].T if transpose else sd[hf]
    arrays = {name: _assemble(p) for name, p in pieces.items()}
    position = sd[_position_name(pre)]
    used.add(_position_name(pre))
    arrays["encoder.embeddings.position"] = position[pad + 1:] if pre else position
    ignorable = ("position_ids", "decoder.weight", "decoder.bias", "pooler.dense.weight",
                 "pooler.dense.bias", "token_type_ids")
    unknown = sorted(k for k in set(sd) - used if not k.endswith(ignorable))
    if unknown:
        raise UserError(f"{source} has tensors bertjax cannot place: {unknown[:5]}; only BERT "
                        "(post-LN) and RobertaPreLayerNorm encoders with MLM/NSP/classifier "
                        "heads are supported")
    dropout = _field(hf_config, "classifier_dropout", source) or model_cfg.dropout
    return model_from_arrays(model_cfg, arrays, source, dropout), model_cfg


def _check_layer_count(sd: dict, prefix: str, hf_config: dict, num_layers: int,
                       source: str) -> None:
    """config.json's layer count against the weights' (else a missing layer reads as an
    incomplete checkpoint, while the weights are whole and config.json is what is wrong)."""
    found = {key[len(prefix) + 1:].split(".")[0] for key in sd if key.startswith(f"{prefix}.")}
    layers = sum(index.isdigit() for index in found)
    if layers and layers != num_layers:
        says = (f"says num_hidden_layers={num_layers}" if "num_hidden_layers" in hf_config else
                f"has no num_hidden_layers (so transformers' default, {num_layers})")
        raise UserError(f"{source}: config.json {says} but the weights hold {layers} layers; "
                        "config.json does not belong to these weights: fix it or download the "
                        "model again")


def _assemble(parts: dict) -> np.ndarray:
    """{(layer, qkv part): array} -> one array: parts joined on the last axis, layers stacked."""
    layers = sorted({layer for layer, _ in parts}, key=lambda x: -1 if x is None else x)
    per_layer = []
    for layer in layers:
        chunks = [parts[k] for k in sorted((k for k in parts if k[0] == layer),
                                           key=lambda k: -1 if k[1] is None else k[1])]
        per_layer.append(chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=-1))
    return per_layer[0] if layers == [None] else np.stack(per_layer)


def _check_tied(sd: dict, pre: bool, source: str) -> None:
    word = sd.get(f"{PRE if pre else 'bert'}.embeddings.word_embeddings.weight")
    head = "lm_head" if pre else "cls.predictions"
    for tied, target in ((f"{head}.decoder.weight", word), (f"{head}.decoder.bias",
                                                             sd.get(f"{head}.bias"))):
        if tied in sd and target is not None and not np.array_equal(sd[tied], target):
            raise UserError(f"{source}: {tied} differs from the tensor it should be tied to; "
                            "bertjax ties the MLM decoder to the word embeddings and bias")


# ---- config.json ----
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


def _field(c: dict, name: str, source: str):
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
    c = {name: _field(c, name, source) for name in HF_FIELDS}  # read once, each type checked
    model_type = c["model_type"]
    if model_type not in ("bert", "roberta-prelayernorm"):
        raise UserError(f"{source}: model_type={model_type!r} is not supported; bertjax imports "
                        "'bert' (post-LN) and 'roberta-prelayernorm' (pre-LN) checkpoints")
    if c["hidden_act"] != "gelu":
        raise UserError(f"{source}: hidden_act={c['hidden_act']!r} is not supported; bertjax "
                        "uses exact (erf) GELU, hidden_act 'gelu'")
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
            layer_norm_eps=float(c["layer_norm_eps"]))
    except UserError as e:  # a value outside bertjax's domains, named by our key
        raise UserError(f"{source}: config.json describes no model bertjax can build ({e})"
                        ) from None
    return model_cfg, pad


def config_to_hf(model_cfg: ModelConfig, kind: str, num_labels: int = 0,
                 special: dict | None = None, label_names: tuple[str, ...] = ()) -> dict:
    """config.json for `kind` (mlm | cls | pretrain); `special`: pad/cls/sep token ids;
    `label_names`: a classifier's class names by index (else transformers' LABEL_i)."""
    special = special or {"pad": 0}
    pre = model_cfg.norm == "pre"
    positions = model_cfg.max_position_embeddings + (special["pad"] + 1 if pre else 0)
    c = {"architectures": [ARCHITECTURES["pre" if pre else "post", kind]],
         "model_type": "roberta-prelayernorm" if pre else "bert",
         "vocab_size": model_cfg.vocab_size, "hidden_size": model_cfg.hidden_size,
         "num_hidden_layers": model_cfg.num_layers,
         "num_attention_heads": model_cfg.num_heads,
         "intermediate_size": model_cfg.intermediate_size, "hidden_act": "gelu",
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
              "label2id": {name: i for i, name in enumerate(names)}, "classifier_dropout": None}
    return c


# ---- directories ----
def _tokenizer_files(tokenizer_json: Path, out: Path, max_length: int) -> dict:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json (+ vocab.txt for
    WordPiece), so `AutoTokenizer.from_pretrained(out)` works; returns the special token ids."""
    check_not_lfs_pointer(tokenizer_json)
    spec = json.loads(tokenizer_json.read_text())
    vocab = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab |= (spec.get("model") or {}).get("vocab") or {}
    names = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    missing = [t for t in names.values() if t not in vocab]
    if missing:
        raise UserError(f"{tokenizer_json} has no {', '.join(missing)}; a BERT tokenizer needs "
                        "[PAD] [UNK] [CLS] [SEP] [MASK]")
    shutil.copyfile(tokenizer_json, out / "tokenizer.json")
    tokens = {f"{k}_token": v for k, v in names.items()}
    lowercase = bool((spec.get("normalizer") or {}).get("lowercase", False))
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
         "model_max_length": max_length, "clean_up_tokenization_spaces": False, **tokens},
        indent=2))
    if (spec.get("model") or {}).get("type") == "WordPiece":  # for older, vocab.txt-based loaders
        by_id = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
        (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in by_id))
    return {k: vocab[v] for k, v in names.items()}


def export_hf(model: Bert, model_cfg: ModelConfig, tokenizer_json_path: str | Path | None,
              out_dir: str | Path, kind: str, *, force: bool = False,
              label_names: tuple[str, ...] = (), key: str = "out_dir") -> str:
    """Write a directory `transformers` loads (config.json, model.safetensors, tokenizer files);
    returns a note on how to load it (for pre-LN: that inputs must be right-padded).
    `label_names`: a classifier's classes by index (a GLUE task's), for id2label; `key`: what
    errors call `out_dir` (the CLI's OUT_DIR)."""
    if kind not in KINDS:
        raise UserError(f"kind={kind!r}: use one of {list(KINDS)}")
    _heads_for(model, model_cfg.norm == "pre", kind)  # refuse before writing anything
    out_dir = Path(out_dir)
    # force replaces a previous export only, never a directory of something else
    with staged_dir(out_dir, force, key=key, marker="config.json",
                    kind="Hugging Face directory") as tmp:
        special = {"pad": 0}
        if tokenizer_json_path is not None:
            special = _tokenizer_files(Path(tokenizer_json_path), tmp,
                                       model_cfg.max_position_embeddings)
        num_labels = 0 if model.classifier is None else model.classifier.bias.shape[0]
        config = config_to_hf(model_cfg, kind, num_labels, special, label_names)
        state = bert_to_hf(model, model_cfg, kind, special["pad"])
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        note = (f"{out_dir}: {config['architectures'][0]}; load it with transformers' "
                f"{config['architectures'][0]}.from_pretrained")
        if model_cfg.norm == "pre":
            note += f"; {RIGHT_PAD_NOTE} (pad_token_id={special['pad']})"
        (tmp / "README.md").write_text(f"# Exported by bertjax\n\n{note}.\n")
    return note


def import_hf(path: str | Path) -> tuple[Bert, ModelConfig, Path | None]:
    """An HF BERT directory (config.json + model.safetensors, or sharded safetensors) ->
    (Bert, ModelConfig, tokenizer.json path or None)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} has no config.json; pass a Hugging Face BERT directory")
    check_not_lfs_pointer(config_file)
    try:
        hf_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_file} is not valid JSON ({e}); re-download it") from None
    config_from_hf(hf_config, str(path))  # its mistakes first: reading the weights takes longer
    model, model_cfg = bert_from_hf(_read_weights(path), hf_config, str(path))
    tokenizer = path / "tokenizer.json"
    return model, model_cfg, tokenizer if tokenizer.is_file() else None


def hf_label_names(path: Path, num_labels: int) -> tuple[str, ...]:
    """A classifier's class names by index from config.json's id2label (as transformers'
    pipelines show them), or () when it names no complete set of `num_labels` classes.
    config.json was checked by import_hf already."""
    id2label = json.loads((path / "config.json").read_text()).get("id2label")
    if not isinstance(id2label, dict):
        return ()
    names = tuple(id2label.get(str(i)) for i in range(num_labels))
    return names if len(id2label) == num_labels and all(
        isinstance(n, str) for n in names) else ()


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    if (path / "model.safetensors").exists():
        return read_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        check_not_lfs_pointer(index)
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a safetensors index (JSON with a 'weight_map' of "
                            "tensor -> shard file); download it again") from None
        return {k: v for shard in shards for k, v in read_safetensors(path / shard).items()}
    if (path / "pytorch_model.bin").exists():
        raise UserError(f"{path} has only pytorch_model.bin, a pickle, which bertjax does not "
                        "load; convert it to model.safetensors (e.g. transformers: from_pretrained "
                        "then save_pretrained(dir, safe_serialization=True)) and retry")
    raise UserError(f"{path} has config.json but no model.safetensors; download the weights "
                    "(safetensors) into it")
