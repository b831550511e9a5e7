"""bertjax: BERT pretraining and GLUE fine-tuning in JAX/Equinox.

The package is split by concern: config, model (layers, model, precision), data (tokenizer,
prepare, data, masking), training (loss, optim, sharding, checkpoint, train) and tasks (glue,
predict, hf). Import submodules directly; this file stays light so `import bertjax` is cheap.
"""

__version__ = "0.1.0"


def load_pretrained(path):
    """Model, configs and tokenizer from a run dir, checkpoint, release bundle or HF BERT dir."""
    from bertjax.pretrained import load_pretrained as _load

    return _load(path)
