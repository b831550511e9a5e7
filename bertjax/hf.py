"""Hugging Face interop: BERT weights <-> bertjax, as state dicts and as directories.

Post-LN models map onto `BertForMaskedLM` / `BertForSequenceClassification` / `BertForPreTraining`
/ `BertForNextSentencePrediction`; pre-LN models onto `RobertaPreLayerNormForMaskedLM` /
`...ForSequenceClassification` (the same function on right-padded input; see
tests/fixtures/hf_tiny/PRELN_NOTES.md). torch Linear weights are [out, in], ours [in, out]; our
fused QKV is HF's query | key | value. No torch, no pickle.
One name table serves both directions (import and export), so its halves cannot drift;
config.json's fields are mapped, both ways, in hf_config.py; the tokenizer files in
hf_tokenizer.py; what a state dict must satisfy first is checked in hf_checks.py.
"""

import json
import warnings
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from bertjax.config import ModelConfig
from bertjax.errors import UserError
from bertjax.files import check_not_lfs_pointer
from bertjax.hf_checks import PRE, check_heads, check_layer_count, check_tensor
from bertjax.hf_config import ARCHITECTURES, config_from_hf, config_to_hf, field
from bertjax.hf_tokenizer import check_lowercasing, tokenizer_files
from bertjax.model import Bert, num_labels
from bertjax.output_dirs import staged_dir
from bertjax.weights import (
    abstract_bert,
    model_from_arrays,
    parameter_shapes,
    read_safetensors,
    read_sharded_safetensors,
)
from bertjax.weights import state_dict as our_state_dict

KINDS = ("mlm", "cls", "pretrain", "nsp")
OTHER_TASK_HEADS = ("ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice")
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
        if heads["nsp"] or heads["classifier"] or heads.get("pooler"):
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
    heads = {"mlm": kind in ("mlm", "pretrain"), "nsp": kind in ("pretrain", "nsp"),
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
    """Old TF-converted names (LayerNorm.gamma/beta), a bare BertModel's unprefixed keys and an
    MLM bias stored only as the decoder's."""
    renamed = {}
    base = PRE if pre else "bert"
    bare = not any(k.startswith(f"{base}.") for k in sd)
    for key, value in sd.items():
        key = key.removesuffix(".gamma") + ".weight" if key.endswith(".gamma") else key
        key = key.removesuffix(".beta") + ".bias" if key.endswith(".beta") else key
        if bare and key.split(".")[0] in ("embeddings", "encoder", "pooler", "LayerNorm"):
            key = f"{base}.{key}"
        renamed[key] = value
    # The MLM output bias is tied both ways: a checkpoint that stores it only as the decoder's
    # (older heads kept it there) lost its MLM head, and the head's other tensors read as
    # unplaceable; transformers' from_pretrained ties the copy that is there
    head = "lm_head" if pre else "cls.predictions"
    if f"{head}.decoder.bias" in renamed and f"{head}.bias" not in renamed:
        renamed[f"{head}.bias"] = renamed[f"{head}.decoder.bias"]
    return renamed


def bert_from_hf(sd: dict[str, np.ndarray], hf_config: dict,
                 source: str = "the HF state dict") -> tuple[Bert, ModelConfig]:
    """An HF BERT (or RobertaPreLayerNorm) state dict + config.json -> (Bert, ModelConfig)."""
    model_cfg, pad = config_from_hf(hf_config, source)
    pre = model_cfg.norm == "pre"
    sd = _normalise(sd, pre)
    # Per-token, span and multiple-choice heads also say `classifier` (or `qa_outputs`) but score
    # no sentence: read such a model's encoder (and pooler), as transformers' sequence classes do
    arch = (hf_config.get("architectures") or [""])[0]
    if isinstance(arch, str) and arch.endswith(OTHER_TASK_HEADS):
        head = sorted(k for k in sd if k.startswith(("classifier.", "qa_outputs.")))
        sd = {k: v for k, v in sd.items() if k not in head}
        if head:  # said, as transformers says which weights it did not use
            warnings.warn(f"{source} is a {arch}: its task head ({', '.join(head)}) is left out, "
                          "as bertjax has sentence-level heads only; its encoder is loaded",
                          stacklevel=2)
    classifier = "classifier.out_proj.weight" if pre else "classifier.weight"
    heads = {"mlm": ("lm_head.bias" if pre else "cls.predictions.bias") in sd,
             "nsp": not pre and "cls.seq_relationship.weight" in sd, "classifier": classifier in sd,
             # a bare BertModel's trained pooler: BertForSequenceClassification starts from it
             "pooler": not pre and "bert.pooler.dense.weight" in sd}
    check_heads(sd, hf_config, heads, pre, source)
    check_layer_count(sd, _tables(pre, heads)[2], hf_config, model_cfg.num_layers, source)
    labels = sd[classifier].shape[0] if heads["classifier"] and sd[classifier].ndim else 0
    ours = parameter_shapes(abstract_bert(model_cfg, heads["mlm"], heads["nsp"], labels,
                                          pooled=heads["pooler"]))
    pieces: dict[str, dict] = {}
    used = set()
    for name, layer, part, hf, transpose in _pairs(pre, heads, model_cfg.num_layers):
        if hf not in sd:
            raise UserError(f"{source} lacks {hf}; it is not a complete BERT checkpoint")
        check_tensor(sd[hf], hf, _hf_shape(ours[name], layer, part, transpose), source)
        used.add(hf)
        pieces.setdefault(name, {})[(layer, part)] = sd[hf].T if transpose else sd[hf]
    arrays = {name: _assemble(p) for name, p in pieces.items()}
    position = sd[_position_name(pre)]
    check_tensor(position, _position_name(pre), (model_cfg.max_position_embeddings +
                                                 (pad + 1 if pre else 0), model_cfg.hidden_size),
                 source)
    used.add(_position_name(pre))
    arrays["encoder.embeddings.position"] = position[pad + 1:] if pre else position
    ignorable = ("position_ids", "decoder.weight", "decoder.bias", "pooler.dense.weight",
                 "pooler.dense.bias", "token_type_ids")
    unknown = sorted(k for k in set(sd) - used if not k.endswith(ignorable))
    if unknown:
        qa = all(k.startswith("qa_outputs.") for k in unknown)  # a span head, its class unnamed
        raise UserError(f"{source} has tensors bertjax cannot place: {unknown[:5]}; only BERT "
                        "(post-LN) and RobertaPreLayerNorm encoders with MLM/NSP/classifier "
                        "heads are supported" + ('; for a question-answering model\'s encoder add '
                                                 '"architectures": ["BertForQuestionAnswering"] '
                                                 "to config.json" if qa else ""))
    # transformers: hidden_dropout_prob only when classifier_dropout is null (0.0 is a rate)
    dropout = field(hf_config, "classifier_dropout", source)
    dropout = model_cfg.dropout if dropout is None else dropout
    return model_from_arrays(model_cfg, arrays, source, dropout), model_cfg


def _hf_shape(ours: tuple[int, ...], layer: int | None, part: int | None,
              transpose: bool) -> tuple[int, ...]:
    """The shape HF stores one piece of our parameter `ours` in: one layer of a stack, one of
    query | key | value, torch's [out, in]."""
    shape = list(ours[1:] if layer is not None else ours)
    if part is not None:
        shape[-1] //= len(QKV)
    return tuple(shape[::-1] if transpose else shape)


def _assemble(parts: dict) -> np.ndarray:
    """{(layer, qkv part): array} -> one array: parts joined on the last axis, layers stacked."""
    layers = sorted({layer for layer, _ in parts}, key=lambda x: -1 if x is None else x)
    per_layer = []
    for layer in layers:
        chunks = [parts[k] for k in sorted((k for k in parts if k[0] == layer),
                                           key=lambda k: -1 if k[1] is None else k[1])]
        per_layer.append(chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=-1))
    return per_layer[0] if layers == [None] else np.stack(per_layer)


# ---- directories ----
def export_hf(model: Bert, model_cfg: ModelConfig, tokenizer_json_path: str | Path | None,
              out_dir: str | Path, kind: str, *, force: bool = False,
              label_names: tuple[str, ...] = (), key: str = "out_dir",
              multi_label: bool = False) -> str:
    """Write a directory `transformers` loads (config.json, model.safetensors, tokenizer files);
    returns a note on how to load it (for pre-LN: that inputs must be right-padded).
    `label_names`: a classifier's classes by index (a GLUE task's), for id2label; `key`: what
    errors call `out_dir` (the CLI's OUT_DIR); `multi_label`: see config_to_hf."""
    if kind not in KINDS:
        raise UserError(f"kind={kind!r}: use one of {list(KINDS)}")
    _heads_for(model, model_cfg.norm == "pre", kind)  # refuse before writing anything
    out_dir = Path(out_dir)
    # force replaces a previous export only, never a directory of something else
    with staged_dir(out_dir, force, key=key, marker="config.json",
                    kind="Hugging Face directory") as tmp:
        special = {"pad": 0}
        if tokenizer_json_path is not None:
            special = tokenizer_files(Path(tokenizer_json_path), tmp,
                                       model_cfg.max_position_embeddings)
        labels = num_labels(model)
        # the classifier's own rate (written as null, transformers took hidden_dropout_prob)
        config = config_to_hf(model_cfg, kind, labels, special, label_names, multi_label,
                              model.classifier_dropout if labels else None)
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
    (Bert, ModelConfig, its tokenizer file: tokenizer.json, else vocab.txt, else None)."""
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
    # older transformers and Google's BERT releases save only vocab.txt (read as BertTokenizer)
    tokenizer = next((path / name for name in ("tokenizer.json", "vocab.txt")
                      if (path / name).is_file()), None)
    if tokenizer is not None and tokenizer.name == "tokenizer.json":
        check_lowercasing(path, tokenizer, hf_config.get("model_type", "bert"))
    return model, model_cfg, tokenizer


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    if (path / "model.safetensors").exists():
        return read_safetensors(path / "model.safetensors")
    if (path / "model.safetensors.index.json").is_file():
        return read_sharded_safetensors(path / "model.safetensors.index.json")
    pickles = [name for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")
               if (path / name).exists()]
    if pickles:
        raise UserError(f"{path} has only {pickles[0]}, pickled weights, which bertjax does not "
                        "load; convert it to model.safetensors (e.g. transformers: from_pretrained "
                        "then save_pretrained(dir, safe_serialization=True)) and retry")
    for name, flag in (("tf_model.h5", "from_tf"), ("flax_model.msgpack", "from_flax")):
        if (path / name).exists():
            raise UserError(f"{path} has only {name}, weights bertjax does not read; convert "
                            "them to model.safetensors (transformers: BertForPreTraining."
                            f"from_pretrained(dir, {flag}=True).save_pretrained(new_dir)) and pass "
                            "new_dir")
    raise UserError(f"{path} has config.json but no model.safetensors; download the weights "
                    "(safetensors) into it")
