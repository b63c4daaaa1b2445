"""``from resnet.d2l import jax as d2l``: what the chapter's JAX cells use of the book's ``d2l.jax``,
for this package (``resnet.d2l`` says what is shared and what is not)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from resnet.backends.jax.blocks import Residual, ResNeXtBlock
from resnet.backends.jax.hooks import Variables, to_native
from resnet.backends.jax.layers import cpu_jit
from resnet.backends.jax.models import ResNet, ResNet18

from resnet import d2l as book
from resnet.contract import declared
from resnet.d2l import DataModule, HyperParameters, Trainer, add_to_class  # the framework-free part, as the book's

__all__ = [
    "DataModule", "FashionMNIST", "HyperParameters", "Trainer", "add_to_class",
    "Module", "Classifier", "to_batch", "train_and_predict",
    "cpu", "gpu", "num_gpus", "try_gpu",
    "get_key", "TrainState",
    "ResNeXtBlock", "ResNet", "ResNet18", "Residual",
]  # fmt: skip

NAME = declared(__name__).name


class FashionMNIST(book.FashionMNIST):
    __doc__ = book.FashionMNIST.__doc__
    framework = NAME


# No dataclass fields here: the book's subclasses declare theirs (ResNet's `arch: tuple` without a default first),
# which a field with a default in a base class would forbid.
class Module(nn.Module, book.HyperParameters):
    """The book's base of models: a Flax ``linen`` Module whose ``__call__`` runs ``self.net``, trained by
    ``Trainer`` through ``training_step`` and ``configure_optimizers`` (SGD at ``self.lr``). Its variables are
    not in the Module: ``Trainer.fit`` keeps them in ``trainer.state`` (a ``TrainState``)."""

    @nn.nowrap
    def loss(self, Y_hat: jax.Array, Y: jax.Array) -> jax.Array:
        """The training objective, defined by subclasses (``Classifier``: cross-entropy)."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss(Y_hat, Y)")

    def __call__(self, X: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        """``self.net(X)``; the model sets ``self.net`` in its ``setup``."""
        if not hasattr(self, "net"):
            raise AttributeError(f"{type(self).__name__} has no self.net; build it in setup, as the book does")
        return self.net(X, *args, **kwargs)

    @nn.nowrap
    def training_step(self, params: Any, batch: Sequence[jax.Array], state: TrainState) -> tuple[Any, Any]:
        """The loss on one batch ``(X, y)`` at ``params``, with the updated ``batch_stats``, and its gradient:
        ``((loss, updates), grads)``, as the book's (``state.apply_fn`` runs the model in training mode)."""

        def objective(params: Any) -> tuple[jax.Array, Variables]:
            variables = {"params": params, "batch_stats": state.batch_stats}
            Y_hat, updates = state.apply_fn(variables, *batch[:-1], mutable=["batch_stats"])
            return self.loss(Y_hat, batch[-1]), updates

        return jax.value_and_grad(objective, has_aux=True)(params)

    @nn.nowrap
    def validation_step(self, params: Any, batch: Sequence[jax.Array], state: TrainState) -> jax.Array:
        """The loss on one validation batch, in inference mode (BatchNorm's running statistics)."""
        Y_hat = _in_mode(self, False).apply({"params": params, "batch_stats": state.batch_stats}, *batch[:-1])
        return self.loss(Y_hat, batch[-1])

    @nn.nowrap
    def configure_optimizers(self) -> optax.GradientTransformation:
        """Plain SGD at the model's learning rate, the book's optimizer."""
        return optax.sgd(self.lr)

    @nn.nowrap
    def apply_init(self, dummy_input: Sequence[jax.Array], key: jax.Array | dict[str, jax.Array]) -> Variables:
        """The model's initial variables (``params``, ``batch_stats``) for the inputs ``dummy_input``."""
        return self.init(key, *dummy_input)


class Classifier(Module):
    """The book's base of classifiers: mean softmax cross-entropy, accuracy and ``layer_summary``."""

    @nn.nowrap
    def loss(self, Y_hat: jax.Array, Y: jax.Array, averaged: bool = True) -> jax.Array:
        """Softmax cross-entropy of logits ``Y_hat`` against integer labels ``Y``, averaged or per example."""
        losses = optax.softmax_cross_entropy_with_integer_labels(Y_hat.reshape(-1, Y_hat.shape[-1]), Y.reshape(-1))
        return losses.mean() if averaged else losses

    @nn.nowrap
    def accuracy(self, Y_hat: jax.Array, Y: jax.Array, averaged: bool = True) -> jax.Array:
        """The fraction of correct predictions (or 0/1 per example)."""
        correct = (Y_hat.reshape(-1, Y_hat.shape[-1]).argmax(axis=1) == Y.reshape(-1)).astype(jnp.float32)
        return correct.mean() if averaged else correct

    @nn.nowrap
    def layer_summary(self, X_shape: Sequence[int], key: jax.Array | None = None) -> None:
        """Each part of ``self.net`` with its output shape, for a batch of zeros of ``X_shape`` (NHWC)."""
        X = jnp.zeros(X_shape)
        variables = self.init(get_key() if key is None else key, X)
        # Bound to its variables, the model's setup has run and its parts can be called one by one.
        bound = self.clone().bind(variables, mutable=["batch_stats"])
        for layer in bound.net.layers:
            X = layer(X)
            print(type(layer).__name__, "output shape:\t", X.shape)


class TrainState(train_state.TrainState):
    """Flax's training state (``step``, ``params``, the optimizer's state) with BatchNorm's ``batch_stats``:
    ``trainer.state`` after ``Trainer.fit`` of a book model, as the book's trainer keeps it."""

    batch_stats: Any = None


def _in_mode(model: nn.Module, training: bool) -> nn.Module:
    """The model with its ``training`` field set (the book's models have one, which their BatchNorm reads),
    else the model itself."""
    if any(field.name == "training" and field.init for field in dataclasses.fields(model)):
        return model.clone(training=training)
    return model


def to_batch(x: np.ndarray, labels: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """A NumPy batch as the arrays the book's loaders give: float32 NHWC images, int32 labels."""
    return to_native(x), jnp.asarray(labels, jnp.int32)


def train_and_predict(
    model: nn.Module, accelerator: bool
) -> tuple[Callable[..., Any], Callable[[np.ndarray], np.ndarray]]:
    """``Trainer.fit``'s train step and predict function for ``model`` (on a GPU when ``accelerator`` and one
    is seen): this package's own, or for a book model its ``training_step`` and ``configure_optimizers``."""
    if not isinstance(model, Module):
        from resnet.backends.jax import hooks, train

        if accelerator:
            hooks.to_accelerator(model)
        return train.make_train_step(model), train.make_predict(model)
    device = try_gpu() if accelerator else cpu()
    training, inference = _in_mode(model, True), _in_mode(model, False)

    @cpu_jit  # XLA's own convolutions on a CPU, as this package's steps (layers.CPU_COMPILER_OPTIONS)
    def sgd_step(state: TrainState, X: jax.Array, Y: jax.Array) -> tuple[TrainState, jax.Array]:
        (loss, updates), grads = training.training_step(state.params, (X, Y), state)
        return state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats)), loss

    logits = cpu_jit(inference.apply)

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> Any:
        batch = jax.device_put(to_batch(x, labels), device)
        if train_step.state is None:  # the variables' shapes come from the first batch, as in the book's Trainer
            # One image is enough for the shapes, and Flax's init does not update the BatchNorm statistics.
            variables = training.apply_init([batch[0][:1]], key=get_key())
            train_step.state = TrainState.create(
                apply_fn=training.apply,
                params=variables["params"],
                batch_stats=variables.get("batch_stats", {}),
                tx=model.configure_optimizers(),
            )
        train_step.state, loss = sgd_step(train_step.state, *batch)
        return float(loss) if wait else lambda: float(loss)

    train_step.state = None  # type: ignore[attr-defined]  # Trainer.fit keeps the last one as trainer.state

    def predict(x: np.ndarray) -> np.ndarray:
        state = train_step.state
        if state is None:
            raise RuntimeError("this model has no variables yet: train_step creates them from the first batch")
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return np.asarray(logits(variables, jax.device_put(to_native(x), device)))

    return train_step, predict


def cpu() -> jax.Device:
    """The CPU."""
    return jax.devices("cpu")[0]


def gpu(i: int = 0) -> jax.Device:
    """GPU ``i``."""
    return jax.devices("gpu")[i]


def num_gpus() -> int:
    """How many GPUs JAX sees."""
    try:
        return jax.device_count("gpu")
    except RuntimeError:  # jaxlib without a GPU backend
        return 0


def try_gpu(i: int = 0) -> jax.Device:
    """GPU ``i`` when there is one, else the CPU."""
    return gpu(i) if num_gpus() > i else cpu()


def get_key() -> jax.Array:
    """A fresh PRNG key on each call, as the book's (drawn from Python's ``random``: ``random.seed`` repeats
    them)."""
    return jax.random.PRNGKey(random.randrange(2**31))
