"""The contract's hooks (``resnet.contract``) for Flax models: conversions, building, running, weights, and the
registry that holds each model's variables (a Flax Module holds none)."""

from __future__ import annotations

import weakref
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from resnet.backends.jax.models import ResNet

from resnet.contract import MODEL_HOOKS, declared, first_layer_channels, hook
from resnet.init import initial_weights
from resnet.layouts import array_to_native, array_to_nchw, weight_to_canonical, weight_to_native
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec
from resnet.walk import tensors

__all__ = [*MODEL_HOOKS, "set_variables", "variables"]

LAYOUT = declared(__name__).layout

Variables = dict[str, Any]  # {'params': {...}, 'batch_stats': {...}}, nested dicts of jax arrays

# The Flax collection and variable of each Flax layer that hold each kind of canonical tensor (the variable's key
# in the flattened variables is the collection, the layer's path, the variable).
_TENSOR_ATTRIBUTES = {
    ConvSpec: {"weight": ("params", "kernel"), "bias": ("params", "bias")},
    BatchNormSpec: {
        "weight": ("params", "scale"),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    },
    DenseSpec: {"weight": ("params", "kernel"), "bias": ("params", "bias")},
}

_VARIABLES: dict[int, Variables] = {}  # id(model) -> its variables; an entry goes when its model does


def variables(model: nn.Module) -> Variables:
    """The model's variables, ``{'params': ..., 'batch_stats': ...}``, for ``model.apply``.

    A training step donates the arrays to the updated ones (no copy): take them again after training.
    """
    if not is_built(model):
        raise ValueError(
            "this model has no weights yet: its layers are created on first use. Build it first, for example "
            "with resnet.output_shape(model, input_shape)."
        )
    return dict(_VARIABLES[id(model)])


def set_variables(model: nn.Module, variables: Variables) -> None:
    """Make ``variables`` (as ``model.init`` or ``model.apply(..., mutable=['batch_stats'])`` give them)
    the model's own. The model takes the arrays themselves: a training step then donates them."""
    if "params" not in variables:
        raise ValueError(f"variables need a 'params' collection; got {sorted(variables)}")
    key = id(model)
    if key not in _VARIABLES:
        weakref.finalize(model, _VARIABLES.pop, key, None)
    _VARIABLES[key] = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _training(module: nn.Module, variables: Variables, x: jax.Array) -> tuple[jax.Array, Any]:
    """Training-mode output and the updated batch_stats."""
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    return y, updates["batch_stats"]


@hook
def to_native(x: np.ndarray, dtype: str = "float32") -> jax.Array:
    return jnp.asarray(array_to_native(np.asarray(x, dtype=dtype), LAYOUT))


@hook
def to_numpy(y: jax.Array) -> np.ndarray:
    y = array_to_nchw(np.asarray(y), LAYOUT)
    return y if y.flags.writeable else y.copy()  # a writable copy: NumPy views of jax arrays are read-only


@hook
def dtype_of(model: nn.Module) -> str:
    """The model's ``dtype`` field; blocks are float32."""
    return getattr(model, "dtype", "float32")


@hook
def device_of(model: nn.Module) -> str:
    """JAX's default device, unless the variables were moved."""
    leaf = jax.tree_util.tree_leaves(variables(model)["params"])[0] if is_built(model) else jnp.zeros(())
    device = next(iter(leaf.devices()))
    return f"{device.platform}:{device.id}"


@hook
def to_accelerator(model: nn.Module) -> str:
    """JAX puts arrays on its default device, a GPU when jaxlib's CUDA plugin is installed (``jax[cuda12]``),
    so nothing moves."""
    return device_of(model)


@hook
def is_built(model: nn.Module) -> bool:
    """Built once the model has its variables in this module's registry."""
    return id(model) in _VARIABLES


@hook
def build(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """The weights are the seeded framework-neutral initializer's (``resnet.init``), as the trainer's."""
    if not is_built(model):
        # Flax's initializers would compile for ~10-20 s (ResNet-18 on a CPU): take only the variables'
        # shapes from Flax, and the values from the seeded framework-neutral initializer.
        n, c, h, w = input_shape
        x = jax.ShapeDtypeStruct((n, h, w, c), dtype_of(model))
        shapes = jax.eval_shape(model.clone(training=False).init, jax.random.PRNGKey(0), x)
        set_variables(model, jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes))
        set_arrays(model, initial_weights(model.spec, input_shape))


@hook
def input_channels(model: nn.Module) -> int | None:
    """From the shape of the array in the registry's variables: HWIO kernels."""
    if not is_built(model):
        return None
    key = next(iter(_native_items(model).values()))
    return first_layer_channels(model.spec, traverse_util.flatten_dict(variables(model))[key].shape, LAYOUT)


@hook
def apply(model: nn.Module, x: jax.Array, training: bool) -> jax.Array:
    """The model is cloned with ``training`` set; the updated ``batch_stats`` go back to the registry."""
    if not is_built(model):
        n, h, w, c = x.shape
        build(model, (n, c, h, w))
    state = variables(model)
    if not training:
        return model.clone(training=False).apply(state, x)
    y, batch_stats = _training(model.clone(training=True), state, x)
    set_variables(model, {**state, "batch_stats": batch_stats})
    return y


@hook
def part_outputs(model: nn.Module, x: jax.Array) -> list[tuple[str, jax.Array]]:
    if not isinstance(model, ResNet):
        return [(type(model).__name__, apply(model, x, training=False))]
    return model.clone(training=False).apply(variables(model), x, method=ResNet.part_outputs)


@hook
def trainable_count(model: nn.Module) -> int:
    """BatchNorm running statistics are ``batch_stats``, not ``params``."""
    return sum(p.size for p in jax.tree_util.tree_leaves(variables(model)["params"]))


def _native_items(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Canonical name -> the tensor's key in the flattened variables: ``b2.0.conv1.weight`` ->
    ``("params", "b2", "0", "conv1", "kernel")``."""
    items = {}
    for tensor in tensors(model.spec):
        collection, variable = _TENSOR_ATTRIBUTES[type(tensor.layer)][tensor.kind]
        items[tensor.name] = (collection, *tensor.layer_path, variable)
    return items


def _canonical(model: nn.Module, tree: Variables) -> dict[str, np.ndarray]:
    """Canonical name -> array in canonical layout, for every tensor of ``tree`` (variables or gradients with
    the same structure)."""
    flat = traverse_util.flatten_dict(tree)
    return {name: weight_to_canonical(flat[key], LAYOUT) for name, key in _native_items(model).items() if key in flat}


@hook
def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return _canonical(model, variables(model))


@hook
def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """New arrays replace the old in the registry (jax arrays are immutable); a jitted step reads them."""
    native, dtype = _native_items(model), dtype_of(model)
    flat = traverse_util.flatten_dict(variables(model))
    for name, value in arrays.items():
        flat[native[name]] = jnp.asarray(weight_to_native(np.asarray(value, dtype=dtype), LAYOUT))
    set_variables(model, traverse_util.unflatten_dict(flat))


@hook
def vjp(model: nn.Module, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``jax.vjp`` of the training-mode forward pass with respect to the ``params``, run eagerly (compiling
    for one call would cost more than it saves)."""
    build(model, x.shape)
    state, module, dtype = variables(model), model.clone(training=True), dtype_of(model)

    def forward(params: Any) -> tuple[jax.Array, Any]:
        return _training(module, {**state, "params": params}, to_native(x, dtype))

    y, pullback, batch_stats = jax.vjp(forward, state["params"], has_aux=True)
    (grads,) = pullback(to_native(output_grad, dtype))
    set_variables(model, {**state, "batch_stats": batch_stats})
    return to_numpy(y), _canonical(model, {"params": grads})
