"""A model as a flat dict of named arrays, and safetensors I/O (no pickle anywhere).

`state_dict(model)` names every array by its tree path (`encoder.blocks.attn.qkv.weight`, stacked
layers kept stacked); `load_state_dict` fills an abstract model from such a dict, checking names
and shapes. Release bundles (export.py) and the Hugging Face mapping (hf.py) are built on this.
"""

import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from bertjax.config import ModelConfig
from bertjax.errors import UserError
from bertjax.files import check_file, check_not_lfs_pointer
from bertjax.model import Bert


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays; bad files become one-line errors."""
    check_file(path, "weights file", "pass a directory that holds its model.safetensors")
    check_not_lfs_pointer(path)
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path} is not a valid safetensors file (corrupt header or data: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        "re-download or re-export it") from None


def read_sharded_safetensors(index: Path) -> dict[str, np.ndarray]:
    """The tensors a sharded checkpoint's `*.safetensors.index.json` maps to its shard files,
    each taken from the shard its `weight_map` names (a tensor stored in two shards would
    otherwise load from whichever came last); bad or incomplete shards become one-line errors."""
    check_not_lfs_pointer(index)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not all(isinstance(shard, str) for shard in weight_map.values()):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{index} is not a safetensors index (JSON with a 'weight_map' of "
                        "tensor -> shard file); download it again") from None
    shards = sorted(set(weight_map.values()))
    missing = [shard for shard in shards if not (index.parent / shard).exists()]
    if missing:  # read_safetensors would ask for a model.safetensors, which this has not
        raise UserError(f"{index.parent / missing[0]} is missing ({len(missing)} of the "
                        f"{len(shards)} shards {index.name} lists); download the shards again")
    tensors = {}
    for shard in shards:
        stored = read_safetensors(index.parent / shard)
        names = [name for name, named_shard in weight_map.items() if named_shard == shard]
        lacking = [name for name in names if name not in stored]
        if lacking:
            raise UserError(f"{index.parent / shard} lacks {lacking[0]} ({len(lacking)} of the "
                            f"{len(names)} tensors {index.name} puts there); download the shards "
                            "again")
        tensors.update((name, stored[name]) for name in names)
    return tensors


def _name(path) -> str:
    """A leaf's dotted tree path, e.g. `encoder.blocks.attn.qkv.weight`: its tensor's name."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


def state_dict(model: eqx.Module) -> dict[str, np.ndarray]:
    """`{dotted tree path: array}`, e.g. `encoder.blocks.attn.qkv.weight` (stacked [layers, ..])."""
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))[0]
    return {_name(p): np.asarray(x) for p, x in leaves}


def _is_parameter(x) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct) or eqx.is_array(x)


def parameter_shapes(abstract: eqx.Module) -> dict[str, tuple[int, ...]]:
    """`{name as state_dict names it: shape}` of a model (abstract, from abstract_bert, or not)."""
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(abstract, _is_parameter))[0]
    return {_name(p): tuple(x.shape) for p, x in leaves}


def load_state_dict(abstract: eqx.Module, arrays: dict[str, np.ndarray], source: str):
    """Fill `abstract` (from eqx.filter_eval_shape) with `arrays`, cast to its dtypes."""
    params, static = eqx.partition(abstract, _is_parameter)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [_name(p) for p, _ in leaves]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise UserError(f"{source} does not fit the model: missing {missing[:4]}, unexpected "
                        f"{extra[:4]}; it was written for a different architecture")
    values = []
    for name, (_, like) in zip(names, leaves, strict=True):
        if tuple(arrays[name].shape) != tuple(like.shape):
            raise UserError(f"{source}: {name} has shape {list(arrays[name].shape)}, the model "
                            f"needs {list(like.shape)}; the config does not match the weights")
        check_values(arrays[name], name, source)
        values.append(jax.numpy.asarray(arrays[name]).astype(like.dtype))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, values), static)


def check_values(array: np.ndarray, name: str, source: str) -> None:
    """Every parameter is a float: an integer or boolean tensor would be cast without a word
    (a bias rounded to whole numbers), and a NaN or infinity makes every prediction NaN. Both
    mean a damaged or hand-edited file; one pass over the weights (~0.3 s for BERT-base)."""
    if not jax.numpy.issubdtype(array.dtype, jax.numpy.floating):
        raise UserError(f"{source}: {name} holds {array.dtype} values, not floats; the file is "
                        "damaged or was not written as model weights: re-download or re-export it")
    if not np.isfinite(array).all():
        raise UserError(f"{source}: {name} holds NaN or infinite values, which make every "
                        "prediction NaN; re-download or re-export it (from a checkpoint before "
                        "the values went bad)")


def abstract_bert(model_cfg: ModelConfig, mlm: bool, nsp: bool, num_labels: int,
                  classifier_dropout: float = 0.1, pooling: str = "cls",
                  pooled: bool = False) -> Bert:
    return eqx.filter_eval_shape(Bert, model_cfg, key=jax.random.key(0), mlm=mlm, nsp=nsp,
                                 num_labels=num_labels, classifier_dropout=classifier_dropout,
                                 pooling=pooling, pooled=pooled)


def model_from_arrays(model_cfg: ModelConfig, arrays: dict[str, np.ndarray], source: str,
                      classifier_dropout: float = 0.1, pooling: str = "cls") -> Bert:
    """A Bert with the heads that `arrays` (our names) carry."""
    num_labels = arrays["classifier.bias"].shape[0] if "classifier.bias" in arrays else 0
    abstract = abstract_bert(model_cfg, "mlm.bias" in arrays, "nsp.weight" in arrays,
                             num_labels, classifier_dropout, pooling, "pooler.weight" in arrays)
    return load_state_dict(abstract, arrays, source)
