"""The train state and the jitted steps: the MLM pretraining step, the GLUE step, and the one
optimizer update both use.

MLM: one global batch per step is sharded over the mesh's `data` axis, masked on device (keys
derived from each sequence's global position, so masks do not depend on how the batch is
split), split into micro-batches that a `lax.scan` accumulates, and normalised once by the
global number of predicted tokens. GLUE: one bucketed batch, mean loss over its valid rows.
Both then go through `apply_update`: unscale (fp16), finite check, AdamW, skip a bad step. Both
take the learning-rate schedule's numbers as an argument (`optim.ScheduleArgs`), so one program
serves every learning rate, warm-up and run length.

The steps are `jax.jit`, not `eqx.filter_jit`: equinox's wrapper waits for each call's result
(to raise its runtime errors at the call), so the host could not read, copy and dispatch the
next batch while the device runs this step (on CPUs `sharding.with_mesh` waits, for XLA:CPU's
sake). Every leaf they take and return is an array.
"""

import dataclasses
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from bertjax.config import Config, PrecisionConfig
from bertjax.loss import classification_sums, mlm_sums, pair_sums
from bertjax.masking import MaskedBatch
from bertjax.model import Bert
from bertjax.optim import ScheduleArgs, init_optimizer, make_optimizer
from bertjax.precision import LossScale, Precision, all_finite
from bertjax.xla_options import Options, jit_options


class TrainState(eqx.Module):
    model: Bert  # parameters in f32
    opt_state: optax.OptState
    loss_scale: LossScale | None  # fp16 only


def init_state(model: Bert, optimizer: optax.GradientTransformation,
               precision_cfg: PrecisionConfig) -> TrainState:
    scale = None
    if precision_cfg.compute == "float16":
        scale = LossScale.create(precision_cfg.loss_scale, precision_cfg.loss_scale_period)
    return TrainState(model, init_optimizer(optimizer, model), scale)


def abstract_state(cfg: Config) -> TrainState:
    """Shapes and dtypes of the pretraining train state, without allocating it (a restore
    target)."""
    def build():
        model = Bert(cfg.model, key=jax.random.key(0), nsp=cfg.data.objective != "mlm")
        optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
        return init_state(model, optimizer, cfg.precision)

    return eqx.filter_eval_shape(build)


def select(pred: jax.Array, a, b):
    """Tree-wise `a if pred else b` (arrays only; static parts must match)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y) if eqx.is_array(x) else x, a, b)


def apply_update(optimizer: optax.GradientTransformationExtraArgs, state: TrainState, grads,
                 loss: jax.Array, schedule: ScheduleArgs
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update from (loss-scaled) gradients at the rate `schedule` gives. A step
    whose gradients or loss are not finite leaves the model and optimizer state as they were
    (fp16: the loss scale halves; the schedule counts applied updates). Returns the new state
    and `finite`, `grad_norm` (and under fp16 `loss_scale`, and `overflow`: a step skipped for
    the scale alone, its loss finite and its scale still above the floor of 1)."""
    if state.loss_scale is not None:
        grads = state.loss_scale.unscale(grads)
    finite = all_finite(grads) & jnp.isfinite(loss)
    params = eqx.filter(state.model, eqx.is_inexact_array)
    # optax mixes Python ints and floats internally; strict promotion is for our code.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, state.opt_state, params, schedule=schedule)
    model = eqx.apply_updates(state.model, updates)
    loss_scale = None if state.loss_scale is None else state.loss_scale.update(finite)
    new = TrainState(select(finite, model, state.model),
                     select(finite, opt_state, state.opt_state), loss_scale)
    info = {"finite": finite, "grad_norm": optax.tree.norm(grads)}
    if loss_scale is not None:
        info["loss_scale"] = loss_scale.scale
        info["overflow"] = ~finite & jnp.isfinite(loss) & (state.loss_scale.scale > 1.0)
    return new, info


# ---- MLM pretraining ----
RowMasker = Callable[[jax.Array, jax.Array, jax.Array], MaskedBatch]


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the jitted MLM steps close over (hashable, so a change means a new compile)."""

    precision: Precision
    mask_fn: RowMasker  # (key, input_ids[seq], attention_mask[seq]) -> one row's MaskedBatch
    pair_objective: bool
    dropout: bool
    xla_options: Options = ()  # train.xla_flags, for the steps' compiles


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
        rows = batch.get("pair_weights", jnp.ones(batch["pair_labels"].shape, jnp.float32))
        sums |= pair_sums(model.pair_logits(hidden), batch["pair_labels"], rows)
    return sums


def make_train_step(spec: StepSpec, optimizer: optax.GradientTransformation, micro: int):
    """The jitted step: (state, batch [global rows, ...], first_row, mask key, dropout key,
    ScheduleArgs) -> (state, metrics). The state's buffers are donated (updated in place); the
    step recompiles when the number of accumulated micro-batches changes."""

    def loss_fn(model, mb, key, denominators, scale):
        sums = forward_sums(model, mb, spec, key)
        loss = sums["mlm_loss"] / denominators["mlm"]
        if spec.pair_objective:
            loss = loss + sums["pair_loss"] / denominators["pair"]
        return loss * scale, sums

    @functools.partial(jax.jit, donate_argnums=1, **jit_options(spec.xla_options))
    def donating_step(inputs, state: TrainState):
        return step(state, *inputs)

    def step(state: TrainState, batch: dict, first_row, mask_key, dropout_key, schedule):
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
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zero_sums = jax.eval_shape(lambda: forward_sums(state.model, jax.tree.map(
            lambda x: x[0], micro_batches), spec, None))
        zeros = jax.tree.map(jnp.zeros_like, (params, zero_sums))
        (grads, sums), _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(accum)))
        new, info = apply_update(optimizer, state, grads, sums["mlm_loss"], schedule)
        return new, dict(sums, **info)

    def train_step(state, batch, first_row, mask_key, dropout_key, schedule: ScheduleArgs):
        return donating_step((batch, first_row, mask_key, dropout_key, schedule), state)

    train_step.jitted = donating_step  # to lower and inspect the compiled step (HLO, tests)
    return train_step


def make_eval_step(spec: StepSpec):
    """eval_step(model, batch, first_row, mask key, num_sequences) -> sums over the batch's
    rows at global positions below num_sequences (the sequences scored). A last batch part
    filled (the shape is fixed) reads some sequences again; those copies weigh nothing."""
    @functools.partial(jax.jit, **jit_options(spec.xla_options))
    def eval_step(model: Bert, batch: dict, first_row, mask_key, num_sequences):
        batch = mask_rows(spec, mask_key, batch, first_row)
        rows = batch["input_ids"].shape[0]
        real = (first_row + jnp.arange(rows) < num_sequences).astype(jnp.float32)
        batch = dict(batch, weights=batch["weights"] * real[:, None], pair_weights=real)
        return forward_sums(model, batch, spec, None)

    return eval_step


# ---- GLUE fine-tuning ----
def make_glue_steps(optimizer: optax.GradientTransformation, precision: Precision,
                    dropout: bool, xla_options: Options = ()):
    """(train_step, predict) for a classifier or regressor. train_step((batch, key,
    ScheduleArgs), state) -> (state, sums): one update on the mean loss over the batch's valid
    rows; predict(model, batch, sharding) -> logits laid out by `sharding`. `xla_options`:
    train.xla_flags, for both compiles."""
    def loss_fn(model, batch, key, scale):
        m = precision.cast_to_compute(model)
        k_enc, k_cls = (None, None) if key is None else jax.random.split(key)
        hidden = m(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                   key=k_enc)
        logits = m.classify(hidden, batch["attention_mask"], key=k_cls)
        sums = classification_sums(logits, batch["labels"], batch["valid"].astype(jnp.float32))
        return sums["loss"] / jnp.maximum(sums["weight"], 1.0) * scale, sums

    @functools.partial(jax.jit, donate_argnums=1, **jit_options(xla_options))
    def train_step(inputs, state: TrainState):
        batch, key, schedule = inputs
        scale = jnp.asarray(1.0) if state.loss_scale is None else state.loss_scale.scale
        (_, sums), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            state.model, batch, key if dropout else None, scale)
        new, info = apply_update(optimizer, state, grads, sums["loss"], schedule)
        return new, dict(sums, **info)

    return train_step, make_glue_predict(precision, xla_options)


def make_glue_predict(precision: Precision, xla_options: Options = ()):
    """predict(model, batch, sharding) -> a classifier's logits (a regressor's scores) laid out
    by `sharding`: the fine-tune's dev and test predictions, and bertjax.glue_score's."""
    @functools.partial(jax.jit, static_argnums=2, **jit_options(xla_options))
    def predict(model, batch, everywhere):
        m = precision.cast_to_compute(model)
        hidden = m(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        # Logits replicated: each process reads all of them (the rows span processes).
        return jax.lax.with_sharding_constraint(m.classify(hidden, batch["attention_mask"]),
                                                everywhere)

    return predict
