"""Which config keys differ between two runs of one directory, for the messages that decide or
explain a rerun: a GLUE rerun starts over when a result-deciding key changed (bertjax.finetune),
a resumed pretraining run names the keys it changed and what that does to its learning rate
(bertjax.pretrain_run); the pretraining keys a fine-tune never reads (warned of as overrides, and
deciding no GLUE seed's result)."""

import yaml


def flat_keys(tree: object, prefix: str = "") -> dict[str, object]:
    """{'optim.lr': 0.001, ...} of a nested mapping; a non-mapping is one value at `prefix`."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {key: value for name, child in tree.items()
            for key, value in flat_keys(child, f"{prefix}.{name}" if prefix else str(name)).items()}


def changed_keys(old: dict, new: dict) -> list[str]:
    """Sorted dotted keys whose values differ, or that only one side has (nested or already
    flat mappings: flattening a flat one changes nothing)."""
    old, new = flat_keys(old), flat_keys(new)
    return [key for key in sorted(old.keys() | new.keys())
            if key not in old or key not in new or old[key] != new[key]]


def listed(items: list[str], limit: int) -> str:
    """The first `limit` items, comma-separated, then how many more there are."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{', '.join(items[:limit])}{more}"


# Keys that differ between launches of one multi-process run without changing what it computes
# (a new coordinator port each time, a longer wait on a slow cluster): not worth a resume's
# warning, nor the same on every process.
LAUNCH_KEYS = ("mesh.coordinator_address", "mesh.process_id", "mesh.join_timeout")

# Pretraining keys a fine-tune never reads, and what it reads instead.
_ONLY_SKIPPED = "nothing: a fine-tune skips (and counts) a step with non-finite gradients"
_LINEAR = "nothing: fine-tuning warms up over optim.warmup, then decays linearly to 0 (BERT's)"
PRETRAINING_ONLY = {
    "train.steps": "glue.epochs", "train.tokens": "glue.epochs",
    "train.micro_batch": "glue.batch_size", "train.batch_start": "glue.batch_size",
    "train.batch_end": "glue.batch_size", "data.seq_len": "glue.buckets (the largest is the "
    "max length)", "train.seed": "glue.seeds", "train.eval_every": "nothing: the dev set is "
    "scored after every epoch", "train.eval_sequences": "nothing: the dev set is scored whole",
    "optim.schedule": _LINEAR, "optim.final_lr_fraction": _LINEAR,
    "train.fill_mask": "nothing: try a fine-tuned model with `python -m bertjax.predict`",
    **dict.fromkeys(("train.max_nonfinite", "train.rollback_spike", "train.rollback_sigmas",
                     "train.rollback_warmup", "train.rollback_lr_factor",
                     "train.max_rollbacks"), _ONLY_SKIPPED),
}


def describe_changes(old_yaml: str, new_yaml: str, limit: int = 5) -> str:
    """'optim.lr: 0.001 -> 0.002, train.steps: 100 -> 200' for two configs' YAML texts, leaving
    out LAUNCH_KEYS; '' when nothing else changed."""
    old, new = flat_keys(yaml.safe_load(old_yaml)), flat_keys(yaml.safe_load(new_yaml))

    def value(side: dict, key: str) -> str:
        return as_written(side[key]) if key in side else "(unset)"

    return listed([f"{key}: {value(old, key)} -> {value(new, key)}"
                   for key in changed_keys(old, new) if key not in LAUNCH_KEYS], limit)


def as_written(value: object) -> str:
    """A config value as a `key=value` override or a YAML file writes it: null, '', true,
    [a, b] (Python's None, True and an empty string's nothing read as other things)."""
    return yaml.safe_dump(value, default_flow_style=True, width=2**31).removesuffix(
        "\n...\n").strip()
