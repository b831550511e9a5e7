"""Pretraining: the train state, the jitted train/eval steps, and `python -m bertjax.train CONFIG`.

One global batch per step is sharded over the mesh's `data` axis, masked on device (keys derived
from each sequence's global position, so masks do not depend on how the batch is split), split
into micro-batches that a `lax.scan` accumulates, and normalised once by the global number of
predicted tokens. `train.task: glue` hands over to bertjax.finetune.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from bertjax.loss import mlm_sums, pair_sums
from bertjax.model import Bert
from bertjax.precision import LossScale, Precision, all_finite


class TrainState(eqx.Module):
    model: Bert  # parameters in the param dtype (f32)
    opt_state: optax.OptState
    loss_scale: LossScale | None  # fp16 only


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the jitted steps close over (hashable, so a change means a new compile)."""

    precision: Precision
    mask_fn: object  # (key, input_ids[seq], attention_mask[seq]) -> MaskedRow; see masking.py
    pair_objective: bool
    dropout: bool


def select(pred: jax.Array, a, b):
    """Tree-wise `a if pred else b` (arrays only; static parts must match)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y) if eqx.is_array(x) else x, a, b)


def mask_rows(spec: StepSpec, key: jax.Array, batch: dict, first_row: jax.Array) -> dict:
    """Mask every row with a key from its global sequence position (split-invariant)."""
    rows = batch["input_ids"].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(first_row + jnp.arange(rows))
    masked = jax.vmap(spec.mask_fn)(keys, batch["input_ids"], batch["attention_mask"])
    return dict(batch, input_ids=masked.input_ids, positions=masked.positions,
                labels=masked.labels, weights=masked.weights)


def forward_sums(model: Bert, batch: dict, spec: StepSpec, key) -> dict[str, jax.Array]:
    """Loss/accuracy sums of one (micro-)batch in the compute dtype."""
    model = spec.precision.cast_to_compute(model)
    hidden = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], key=key)
    sums = mlm_sums(model.mlm_logits(hidden, batch["positions"]), batch["labels"],
                    batch["weights"])
    if spec.pair_objective:
        ones = jnp.ones(batch["pair_labels"].shape, jnp.float32)
        sums |= pair_sums(model.pair_logits(hidden), batch["pair_labels"], ones)
    return sums


def make_train_step(spec: StepSpec, optimizer: optax.GradientTransformation, micro: int):
    """The jitted step: (state, batch [global rows, ...], first_row, mask key, dropout key) ->
    (state, metrics). The state's buffers are donated (updated in place); the step recompiles only
    when the number of accumulated micro-batches changes."""

    def loss_fn(model, mb, key, denominators, scale):
        sums = forward_sums(model, mb, spec, key)
        loss = sums["mlm_loss"] / denominators["mlm"]
        if spec.pair_objective:
            loss = loss + sums["pair_loss"] / denominators["pair"]
        return loss * scale, sums

    @eqx.filter_jit(donate="all-except-first")
    def donating_step(inputs, state: TrainState):
        return step(state, *inputs)

    def step(state: TrainState, batch: dict, first_row, mask_key, dropout_key):
        batch = mask_rows(spec, mask_key, batch, first_row)
        rows = batch["input_ids"].shape[0]
        accum = rows // micro
        denominators = {"mlm": jnp.maximum(batch["weights"].sum(), 1.0),
                        "pair": jnp.asarray(float(rows))}
        # Rows are laid out [micro, accum] so each device's rows stay on it; scan over accum.
        micro_batches = jax.tree.map(
            lambda x: jnp.swapaxes(x.reshape(micro, accum, *x.shape[1:]), 0, 1), batch)
        scale = jnp.asarray(1.0) if state.loss_scale is None else state.loss_scale.scale
        grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
        params = eqx.filter(state.model, eqx.is_inexact_array)

        def accumulate(carry, xs):
            mb, i = xs
            key = jax.random.fold_in(dropout_key, i) if spec.dropout else None
            (_, sums), grads = grad_fn(state.model, mb, key, denominators, scale)
            carry = jax.tree.map(jnp.add, carry, (grads, sums))
            return carry, None

        zero_sums = jax.eval_shape(lambda: forward_sums(state.model, jax.tree.map(
            lambda x: x[0], micro_batches), spec, None))
        zeros = jax.tree.map(jnp.zeros_like, (params, zero_sums))
        (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(accum)))
        if state.loss_scale is not None:
            grads = state.loss_scale.unscale(grads)
        finite = all_finite(grads) & jnp.isfinite(sums["mlm_loss"])
        # optax mixes Python ints and floats internally; strict promotion is for our code.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, state.opt_state, params)
        model = eqx.apply_updates(state.model, updates)
        loss_scale = None if state.loss_scale is None else state.loss_scale.update(finite)
        new = TrainState(select(finite, model, state.model),
                         select(finite, opt_state, state.opt_state), loss_scale)
        metrics = dict(sums, finite=finite, grad_norm=optax.tree.norm(grads))
        if loss_scale is not None:
            metrics["loss_scale"] = loss_scale.scale
        return new, metrics

    def train_step(state, batch, first_row, mask_key, dropout_key):
        return donating_step((batch, first_row, mask_key, dropout_key), state)

    train_step.jitted = donating_step  # for compilation counting
    return train_step


def make_eval_step(spec: StepSpec):
    @eqx.filter_jit
    def eval_step(model: Bert, batch: dict, first_row, mask_key):
        batch = mask_rows(spec, mask_key, batch, first_row)
        return forward_sums(model, batch, spec, None)

    return eval_step


def init_state(model: Bert, optimizer, precision_cfg) -> TrainState:
    from bertjax.optim import init_optimizer

    scale = None
    if precision_cfg.compute == "float16":
        scale = LossScale.create(precision_cfg.loss_scale, precision_cfg.loss_scale_period)
    return TrainState(model, init_optimizer(optimizer, model), scale)


def main(argv: list[str]) -> None:
    from bertjax import config
    from bertjax.errors import UserError

    if not argv or argv[0] in ("-h", "--help"):
        raise UserError("usage: python -m bertjax.train CONFIG.yaml [more.yaml] [key=value ...]")
    cfg = config.load(*config.split_args(argv))
    if cfg.train.task == "glue":
        from bertjax.finetune import finetune

        finetune(cfg)
    else:
        from bertjax.pretrain import pretrain

        pretrain(cfg)


if __name__ == "__main__":
    from bertjax.errors import cli

    cli(main)
