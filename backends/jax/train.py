"""The contract's train step and predict function for Flax models: each one XLA computation, jitted once per
architecture and batch shape, on JAX's default device, optionally in bfloat16."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from resnet.backends.jax.hooks import Variables, build, dtype_of, set_variables, to_native, to_numpy, variables
from resnet.backends.jax.layers import cpu_jit

from resnet import specs
from resnet.contract import TRAIN_HOOKS, check_mixed_precision, declared, hook, learning_rate_of

__all__ = list(TRAIN_HOOKS)

NAME = declared(__name__).name


def _in_bfloat16(params: Any, x: jax.Array) -> tuple[Any, jax.Array]:
    """bfloat16 copies of the weights and the batch, for mixed precision: the gradient flows back through the
    cast to the float32 weights, and BatchNorm keeps its statistics (``batch_stats``) in float32."""
    return jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.bfloat16), params), x.astype(jnp.bfloat16)


def _static(model: nn.Module, training: bool) -> nn.Module:
    """The module that the jitted functions take as a static argument, part of their cache key: the model in
    the mode they run it in, with the default learning rate (the step takes the rate as an argument), so that
    models differing only in ``lr`` share one compilation."""
    updates: dict[str, Any] = {"training": training}
    if any(field.name == "lr" and field.init for field in dataclasses.fields(model)):
        updates["lr"] = specs.DEFAULT_LR
    return model.clone(**updates)


# Jitted once per architecture, for calls that repeat (a Module without weights hashes by its fields).
# One-off calls (output_shape, forward, vjp) run eagerly: compiling ResNet-18 takes seconds, running it once
# eagerly a fraction of one.
@functools.partial(cpu_jit, static_argnums=(0, 3))
def _inference(module: nn.Module, variables: Variables, x: jax.Array, mixed_precision: bool) -> jax.Array:
    """Inference-mode outputs, computed in bfloat16 when ``mixed_precision`` (returned as float32)."""
    if not mixed_precision:
        return module.apply(variables, x)
    params, batch = _in_bfloat16(variables["params"], x)
    return module.apply({**variables, "params": params}, batch).astype(jnp.float32)


@functools.partial(cpu_jit, static_argnums=(0, 6), donate_argnums=(1, 2))
def _sgd_step(
    module: nn.Module,
    params: Any,
    batch_stats: Any,
    x: jax.Array,
    labels: jax.Array,
    lr: jax.Array,
    mixed_precision: bool = False,
) -> tuple[Any, Any, jax.Array]:
    """One plain SGD step as a single XLA computation, compiled once per architecture and batch shape (the
    learning rate is an argument, so every run of a model shares it); the old weights' buffers are donated."""
    optimizer = optax.sgd(lr)  # no momentum: its state is empty

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        weights, batch = _in_bfloat16(params, x) if mixed_precision else (params, x)
        logits, updates = module.apply({"params": weights, "batch_stats": batch_stats}, batch, mutable=["batch_stats"])
        logits = logits.astype(lr.dtype)  # the loss in the weights' precision
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return optax.apply_updates(params, updates), batch_stats, loss


@hook
def make_train_step(
    model: nn.Module, lr: float | None = None, compile: bool = False, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """Always compiled (``compile`` is accepted and ignored): one jitted ``_sgd_step`` with ``optax.sgd``,
    donating the old weights' buffers; the model's variables are the step's new ones. Mixed precision casts
    weights and batch to bfloat16 inside the step. Flax is channels-last already."""
    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    lr = learning_rate_of(model, lr)
    module, rate = _static(model, training=True), jnp.asarray(lr, dtype)

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        build(model, x.shape)
        state = variables(model)
        params, batch_stats, loss = _sgd_step(
            module,
            state["params"],
            state["batch_stats"],
            to_native(x, dtype),
            jnp.asarray(labels, jnp.int32),
            rate,
            mixed_precision,
        )
        set_variables(model, {"params": params, "batch_stats": batch_stats})
        return float(loss) if wait else lambda: float(loss)

    return train_step


@hook
def make_predict(model: nn.Module, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Jitted once per architecture and batch shape; mixed precision as in the train step."""

    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    module = _static(model, training=False)

    def predict(x: np.ndarray) -> np.ndarray:
        build(model, x.shape)
        return to_numpy(_inference(module, variables(model), to_native(x, dtype), mixed_precision))

    return predict
