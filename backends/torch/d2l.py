"""``from resnet.d2l import torch as d2l``: what the chapter's PyTorch cells use of the book's ``d2l.torch``,
for this package (``resnet.d2l`` says what is shared and what is not)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from resnet.backends.torch.blocks import Residual, ResNeXtBlock
from resnet.backends.torch.hooks import to_native
from resnet.backends.torch.models import ResNet, ResNet18
from torch import nn
from torch.nn import functional as F

from resnet import d2l as book
from resnet.contract import declared
from resnet.d2l import DataModule, HyperParameters, Trainer, add_to_class  # the framework-free part, as the book's

__all__ = [
    "DataModule", "FashionMNIST", "HyperParameters", "Trainer", "add_to_class",
    "Module", "Classifier", "to_batch", "train_and_predict",
    "cpu", "gpu", "num_gpus", "try_gpu",
    "normal", "rand", "randn", "init_cnn",
    "ResNeXtBlock", "ResNet", "ResNet18", "Residual",
]  # fmt: skip

NAME = declared(__name__).name


class FashionMNIST(book.FashionMNIST):
    __doc__ = book.FashionMNIST.__doc__
    framework = NAME


class Module(nn.Module, book.HyperParameters):
    """The book's base of models: an ``nn.Module`` whose ``forward`` runs ``self.net``, trained by
    ``Trainer`` through ``training_step`` and ``configure_optimizers`` (SGD at ``self.lr``)."""

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()

    def loss(self, Y_hat: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """The training objective, defined by subclasses (``Classifier``: cross-entropy)."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss(Y_hat, Y)")

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``self.net(X)``; the model sets ``self.net`` in its ``__init__``."""
        if "net" not in self._modules:
            raise AttributeError(f"{type(self).__name__} has no self.net; build it in __init__, as the book does")
        return self.net(X)

    def training_step(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """The loss on one batch ``(X, y)``."""
        return self.loss(self(*batch[:-1]), batch[-1])

    def validation_step(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """The loss on one validation batch."""
        return self.loss(self(*batch[:-1]), batch[-1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Plain SGD at the model's learning rate, the book's optimizer."""
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def apply_init(self, inputs: Sequence[torch.Tensor], init: Callable[[nn.Module], None] | None = None) -> None:
        """One pass over ``inputs`` creates the lazy layers' weights; then ``self.net.apply(init)``."""
        self.forward(*inputs)
        if init is not None:
            self.net.apply(init)


class Classifier(Module):
    """The book's base of classifiers: mean softmax cross-entropy, accuracy and ``layer_summary``."""

    def loss(self, Y_hat: torch.Tensor, Y: torch.Tensor, averaged: bool = True) -> torch.Tensor:
        """Softmax cross-entropy of logits ``Y_hat`` against integer labels ``Y``, averaged or per example."""
        return F.cross_entropy(
            Y_hat.reshape(-1, Y_hat.shape[-1]), Y.reshape(-1), reduction="mean" if averaged else "none"
        )

    def accuracy(self, Y_hat: torch.Tensor, Y: torch.Tensor, averaged: bool = True) -> torch.Tensor:
        """The fraction of correct predictions (or 0/1 per example)."""
        correct = (Y_hat.reshape(-1, Y_hat.shape[-1]).argmax(dim=1) == Y.reshape(-1)).float()
        return correct.mean() if averaged else correct

    def layer_summary(self, X_shape: Sequence[int]) -> None:
        """Each part of ``self.net`` with its output shape, for a random batch of ``X_shape`` (NCHW)."""
        X = torch.randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(type(layer).__name__, "output shape:\t", X.shape)


def to_batch(x: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A NumPy batch as the tensors the book's loaders give: float32 NCHW images, int64 labels."""
    return to_native(x), torch.from_numpy(np.asarray(labels, np.int64))


def train_and_predict(
    model: nn.Module, accelerator: bool
) -> tuple[Callable[..., Any], Callable[[np.ndarray], np.ndarray]]:
    """``Trainer.fit``'s train step and predict function for ``model`` (on a GPU when ``accelerator`` and one
    is seen): this package's own, or for a book model its ``training_step`` and ``configure_optimizers``."""
    if not isinstance(model, Module):
        from resnet.backends.torch import hooks, train

        if accelerator:
            hooks.to_accelerator(model)
        return train.make_train_step(model), train.make_predict(model)
    device = torch.device("cuda" if accelerator and torch.cuda.is_available() else "cpu")
    model.to(device)
    optimizer = None

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> Any:
        nonlocal optimizer
        model.train()
        loss = model.training_step([t.to(device) for t in to_batch(x, labels)])
        if optimizer is None:  # after the first pass, which creates the lazy layers' weights
            optimizer = model.configure_optimizers()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        return value if wait else lambda: value

    def predict(x: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return model(to_native(x).to(device)).cpu().numpy()

    return train_step, predict


def cpu() -> torch.device:
    """The CPU."""
    return torch.device("cpu")


def gpu(i: int = 0) -> torch.device:
    """GPU ``i``."""
    return torch.device(f"cuda:{i}")


def num_gpus() -> int:
    """How many GPUs PyTorch sees."""
    return torch.cuda.device_count()


def try_gpu(i: int = 0) -> torch.device:
    """GPU ``i`` when there is one, else the CPU."""
    return gpu(i) if num_gpus() > i else cpu()


normal, rand, randn = torch.normal, torch.rand, torch.randn


def init_cnn(module: nn.Module) -> None:
    """The book's initialization for CNNs: Xavier-uniform weights for each convolution and linear layer (to
    be used with ``model.apply``, once the lazy layers are built)."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
