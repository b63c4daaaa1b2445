"""The benchmark's reference in MXNet: the chapter's models written plainly with the framework's stock layers
(Gluon ``Conv2D`` with ``groups``, ``BatchNorm``, ``Dense``, as ``HybridBlock``s so that ``hybridize()`` compiles
them), trained with ``gluon.Trainer``, and the chapter's ResNet-18 as the book writes it (numpy semantics,
``nn.Block`` composition); the harness (``resnet.bench``) times this package's models against them."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, init, npx
from mxnet.gluon import nn
from mxnet.util import np_array, np_shape

from resnet import specs
from resnet.bench.kit import Kit

__all__ = ["StockKit"]


# The chapter's code (MXNet tab), as HybridBlocks so that hybridize() compiles them.
class Residual(nn.HybridBlock):
    """The book's residual block, with the stock Gluon layers."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
        self.bn1, self.bn2 = nn.BatchNorm(), nn.BatchNorm()

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


class ResNeXtBlock(nn.HybridBlock):
    """The book's ResNeXt block (identity shortcut), with the stock grouped ``Conv2D`` (``groups=groups``)."""

    def __init__(self, num_channels: int, groups: int, bot_mul: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = nn.Conv2D(bot_channels, kernel_size=1, padding=0, strides=1)
        self.conv2 = nn.Conv2D(bot_channels, kernel_size=3, padding=1, strides=1, groups=groups)
        self.conv3 = nn.Conv2D(num_channels, kernel_size=1, padding=0, strides=1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm(), nn.BatchNorm(), nn.BatchNorm()

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        return F.relu(Y + X)


# The chapter's own code (MXNet tab), as the book writes it: run under numpy semantics (the chapter's
# `npx.set_np()`, here scoped by `_book_semantics`), mxnet.np arrays, `nn.Block`s and `nn.Sequential`s whose
# stock layers `hybridize()` compiles one by one (a Block itself has no graph).
class BookResidual(nn.Block):
    """The chapter's ``Residual`` (MXNet tab), unchanged."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
        self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm()
        self.bn2 = nn.BatchNorm()

    def forward(self, X: Any) -> Any:
        Y = npx.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return npx.relu(Y + X)


def _book_block(num_residuals: int, num_channels: int, first_block: bool = False) -> nn.Sequential:
    """The chapter's ``ResNet.block``."""
    blk = nn.Sequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(BookResidual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(BookResidual(num_channels))
    return blk


def _book_semantics() -> Any:
    """Within: MXNet's numpy semantics, as the chapter's ``npx.set_np()`` sets them (shapes first), scoped so
    that this package's models, made outside, keep theirs."""
    stack = contextlib.ExitStack()
    stack.enter_context(np_shape(True))
    stack.enter_context(np_array(True))
    return stack


class StockKit(Kit):
    """MXNet: the book's Gluon layers as ``HybridBlock``s, hybridized, ``gluon.Trainer`` (methods:
    ``resnet.bench.kit.Kit``). A CPU-only build here: the harness refuses ``--gpu`` and ``--mixed-precision``
    from the backend's declaration."""

    framework_import = "import mxnet"
    fast_path = "hybridize"
    has_compile = False

    def info(self) -> dict[str, Any]:
        return {
            "versions": {"mxnet": mx.__version__},
            "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "device": "cpu",
        }

    def _ready(self, net: nn.HybridBlock, input_shape: tuple[int, ...]) -> nn.HybridBlock:
        net.initialize(init.Xavier())
        net.hybridize()
        net(mx.nd.zeros(input_shape))
        return net

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> nn.HybridBlock:
        net = nn.HybridSequential()
        net.add(
            nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
            nn.BatchNorm(),
            nn.Activation("relu"),
            nn.MaxPool2D(pool_size=3, strides=2, padding=1),
        )
        for i, (num_residuals, num_channels) in enumerate(specs.RESNET18_ARCH):
            for j in range(num_residuals):
                first = j == 0 and i > 0
                net.add(Residual(num_channels, use_1x1conv=first, strides=2 if first else 1))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(num_classes))
        return self._ready(net, input_shape)

    def book_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> nn.Block:
        with _book_semantics():  # the chapter's ResNet.b1, ResNet.__init__ and ResNet18
            net = nn.Sequential()
            b1 = nn.Sequential()
            b1.add(
                nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
                nn.BatchNorm(),
                nn.Activation("relu"),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1),
            )
            net.add(b1)
            for i, b in enumerate(specs.RESNET18_ARCH):
                net.add(_book_block(*b, first_block=(i == 0)))
            net.add(nn.GlobalAvgPool2D(), nn.Dense(num_classes))
            net.initialize(init.Xavier())
            with warnings.catch_warnings():  # the chapter's b1 draws Gluon's "use HybridSequential" advice here
                warnings.filterwarnings("ignore", "All children of this Sequential", UserWarning)
                net.hybridize()  # the reader's fast path: each stock layer compiled
            net(mx.np.zeros(input_shape))
        return net

    def book_train_step(self, model: nn.Block, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        with _book_semantics():  # d2l's Classifier.loss and Module.configure_optimizers, MXNet tab
            trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
            loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

        def train_step(x: np.ndarray, labels: np.ndarray) -> float:
            with _book_semantics():  # d2l's Trainer.fit_epoch: the averaged loss, and step(1)
                with autograd.record():
                    loss = loss_fn(model(mx.np.array(x)), mx.np.array(labels)).mean()
                loss.backward()
                trainer.step(1)
                return float(loss)

        return train_step

    def book_predict(self, model: nn.Block) -> Callable[[np.ndarray], np.ndarray]:
        def predict(x: np.ndarray) -> np.ndarray:
            with _book_semantics():
                return model(mx.np.array(x)).asnumpy()

        return predict

    def stock_resnext(
        self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float
    ) -> nn.HybridBlock:
        return self._ready(ResNeXtBlock(num_channels, groups, bot_mul), input_shape)

    def stock_train_step(self, model: nn.HybridBlock, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

        def train_step(x: np.ndarray, labels: np.ndarray) -> float:
            with autograd.record():
                loss = loss_fn(model(mx.nd.array(x)), mx.nd.array(labels))
            loss.backward()
            trainer.step(x.shape[0])
            return float(loss.mean().asscalar())

        return train_step

    def stock_predict(self, model: nn.HybridBlock) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: model(mx.nd.array(x)).asnumpy()

    def ours_block(self, model: nn.HybridBlock) -> nn.HybridBlock:
        model.hybridize()
        return model

    def block_step(self, model: nn.HybridBlock, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        xm, gm = mx.nd.array(x), mx.nd.array(output_grad)

        def step() -> None:
            with autograd.record(train_mode=True):
                y = model(xm)
            y.backward(gm)
            mx.nd.waitall()

        return step

    def wait(self) -> None:
        # MXNet's engine runs asynchronously: a train step returns once its loss is read, with its backward pass
        # and update still queued.
        mx.nd.waitall()

    def matmul(self, n: int) -> Callable[[], None]:
        rng = np.random.default_rng(0)
        a, b = (mx.nd.array(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
        return lambda: mx.nd.dot(a, b).wait_to_read()
