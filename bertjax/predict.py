"""Inference: fill-mask, classify and NSP, as library functions and `python -m bertjax.predict`.

    python -m bertjax.predict fill-mask CHECKPOINT "The capital of France is [MASK]." [--top-k 5]

Inputs are padded to the longest in the batch; outputs are probabilities (softmax in f32).
"""

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.model import Bert


def encode(tokenizer, texts: list, pairs: list | None = None) -> dict[str, np.ndarray]:
    """Tokenize (with [CLS]/[SEP] and token types) and right-pad to the longest row."""
    inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
    encodings = tokenizer.encode_batch(inputs)
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), length), np.int32)
    types = np.zeros_like(ids)
    mask = np.zeros(ids.shape, bool)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = e.ids
        types[row, :len(e.ids)] = e.type_ids
        mask[row, :len(e.ids)] = True
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@jax.jit
def _mlm_probs(model: Bert, ids, types, mask):
    return jax.nn.softmax(model.mlm_logits(model(ids, types, mask)), axis=-1)


def fill_mask(model: Bert, tokenizer, texts: list[str], top_k: int = 5):
    """For each text, for each [MASK] in it: the top-k (token, probability) pairs."""
    mask_id = tokenizer.token_to_id("[MASK]")
    batch = encode(tokenizer, texts)
    probs = np.asarray(_mlm_probs(model, *(jnp.asarray(batch[k]) for k in (
        "input_ids", "token_type_ids", "attention_mask"))))
    results = []
    for row, ids in enumerate(batch["input_ids"]):
        per_mask = []
        for pos in np.flatnonzero(ids == mask_id):
            best = np.argsort(-probs[row, pos])[:top_k]
            per_mask.append([(tokenizer.id_to_token(int(t)), float(probs[row, pos, t]))
                             for t in best])
        results.append(per_mask)
    return results
