"""The benchmark's reference in PyTorch: the chapter's models written plainly with the framework's stock layers
(the book's ``nn.LazyConv2d``, ``nn.LazyBatchNorm2d``, ``nn.LazyLinear``), run eagerly and trained by
``torch.optim.SGD``, and the chapter's ResNet-18 as the book writes it; the harness (``resnet.bench``) times this
package's models against them."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from resnet import specs
from resnet.bench.kit import Kit
from resnet.bench.settings import Settings

__all__ = ["StockKit"]


# The chapter's code (section 8.6, PyTorch tab), with `groups` as the number of groups.
class Residual(nn.Module):
    """The book's residual block, with the stock lazy layers."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1, self.bn2 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return F.relu(Y + X)


class ResNeXtBlock(nn.Module):
    """The book's ResNeXt block (identity shortcut), with the stock grouped convolution ``groups=groups``."""

    def __init__(self, num_channels: int, groups: int, bot_mul: float) -> None:
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = nn.LazyConv2d(bot_channels, kernel_size=1, stride=1)
        self.conv2 = nn.LazyConv2d(bot_channels, kernel_size=3, stride=1, padding=1, groups=groups)
        self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=1)
        self.bn1, self.bn2, self.bn3 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        return F.relu(Y + X)


# The chapter's own code (PyTorch tab), as the book writes it: `Y += X`, nested nn.Sequential stages, the
# weights materialized by one pass and set by d2l's init_cnn (Xavier-uniform convolution and linear weights).
class BookResidual(nn.Module):
    """The chapter's ``Residual`` (PyTorch tab), unchanged."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.LazyBatchNorm2d()
        self.bn2 = nn.LazyBatchNorm2d()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def _book_block(num_residuals: int, num_channels: int, first_block: bool = False) -> nn.Sequential:
    """The chapter's ``ResNet.block``."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(BookResidual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(BookResidual(num_channels))
    return nn.Sequential(*blk)


def _init_cnn(module: nn.Module) -> None:
    """d2l's ``init_cnn``."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


class StockKit(Kit):
    """PyTorch: the book's ``nn.Lazy*`` layers, eager, ``torch.optim.SGD`` (methods: ``resnet.bench.kit.Kit``)."""

    framework_import = "import torch"
    fast_path = "eager"
    has_compile = True

    def __init__(self, rn: ModuleType, settings: Settings) -> None:
        super().__init__(rn, settings)
        if settings.gpu and not torch.cuda.is_available():
            raise ValueError(
                "--gpu: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                "run without --gpu, or install a CUDA build of torch on a machine with a GPU"
            )
        self.device = torch.device("cuda" if settings.gpu else "cpu")
        self.mixed_precision = settings.mixed_precision

    def info(self) -> dict[str, Any]:
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {
            "versions": {"torch": torch.__version__},
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            "gpu": gpu,
        }

    def _autocast(self) -> Any:
        """bfloat16 autocast with --mixed-precision (PyTorch's AMP recipe), else nothing."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.mixed_precision)

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> nn.Module:
        layers = [
            nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
            nn.LazyBatchNorm2d(),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        ]
        for i, (num_residuals, num_channels) in enumerate(specs.RESNET18_ARCH):
            for j in range(num_residuals):
                first = j == 0 and i > 0
                layers.append(Residual(num_channels, use_1x1conv=first, strides=2 if first else 1))
        layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)]
        net = nn.Sequential(*layers)
        net(torch.zeros(input_shape))  # materialize the lazy layers, as the book's apply_init does
        return net.to(self.device)

    def book_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> nn.Module:
        # The chapter's ResNet.b1, ResNet.__init__ and ResNet18, then its model.apply_init(batch, init_cnn).
        net = nn.Sequential(
            nn.Sequential(
                nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
                nn.LazyBatchNorm2d(),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
        for i, b in enumerate(specs.RESNET18_ARCH):
            net.add_module(f"b{i + 2}", _book_block(*b, first_block=(i == 0)))
        net.add_module("last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)))
        net(torch.zeros(input_shape))
        net.apply(_init_cnn)
        return net.to(self.device)

    def stock_resnext(self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float) -> nn.Module:
        block = ResNeXtBlock(num_channels, groups, bot_mul)
        block(torch.zeros(input_shape))
        return block.to(self.device)

    def stock_train_step(self, model: nn.Module, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        optimizer, device = torch.optim.SGD(model.parameters(), lr=lr), self.device

        def train_step(x: np.ndarray, labels: np.ndarray) -> float:
            model.train()
            optimizer.zero_grad()
            with self._autocast():
                loss = F.cross_entropy(model(torch.from_numpy(x).to(device)), torch.from_numpy(labels).to(device))
            loss.backward()
            optimizer.step()
            return loss.item()

        return train_step

    def stock_predict(self, model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        def predict(x: np.ndarray) -> np.ndarray:
            model.eval()
            with torch.no_grad(), self._autocast():
                return model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

        return predict

    def ours_block(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def block_step(self, model: nn.Module, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        xt, gt = torch.from_numpy(x).to(self.device), torch.from_numpy(output_grad).to(self.device)
        model.train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with self._autocast():
                y = model(xt)
            y.backward(gt.to(y.dtype))
            self._wait()

        return step

    def matmul(self, n: int) -> Callable[[], None]:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=generator).to(self.device) for _ in range(2))

        def product() -> None:
            torch.mm(a, b)
            self._wait()

        return product

    def _wait(self) -> None:
        """Wait for the GPU's queued work (CUDA runs asynchronously); nothing on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def compile(self, model: nn.Module) -> nn.Module:
        return torch.compile(model)
