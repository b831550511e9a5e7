"""The checks a Hugging Face BERT state dict passes before hf.py maps it onto bertjax's model:
each tensor's shape and values, the layer count against config.json, and heads bertjax can hold
(a tied MLM decoder, a classifier with its pooler). Each failure is one line naming the fix.
"""

import warnings

import numpy as np

from bertjax.errors import UserError
from bertjax.weights import check_values

PRE = "roberta_prelayernorm"  # RobertaPreLayerNorm's state-dict prefix (post-LN BERT's: "bert")


def check_tensor(array: np.ndarray, hf_name: str, shape: tuple[int, ...], source: str) -> None:
    """One HF tensor, named as the user's file names it, before it is transposed and joined
    (a wrong shape then raised numpy's ValueError from the joining)."""
    if tuple(array.shape) != shape:
        raise UserError(f"{source}: {hf_name} has shape {list(array.shape)}, but config.json's "
                        f"sizes need {list(shape)}; config.json does not belong to these weights, "
                        "or the file is damaged: download the model again")
    check_values(array, hf_name, source)


def check_layer_count(sd: dict, prefix: str, hf_config: dict, num_layers: int,
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


def check_heads(sd: dict, hf_config: dict, heads: dict, pre: bool, source: str) -> None:
    """The heads' tensors agree with how bertjax holds them: the MLM decoder tied (to the word
    embeddings and the MLM bias), and a post-LN classifier beside its pooler."""
    _check_tied(sd, pre, source)
    _check_untied_decoder(sd, hf_config, heads["mlm"], pre, source)
    if heads["classifier"] and not pre and not heads["pooler"]:
        # BertForSequenceClassification always saves its pooler; a per-token head never does
        raise UserError(f"{source} has a classifier but no pooler (bert.pooler.dense): a per-token "
                        "head (BertForTokenClassification) without `architectures` in config.json, "
                        "or a damaged checkpoint; for a token classifier's encoder add "
                        '"architectures": ["BertForTokenClassification"] to config.json')


def _check_tied(sd: dict, pre: bool, source: str) -> None:
    word = sd.get(f"{PRE if pre else 'bert'}.embeddings.word_embeddings.weight")
    head = "lm_head" if pre else "cls.predictions"
    for tied, target in ((f"{head}.decoder.weight", word), (f"{head}.decoder.bias",
                                                             sd.get(f"{head}.bias"))):
        if tied in sd and target is not None and not np.array_equal(sd[tied], target):
            raise UserError(f"{source}: {tied} differs from the tensor it should be tied to; "
                            "bertjax ties the MLM decoder to the word embeddings and bias")


def _check_untied_decoder(sd: dict, hf_config: dict, mlm: bool, pre: bool, source: str) -> None:
    """An MLM head said untied (tie_word_embeddings: false) without its decoder weight:
    transformers starts that decoder at random, bertjax ties it; said, as the two then differ."""
    decoder = f"{'lm_head' if pre else 'cls.predictions'}.decoder.weight"
    if mlm and hf_config.get("tie_word_embeddings") is False and decoder not in sd:
        warnings.warn(f"{source}: config.json has tie_word_embeddings=false but the weights hold "
                      f"no {decoder}: transformers would start that decoder at random; bertjax "
                      "ties it to the word embeddings, so masked-word predictions differ from "
                      "transformers' (fine-tuning reads the encoder only)", stacklevel=3)
