"""The benchmark (``python -m resnet bench``): this package against the straightforward stock-layer version of
the chapter's models, side by side in the selected backend, in one process.

    python -m resnet.bench                      # everything, the book's settings; a table on stdout
    python -m resnet.bench --json bench-results/jax.json
    python -m resnet.bench --quick              # tiny sizes, for CI and the tests (numbers mean nothing)
    python -m resnet.bench --only resnext_g2,resnext_g32 --repeats 9

What is measured (``--list`` prints it), for the selected backend:

* ``resnet18_train`` / ``resnet18_infer``: ResNet-18 at the book's settings (float32, batch 128, 1x96x96,
  SGD lr 0.01), images per second. *Ours* is the package's model driven by ``backend.make_train_step`` /
  ``backend.make_predict`` (what ``resnet train`` runs). The *reference* is the chapter's model written the
  plain way with the framework's stock layers (below), trained by a stock step on the framework's usual fast
  path: torch eager + ``torch.optim.SGD``; a ``tf.function`` step with ``keras.optimizers.SGD``; a jitted
  step with ``optax.sgd``; a hybridized Gluon net with ``gluon.Trainer``. Both sides are fed the *same NumPy
  NCHW batches* and convert them the same plain way inside the timed region (transposing to NHWC for
  TensorFlow and JAX), and both return the loss as a Python float (or the logits as NumPy), which also
  waits for the step to finish: the end-to-end cost of one step as a training loop sees it.
* ``resnet18_train_compiled`` / ``resnet18_infer_compiled`` (torch only): ours under ``torch.compile``
  against ours in eager mode (the default), to decide whether compiling should be the default.
* ``resnext_g2`` / ``resnext_g8`` / ``resnext_g32``: one ResNeXt block, ``ResNeXtBlock(64, g, 1)`` (64
  channels, bottleneck 64, ``g`` groups of ``64 // g`` channels in the 3x3 convolution) on a batch of 4 at
  64x48x48 (NCHW), forward plus backward (gradients of every weight for a fixed output gradient, BatchNorm in
  training mode), images per second. Both blocks run through the *same* harness on pre-converted native
  tensors: eager torch, a ``tf.function``, a jitted ``jax.vjp``, a hybridized Gluon block. The stock block
  uses the framework's grouped convolution (``groups=g`` in torch, Keras and Gluon -- Keras sends it through
  XLA -- and ``feature_group_count=g`` in Flax). ``g`` is the number of groups in both; the book's code would
  pass ``bot_channels // g``, see the README.
* ``data_pipeline``: ``resnet.data.Batches`` turning uint8 28x28 images into shuffled float32 batches of
  128 resized to 96x96 (batches per second; framework-free, no reference).
* ``import_resnet`` / ``import_backend``: seconds to import ``resnet`` (no framework), and ``resnet.backends.<name>``
  against the framework alone (the reference), each in a fresh Python process.
* ``matmul_peak``: the framework's float32 matrix product (2048x2048, on its fast path), the best GFLOP/s
  of the repeats. The model rows report their achieved GFLOP/s (2 FLOPs per multiply-add; forward only for
  inference, 3x forward for training and for forward+backward) and that as a fraction of this peak.
* ``recipe``: seconds for the chapter's whole recipe through ``resnet.training.fit`` (ResNet-18, 10 epochs,
  batch 128, 96x96, evaluation every epoch, compilation included), on Fashion-MNIST when it is cached, else
  on random images of its size. One run, no reference; measured with ``--gpu`` (hours on a small CPU) or
  when named in ``--only``.

``--gpu`` (PyTorch and JAX, whose CUDA builds this project supports; its TensorFlow and MXNet are CPU builds)
runs the model rows with both sides on the GPU: the stock models moved there the plain way (``.to("cuda")``;
JAX's default device), ours through ``backend.to_accelerator``. ``--mixed-precision`` makes both sides
compute in bfloat16 with float32 weights (``torch.autocast`` for the stock torch model, bfloat16 copies of
the weights in the stock JAX step), and ``--compile`` puts the recipe's PyTorch step under ``torch.compile``.

Timing: both sides are warmed up (compilation and tracing happen there), then each side's steps per repeat
are chosen so a repeat takes about ``--target-seconds`` (at least 3 steps in the ResNet-18 rows, whose
single steps vary by up to a quarter on a small CPU; all fixed by ``--steps``), and the sides alternate
in the same process, ours first in even repeats and the reference first in odd ones. Each row gives the
median and the min-max over the repeats, and the ratio of the medians: ``ours / reference`` for
throughputs, ``reference / ours`` for times, so above 1 always means ours is faster. Rows without a
reference, or whose reference is not a like-for-like comparison, say so (``comparable: false``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np

from resnet import selection, specs
from resnet.shapes import macs
from resnet.specs import ModelSpec

__all__ = ["MEASUREMENTS", "Settings", "add_arguments", "machine_info", "multiply_adds", "run", "run_benchmark"]

SCHEMA = 1

#: name -> one-line description (what ``--list`` prints and the JSON and the report carry).
MEASUREMENTS: dict[str, str] = {
    "resnet18_train": "ResNet-18 SGD train step, NumPy NCHW batch in, loss out",
    "resnet18_infer": "ResNet-18 inference, NumPy NCHW batch in, logits out",
    "resnet18_train_compiled": "torch only: ours under torch.compile vs ours eager, train step",
    "resnet18_infer_compiled": "torch only: ours under torch.compile vs ours eager, inference",
    "resnext_g2": "ResNeXtBlock(64, 2, 1) forward+backward, native tensors",
    "resnext_g8": "ResNeXtBlock(64, 8, 1) forward+backward, native tensors",
    "resnext_g32": "ResNeXtBlock(64, 32, 1) forward+backward, native tensors",
    "data_pipeline": "resnet.data.Batches: uint8 28x28 -> shuffled float32 batches resized",
    "import_resnet": "import resnet (no framework), fresh process",
    "import_backend": "import resnet.backends.<name> vs the framework alone, fresh process",
    "matmul_peak": "float32 matrix product on the framework's fast path (best of the repeats)",
    "recipe": "the chapter's recipe: resnet.training.fit, ResNet-18, 10 epochs of Fashion-MNIST's size, seconds",
}
_STOCK_MODELS = ("the chapter's model with the framework's stock layers: torch nn.LazyConv2d/LazyBatchNorm2d/"
                 "LazyLinear; Keras Conv2D/BatchNormalization/Dense with the book's padding='same'; Flax nn.Conv/"
                 "nn.BatchNorm/nn.Dense with padding='same'; Gluon Conv2D/BatchNorm/Dense as HybridBlocks")
#: name -> what the reference side is (None: no reference).
REFERENCES: dict[str, str | None] = {
    "resnet18_train": _STOCK_MODELS + "; stepped by torch.optim.SGD in eager mode, a tf.function step with "
    "keras.optimizers.SGD, a jax.jit step with optax.sgd, a hybridized net with gluon.Trainer",
    "resnet18_infer": _STOCK_MODELS + "; run eagerly under no_grad, in a tf.function, jax.jit, hybridized",
    "resnet18_train_compiled": "ours in eager mode (the default)",
    "resnet18_infer_compiled": "ours in eager mode (the default)",
    **{name: "the same block with the framework's grouped convolution: groups=g (torch, Gluon; Keras' Conv2D "
       "runs it through XLA), feature_group_count=g (Flax)" for name in ("resnext_g2", "resnext_g8", "resnext_g32")},
    "data_pipeline": None,
    "import_resnet": None,
    "import_backend": "the framework alone (import torch; tensorflow, keras; jax, flax.linen, optax; mxnet)",
    "matmul_peak": None,
    "recipe": None,
}
#: torch only; measured under ``--quick`` only when named in ``--only`` (compiling takes minutes).
COMPILED = ("resnet18_train_compiled", "resnet18_infer_compiled")
RESNEXT_GROUPS = {"resnext_g2": 2, "resnext_g8": 8, "resnext_g32": 32}


@dataclass(frozen=True)
class Settings:
    """Sizes and timing. The defaults are the book's settings; ``quick_settings()`` gives tiny ones for tests."""

    batch_size: int = 128
    image_size: int = 96
    lr: float = 0.01
    block_channels: int = 64  # ResNeXtBlock(block_channels, g, 1)
    block_batch: int = 4
    block_size: int = 48
    data_batches: int = 8  # batches per pass over the data set in data_pipeline
    matmul_n: int = 2048
    repeats: int = 5
    steps: int | None = None  # steps per repeat for every side; None: chosen from target_seconds
    target_seconds: float = 1.0
    # ResNet-18 rows: at least this many steps a repeat. One training step takes 1-3 s on a 2-core CPU, so
    # target_seconds alone gives single-step repeats, and single steps there vary by up to a quarter.
    model_min_steps: int = 3
    warmup: int = 2
    import_repeats: int = 3
    quick: bool = False
    gpu: bool = False  # the model rows on the framework's GPU (torch, jax)
    mixed_precision: bool = False  # both sides compute in bfloat16 with float32 weights (torch, jax)
    recipe_epochs: int = 10
    compile: bool = False  # torch: the recipe's train step under torch.compile
    recipe_examples: int | None = None  # None: Fashion-MNIST's 60,000 + 10,000

    @classmethod
    def quick_settings(cls) -> "Settings":
        """Tiny sizes for CI and the tests: batch 8, 32x32, 2 repeats; the numbers mean nothing."""
        return cls(batch_size=8, image_size=32, block_batch=2, block_size=16, data_batches=2, matmul_n=256,
                   repeats=2, target_seconds=0.05, model_min_steps=1, warmup=1, import_repeats=1, quick=True,
                   recipe_epochs=1, recipe_examples=64)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The NCHW batch shape of the ResNet-18 rows."""
        return (self.batch_size, 1, self.image_size, self.image_size)

    @property
    def block_shape(self) -> tuple[int, int, int, int]:
        """The NCHW input shape of the ResNeXt rows."""
        return (self.block_batch, self.block_channels, self.block_size, self.block_size)


# ------------------------------------------------------------------------------------- multiply-adds


def multiply_adds(spec: specs.BlockSpec | ModelSpec, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass for one image of NCHW ``input_shape``: ``resnet.shapes.macs`` for a
    batch of one. The book's ResNet-18 at 1x96x96: 0.319 G."""
    return macs(spec, (1, *tuple(input_shape)[1:]))


# ------------------------------------------------------------------------------------------- timing


@dataclass
class Side:
    """One side of a comparison: a synchronized step, and how much work (images, batches, FLOPs) it does."""

    step: Callable[[], Any]
    work: float


def _stats(samples: list[float], steps: int) -> dict[str, Any]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples, "steps_per_repeat": steps}


def _steps_for(side: Side, settings: Settings, min_steps: int = 1) -> int:
    if settings.steps:
        return settings.steps
    started = time.perf_counter()
    side.step()
    seconds = time.perf_counter() - started
    return max(min_steps, min(1000, math.ceil(settings.target_seconds / max(seconds, 1e-9))))


def measure(
    ours: Side, reference: Side | None, settings: Settings, best: bool = False, min_steps: int = 1
) -> dict[str, Any]:
    """Warm up both sides, then alternate them for ``settings.repeats`` repeats of at least ``min_steps``
    steps (unless ``settings.steps`` fixes them); work per second of each.

    Ours runs first in even repeats and the reference first in odd ones, so a drift in the machine's speed
    (another process, thermal throttling) falls on both alike.
    """
    sides = [ours] if reference is None else [ours, reference]
    for _ in range(settings.warmup):
        for side in sides:
            side.step()
    steps = [_steps_for(side, settings, min_steps) for side in sides]
    samples: list[list[float]] = [[] for _ in sides]
    for repeat in range(settings.repeats):
        order = range(len(sides)) if repeat % 2 == 0 else reversed(range(len(sides)))
        for index in order:
            started = time.perf_counter()
            for _ in range(steps[index]):
                sides[index].step()
            samples[index].append(sides[index].work * steps[index] / (time.perf_counter() - started))
    result = [_stats(s, n) for s, n in zip(samples, steps)]
    if best:
        for stats in result:
            stats["best"] = max(stats["samples"])
    return {"ours": result[0], "reference": result[1] if reference is not None else None}


def _import_seconds(statement: str) -> float:
    """Seconds a fresh Python process spends in ``statement`` (interpreter start-up not included)."""
    code = f"import time\nstarted = time.perf_counter()\n{statement}\nprint(time.perf_counter() - started)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode:
        raise RuntimeError(f"{statement!r} failed in a fresh process:\n{done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def measure_imports(ours: str, reference: str | None, repeats: int) -> dict[str, Any]:
    """Alternate fresh-process imports of ``ours`` and ``reference``; seconds (lower is better)."""
    statements = [ours] if reference is None else [ours, reference]
    samples: list[list[float]] = [[] for _ in statements]
    for repeat in range(repeats):
        order = range(len(statements)) if repeat % 2 == 0 else reversed(range(len(statements)))
        for index in order:
            samples[index].append(_import_seconds(statements[index]))
    result = [_stats(s, 1) for s in samples]
    return {"ours": result[0], "reference": result[1] if reference is not None else None}


# ----------------------------------------------------------------------------- per-backend kits
#
# One small class per framework, with the same methods: the stock-layer models (the chapter's code written
# the plain way), the stock train and predict steps on the framework's usual fast path, the shared
# forward+backward harness for single blocks, and a matrix product for the peak. Each imports its framework
# when created, never at module import.


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


def _cpu_only(name: str, settings: Settings) -> None:
    """ValueError for --gpu or --mixed-precision in a backend whose build here is CPU-only."""
    if settings.gpu or settings.mixed_precision:
        raise ValueError(f"--gpu and --mixed-precision are for the {' and '.join(specs.MIXED_PRECISION_BACKENDS)} "
                         f"backends; this project installs {name} as a CPU-only build. Run without them.")


class TorchKit:
    """PyTorch: the book's ``nn.Lazy*`` layers, eager, ``torch.optim.SGD``."""

    framework_import = "import torch"
    fast_path = "eager"
    has_compile = True

    def __init__(self, rn: ModuleType, settings: Settings) -> None:
        import torch
        from torch import nn
        from torch.nn import functional as F

        self.rn, self.torch, self.nn, self.F = rn, torch, nn, F
        if settings.gpu and not torch.cuda.is_available():
            raise ValueError("--gpu: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                             "run without --gpu, or install a CUDA build of torch on a machine with a GPU")
        self.device = torch.device("cuda" if settings.gpu else "cpu")
        self.mixed_precision = settings.mixed_precision

    def info(self) -> dict[str, Any]:
        torch = self.torch
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {"versions": {"torch": torch.__version__}, "threads": torch.get_num_threads(),
                "device": str(self.device), "gpu": gpu}

    def _autocast(self) -> Any:
        """bfloat16 autocast with --mixed-precision (PyTorch's AMP recipe), else nothing."""
        return self.torch.autocast(self.device.type, self.torch.bfloat16, enabled=self.mixed_precision)

    # The chapter's code (section 8.6, PyTorch tab), with `groups` as the number of groups.
    def _residual(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> Any:
        nn, F = self.nn, self.F

        class Residual(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1, stride=strides)
                self.conv2 = nn.LazyConv2d(num_channels, kernel_size=3, padding=1)
                self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
                self.bn1, self.bn2 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()

            def forward(self, X: Any) -> Any:
                Y = F.relu(self.bn1(self.conv1(X)))
                Y = self.bn2(self.conv2(Y))
                if self.conv3:
                    X = self.conv3(X)
                return F.relu(Y + X)

        return Residual()

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> Any:
        nn = self.nn
        layers = [nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3), nn.LazyBatchNorm2d(), nn.ReLU(),
                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
        for i, (num_residuals, num_channels) in enumerate(specs.RESNET18_ARCH):
            for j in range(num_residuals):
                first = j == 0 and i > 0
                layers.append(self._residual(num_channels, use_1x1conv=first, strides=2 if first else 1))
        layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.LazyLinear(num_classes)]
        net = nn.Sequential(*layers)
        net(self.torch.zeros(input_shape))  # materialize the lazy layers, as the book's apply_init does
        return net.to(self.device)

    def stock_resnext(self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float) -> Any:
        nn, F = self.nn, self.F
        bot_channels = int(round(num_channels * bot_mul))

        class ResNeXtBlock(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.LazyConv2d(bot_channels, kernel_size=1, stride=1)
                self.conv2 = nn.LazyConv2d(bot_channels, kernel_size=3, stride=1, padding=1, groups=groups)
                self.conv3 = nn.LazyConv2d(num_channels, kernel_size=1, stride=1)
                self.bn1, self.bn2, self.bn3 = nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d(), nn.LazyBatchNorm2d()

            def forward(self, X: Any) -> Any:
                Y = F.relu(self.bn1(self.conv1(X)))
                Y = F.relu(self.bn2(self.conv2(Y)))
                Y = self.bn3(self.conv3(Y))
                return F.relu(Y + X)

        block = ResNeXtBlock()
        block(self.torch.zeros(input_shape))
        return block.to(self.device)

    def stock_train_step(self, model: Any, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        torch, F = self.torch, self.F
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

    def stock_predict(self, model: Any) -> Callable[[np.ndarray], np.ndarray]:
        torch = self.torch

        def predict(x: np.ndarray) -> np.ndarray:
            model.eval()
            with torch.no_grad(), self._autocast():
                return model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

        return predict

    def ours_block(self, model: Any) -> Any:
        return model.to(self.device)

    def block_step(self, model: Any, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        torch = self.torch
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
        generator = self.torch.Generator().manual_seed(0)
        a, b = (self.torch.randn(n, n, generator=generator).to(self.device) for _ in range(2))

        def product() -> None:
            self.torch.mm(a, b)
            self._wait()

        return product

    def _wait(self) -> None:
        """Wait for the GPU's queued work (CUDA runs asynchronously); nothing on the CPU."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def compile(self, model: Any) -> Any:
        return self.torch.compile(model)


class TensorFlowKit:
    """TensorFlow: the book's Keras layers (``padding='same'``, grouped ``Conv2D``), a ``tf.function`` step."""

    framework_import = "import tensorflow, keras"
    fast_path = "tf.function"
    has_compile = False

    def __init__(self, rn: ModuleType, settings: Settings) -> None:
        _cpu_only(rn.NAME, settings)
        import tensorflow as tf

        import keras  # isort: skip

        self.rn, self.tf, self.keras = rn, tf, keras

    def info(self) -> dict[str, Any]:
        tf = self.tf
        return {"versions": {"tensorflow": tf.__version__, "keras": self.keras.__version__},
                "threads": f"intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
                           f"inter-op {tf.config.threading.get_inter_op_parallelism_threads() or 'default'}",
                "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu"}

    # The chapter's code (TensorFlow tab), with `training` handed to BatchNorm: the book's `call(self, X)` drops
    # it, and under Keras 3 BatchNorm would then run in inference mode, a different (cheaper) computation.
    def _layers(self) -> Any:
        keras, tf = self.keras, self.tf

        class Residual(keras.layers.Layer):
            def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
                super().__init__()
                self.conv1 = keras.layers.Conv2D(num_channels, padding="same", kernel_size=3, strides=strides)
                self.conv2 = keras.layers.Conv2D(num_channels, kernel_size=3, padding="same")
                self.conv3 = keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
                self.bn1, self.bn2 = keras.layers.BatchNormalization(), keras.layers.BatchNormalization()

            def call(self, X: Any, training: Any = None) -> Any:
                Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
                Y = self.bn2(self.conv2(Y), training=training)
                if self.conv3 is not None:
                    X = self.conv3(X)
                return tf.nn.relu(Y + X)

        class ResNeXtBlock(keras.layers.Layer):
            def __init__(self, num_channels: int, groups: int, bot_mul: float) -> None:
                super().__init__()
                bot_channels = int(round(num_channels * bot_mul))
                self.conv1 = keras.layers.Conv2D(bot_channels, 1, strides=1)
                self.conv2 = keras.layers.Conv2D(bot_channels, 3, strides=1, padding="same", groups=groups)
                self.conv3 = keras.layers.Conv2D(num_channels, 1, strides=1)
                self.bn1, self.bn2, self.bn3 = (keras.layers.BatchNormalization() for _ in range(3))

            def call(self, X: Any, training: Any = None) -> Any:
                Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
                Y = tf.nn.relu(self.bn2(self.conv2(Y), training=training))
                Y = self.bn3(self.conv3(Y), training=training)
                return tf.nn.relu(Y + X)

        return Residual, ResNeXtBlock

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> Any:
        keras = self.keras
        Residual, _ = self._layers()
        layers = [keras.layers.Conv2D(64, kernel_size=7, strides=2, padding="same"),
                  keras.layers.BatchNormalization(), keras.layers.Activation("relu"),
                  keras.layers.MaxPool2D(pool_size=3, strides=2, padding="same")]
        for i, (num_residuals, num_channels) in enumerate(specs.RESNET18_ARCH):
            for j in range(num_residuals):
                first = j == 0 and i > 0
                layers.append(Residual(num_channels, use_1x1conv=first, strides=2 if first else 1))
        layers += [keras.layers.GlobalAvgPool2D(), keras.layers.Dense(num_classes)]
        net = keras.Sequential(layers)
        net(self.tf.zeros(_nhwc_shape(input_shape)))
        return net

    def stock_resnext(self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float) -> Any:
        _, ResNeXtBlock = self._layers()
        block = ResNeXtBlock(num_channels, groups, bot_mul)
        block(self.tf.zeros(_nhwc_shape(input_shape)))
        return block

    def stock_train_step(self, model: Any, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        tf, keras = self.tf, self.keras
        optimizer = keras.optimizers.SGD(learning_rate=lr)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(x: Any, labels: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        def train_step(x: np.ndarray, labels: np.ndarray) -> float:
            return float(step(tf.constant(_to_nhwc(x)), tf.constant(labels)))

        return train_step

    def stock_predict(self, model: Any) -> Callable[[np.ndarray], np.ndarray]:
        tf = self.tf

        @tf.function
        def compiled(x: Any) -> Any:
            return model(x, training=False)

        return lambda x: compiled(tf.constant(_to_nhwc(x))).numpy()

    def ours_block(self, model: Any) -> Any:
        return model

    def block_step(self, model: Any, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        tf = self.tf
        xt, gt = tf.constant(_to_nhwc(x)), tf.constant(_to_nhwc(output_grad))

        @tf.function
        def forward_backward(x: Any, g: Any) -> Any:
            with tf.GradientTape() as tape:
                y = model(x, training=True)
            return tape.gradient(y, model.trainable_weights, output_gradients=g)

        return lambda: forward_backward(xt, gt)[0].numpy()

    def matmul(self, n: int) -> Callable[[], None]:
        tf = self.tf
        rng = np.random.default_rng(0)
        a, b = (tf.constant(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))

        @tf.function
        def product(a: Any, b: Any) -> Any:
            return tf.reduce_sum(tf.matmul(a, b))  # a scalar to fetch: waits for the product, copies nothing

        return lambda: product(a, b).numpy()


def _nhwc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, h, w, c)


class _FlaxModel:
    """A Flax module with its variables (Flax modules hold none)."""

    def __init__(self, module: Any, variables: dict[str, Any]) -> None:
        self.module, self.variables = module, dict(variables)


class JaxKit:
    """JAX: the book's Flax linen layers (``padding='same'``, ``feature_group_count``), a jitted optax step."""

    framework_import = "import jax, flax.linen, optax"
    fast_path = "jax.jit"
    has_compile = False

    def __init__(self, rn: ModuleType, settings: Settings) -> None:
        import flax
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        import optax

        self.rn, self.flax, self.nn, self.jax, self.jnp, self.optax = rn, flax, nn, jax, jnp, optax
        if settings.gpu != (jax.default_backend() == "gpu"):
            raise ValueError(f"--gpu {'asks for' if settings.gpu else 'is off but'} a GPU, and JAX's default device "
                             f"is {jax.default_backend()}: install jax[cuda12] on a machine with a GPU for --gpu, or "
                             "set JAX_PLATFORMS=cpu to measure the CPU there")
        self.mixed_precision = settings.mixed_precision

    def _compute(self, params: Any, x: Any) -> tuple[Any, Any]:
        """The weights and batch to compute with: bfloat16 copies with --mixed-precision (the gradient flows back
        to the float32 weights), else themselves."""
        if not self.mixed_precision:
            return params, x
        bf16 = self.jnp.bfloat16
        return self.jax.tree_util.tree_map(lambda leaf: leaf.astype(bf16), params), x.astype(bf16)

    def info(self) -> dict[str, Any]:
        jax = self.jax
        return {"versions": {"jax": jax.__version__, "flax": self.flax.__version__, "optax": self.optax.__version__},
                "threads": "XLA default", "device": jax.default_backend()}

    # The chapter's code (JAX tab), with `groups` as the number of groups.
    def _modules(self) -> Any:
        nn = self.nn

        class Residual(nn.Module):
            num_channels: int
            use_1x1conv: bool = False
            strides: tuple = (1, 1)
            training: bool = True

            def setup(self) -> None:
                self.conv1 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same", strides=self.strides)
                self.conv2 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same")
                self.conv3 = (nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides)
                              if self.use_1x1conv else None)
                self.bn1 = nn.BatchNorm(not self.training)
                self.bn2 = nn.BatchNorm(not self.training)

            def __call__(self, X: Any) -> Any:
                Y = nn.relu(self.bn1(self.conv1(X)))
                Y = self.bn2(self.conv2(Y))
                if self.conv3:
                    X = self.conv3(X)
                return nn.relu(Y + X)

        class ResNet18(nn.Module):
            num_classes: int = 10
            training: bool = True

            def setup(self) -> None:
                layers = [nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding="same"),
                          nn.BatchNorm(not self.training), nn.relu,
                          lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="same")]
                for i, (num_residuals, num_channels) in enumerate(specs.RESNET18_ARCH):
                    for j in range(num_residuals):
                        first = j == 0 and i > 0
                        layers.append(Residual(num_channels, use_1x1conv=first, strides=(2, 2) if first else (1, 1),
                                               training=self.training))
                layers += [lambda x: x.mean(axis=(1, 2)), nn.Dense(self.num_classes)]
                self.net = nn.Sequential(layers)

            def __call__(self, X: Any) -> Any:
                return self.net(X)

        class ResNeXtBlock(nn.Module):
            num_channels: int
            groups: int
            bot_mul: float
            training: bool = True

            def setup(self) -> None:
                bot_channels = int(round(self.num_channels * self.bot_mul))
                self.conv1 = nn.Conv(bot_channels, kernel_size=(1, 1), strides=(1, 1))
                self.conv2 = nn.Conv(bot_channels, kernel_size=(3, 3), strides=(1, 1), padding="same",
                                     feature_group_count=self.groups)
                self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=(1, 1))
                self.bn1, self.bn2, self.bn3 = (nn.BatchNorm(not self.training) for _ in range(3))

            def __call__(self, X: Any) -> Any:
                Y = nn.relu(self.bn1(self.conv1(X)))
                Y = nn.relu(self.bn2(self.conv2(Y)))
                Y = self.bn3(self.conv3(Y))
                return nn.relu(Y + X)

        return ResNet18, ResNeXtBlock

    def _init(self, module: Any, input_shape: tuple[int, ...]) -> _FlaxModel:
        # Flax's own initializers (truncated normal per kernel shape) take 20-30 s to compile for ResNet-18 on
        # this CPU, jitted or not, and the values do not matter for speed: take the shapes from Flax and fill
        # them with He-normal kernels, zero biases and means, unit scales and variances.
        jax = self.jax
        x = jax.ShapeDtypeStruct(_nhwc_shape(input_shape), self.jnp.float32)
        shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
        rng = np.random.default_rng(0)

        def fill(path: tuple, leaf: Any) -> Any:
            name = getattr(path[-1], "key", "")
            if name == "kernel":
                fan_in = int(np.prod(leaf.shape[:-1]))
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
            else:
                value = np.ones(leaf.shape) if name in ("scale", "var") else np.zeros(leaf.shape)
            return self.jnp.asarray(value.astype(leaf.dtype))

        return _FlaxModel(module, jax.tree_util.tree_map_with_path(fill, shapes))

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> _FlaxModel:
        ResNet18, _ = self._modules()
        return self._init(ResNet18(num_classes), input_shape)

    def stock_resnext(self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float) -> _FlaxModel:
        _, ResNeXtBlock = self._modules()
        return self._init(ResNeXtBlock(num_channels, groups, bot_mul), input_shape)

    def stock_train_step(self, model: _FlaxModel, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        jax, jnp, optax = self.jax, self.jnp, self.optax
        optimizer = optax.sgd(lr)
        module = model.module

        @jax.jit
        def step(params: Any, batch_stats: Any, opt_state: Any, x: Any, labels: Any) -> Any:
            def loss_fn(params: Any) -> Any:
                weights, batch = self._compute(params, x)
                logits, updates = module.apply({"params": weights, "batch_stats": batch_stats}, batch,
                                               mutable=["batch_stats"])
                logits = logits.astype(jnp.float32)
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
            (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            changes, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

        state = {"opt_state": optimizer.init(model.variables["params"])}

        def train_step(x: np.ndarray, labels: np.ndarray) -> float:
            params, batch_stats, state["opt_state"], loss = step(
                model.variables["params"], model.variables["batch_stats"], state["opt_state"],
                jnp.asarray(_to_nhwc(x)), jnp.asarray(labels, dtype=jnp.int32))
            model.variables = {"params": params, "batch_stats": batch_stats}
            return float(loss)

        return train_step

    def stock_predict(self, model: _FlaxModel) -> Callable[[np.ndarray], np.ndarray]:
        jax, jnp = self.jax, self.jnp
        module = model.module.clone(training=False)
        @jax.jit
        def compiled(variables: Any, x: Any) -> Any:
            params, batch = self._compute(variables["params"], x)
            return module.apply({**variables, "params": params}, batch).astype(jnp.float32)

        return lambda x: np.asarray(compiled(model.variables, jnp.asarray(_to_nhwc(x))))

    def ours_block(self, model: Any) -> _FlaxModel:
        return _FlaxModel(model.clone(training=True), self.rn.variables(model))

    def block_step(self, model: _FlaxModel, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        jax, jnp = self.jax, self.jnp
        module = model.module
        xj, gj = jnp.asarray(_to_nhwc(x)), jnp.asarray(_to_nhwc(output_grad))

        @jax.jit
        def forward_backward(params: Any, batch_stats: Any, x: Any, g: Any) -> Any:
            def forward(params: Any) -> Any:
                weights, batch = self._compute(params, x)
                y, updates = module.apply({"params": weights, "batch_stats": batch_stats}, batch,
                                          mutable=["batch_stats"])
                return y, updates["batch_stats"]
            y, pullback, batch_stats = jax.vjp(forward, params, has_aux=True)
            return pullback(g.astype(y.dtype))[0], batch_stats

        params, batch_stats = model.variables["params"], model.variables.get("batch_stats", {})
        return lambda: jax.block_until_ready(forward_backward(params, batch_stats, xj, gj))

    def matmul(self, n: int) -> Callable[[], None]:
        jax, jnp = self.jax, self.jnp
        rng = np.random.default_rng(0)
        a, b = (jnp.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
        product = jax.jit(lambda a, b: a @ b)
        return lambda: product(a, b).block_until_ready()


class MXNetKit:
    """MXNet: the book's Gluon layers as ``HybridBlock``s, hybridized, ``gluon.Trainer``."""

    framework_import = "import mxnet"
    fast_path = "hybridize"
    has_compile = False

    def __init__(self, rn: ModuleType, settings: Settings) -> None:
        _cpu_only(rn.NAME, settings)
        import mxnet as mx
        from mxnet import autograd, gluon, init
        from mxnet.gluon import nn

        self.rn, self.mx, self.autograd, self.gluon, self.init, self.nn = rn, mx, autograd, gluon, init, nn

    def info(self) -> dict[str, Any]:
        return {"versions": {"mxnet": self.mx.__version__},
                "threads": os.environ.get("OMP_NUM_THREADS", "default"), "device": "cpu"}

    # The chapter's code (MXNet tab), as HybridBlocks so that hybridize() compiles them.
    def _blocks(self) -> Any:
        nn = self.nn

        class Residual(nn.HybridBlock):
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

        return Residual, ResNeXtBlock

    def _ready(self, net: Any, input_shape: tuple[int, ...]) -> Any:
        net.initialize(self.init.Xavier())
        net.hybridize()
        net(self.mx.nd.zeros(input_shape))
        return net

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> Any:
        nn = self.nn
        Residual, _ = self._blocks()
        net = nn.HybridSequential()
        net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3), nn.BatchNorm(), nn.Activation("relu"),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        for i, (num_residuals, num_channels) in enumerate(specs.RESNET18_ARCH):
            for j in range(num_residuals):
                first = j == 0 and i > 0
                net.add(Residual(num_channels, use_1x1conv=first, strides=2 if first else 1))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(num_classes))
        return self._ready(net, input_shape)

    def stock_resnext(self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float) -> Any:
        _, ResNeXtBlock = self._blocks()
        return self._ready(ResNeXtBlock(num_channels, groups, bot_mul), input_shape)

    def stock_train_step(self, model: Any, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        mx, autograd, gluon = self.mx, self.autograd, self.gluon
        trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

        def train_step(x: np.ndarray, labels: np.ndarray) -> float:
            with autograd.record():
                loss = loss_fn(model(mx.nd.array(x)), mx.nd.array(labels))
            loss.backward()
            trainer.step(x.shape[0])
            return float(loss.mean().asscalar())

        return train_step

    def stock_predict(self, model: Any) -> Callable[[np.ndarray], np.ndarray]:
        mx = self.mx
        return lambda x: model(mx.nd.array(x)).asnumpy()

    def ours_block(self, model: Any) -> Any:
        model.hybridize()
        return model

    def block_step(self, model: Any, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        mx, autograd = self.mx, self.autograd
        xm, gm = mx.nd.array(x), mx.nd.array(output_grad)

        def step() -> None:
            with autograd.record(train_mode=True):
                y = model(xm)
            y.backward(gm)
            mx.nd.waitall()

        return step

    def matmul(self, n: int) -> Callable[[], None]:
        mx = self.mx
        rng = np.random.default_rng(0)
        a, b = (mx.nd.array(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
        return lambda: mx.nd.dot(a, b).wait_to_read()


KITS = {"torch": TorchKit, "tensorflow": TensorFlowKit, "jax": JaxKit, "mxnet": MXNetKit}


# --------------------------------------------------------------------------------------- measurements


@dataclass
class Context:
    """What every measurement needs: the backend, its kit and the settings."""

    rn: ModuleType
    kit: Any
    settings: Settings
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """One float32 NCHW batch in [0, 1) with int64 labels, as ``resnet.data.Batches`` yields them."""
        s = self.settings
        x = self.rng.random(s.input_shape, dtype=np.float32)
        return x, self.rng.integers(0, 10, s.batch_size).astype(np.int64)

    def ours_resnet18(self) -> Any:
        from resnet.init import initial_weights

        model = self.rn.ResNet18()
        self.rn.build(model, self.settings.input_shape)
        self.rn.set_arrays(model, initial_weights(self.rn.spec_of(model), self.settings.input_shape, 0))
        if self.settings.gpu:
            self.rn.to_accelerator(model)
        return model


def _resnet18(ctx: Context, train: bool, compiled: bool = False) -> dict[str, Any]:
    s, rn, kit = ctx.settings, ctx.rn, ctx.kit
    x, labels = ctx.batch()
    ours_model = ctx.ours_resnet18()
    mixed = {"mixed_precision": s.mixed_precision}
    if compiled:  # torch only (kit.has_compile); two models, so that neither run touches the other's module
        make = (lambda m: rn.make_train_step(m, s.lr, **mixed)) if train else (lambda m: rn.make_predict(m, **mixed))
        ours, reference = make(kit.compile(ours_model)), make(ctx.ours_resnet18())
    elif train:
        ours = rn.make_train_step(ours_model, s.lr, **mixed)
        reference = kit.stock_train_step(kit.stock_resnet18(s.input_shape), s.lr)
    else:
        ours, reference = rn.make_predict(ours_model, **mixed), kit.stock_predict(kit.stock_resnet18(s.input_shape))
    if train:
        sides = Side(lambda: ours(x, labels), s.batch_size), Side(lambda: reference(x, labels), s.batch_size)
    else:
        sides = Side(lambda: ours(x), s.batch_size), Side(lambda: reference(x), s.batch_size)
    # Compiled code may recompile on its second call (guards on the training flag, BatchNorm's counters).
    result = measure(*sides, replace(s, warmup=max(s.warmup, 3)) if compiled else s, min_steps=s.model_min_steps)
    macs = multiply_adds(rn.spec_of(ours_model), s.input_shape)
    result["gflop_per_item"] = 2 * macs * (3 if train else 1) / 1e9
    if compiled:
        result["reference_is"] = "ours in eager mode (the default)"
        result["note"] = "ratio > 1: torch.compile wins (compile time excluded: it happens in the warm-up)"
    else:
        result["reference_is"] = f"stock {ctx.rn.NAME} layers, {kit.fast_path}"
    return result


def _resnext(ctx: Context, groups: int) -> dict[str, Any]:
    s, rn, kit = ctx.settings, ctx.rn, ctx.kit
    from resnet.init import initial_weights

    shape = s.block_shape
    ours_model = rn.ResNeXtBlock(s.block_channels, groups, 1)
    rn.build(ours_model, shape)
    rn.set_arrays(ours_model, initial_weights(rn.spec_of(ours_model), shape, 0))
    x = ctx.rng.standard_normal(shape, dtype=np.float32)
    output_grad = ctx.rng.standard_normal(shape, dtype=np.float32)
    ours = kit.block_step(kit.ours_block(ours_model), x, output_grad)
    reference = kit.block_step(kit.stock_resnext(shape, s.block_channels, groups, 1), x, output_grad)
    result = measure(Side(ours, s.block_batch), Side(reference, s.block_batch), s)
    result["gflop_per_item"] = 2 * 3 * multiply_adds(rn.spec_of(ours_model), shape) / 1e9
    result["reference_is"] = f"stock {rn.NAME} grouped convolution, {kit.fast_path}"
    result["shape"] = f"ResNeXtBlock({s.block_channels}, {groups}, 1) on NCHW {shape}"
    return result


def _data_pipeline(ctx: Context) -> dict[str, Any]:
    from resnet.data import Batches

    s = ctx.settings
    n = s.batch_size * s.data_batches
    images = ctx.rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    batches = Batches(images, ctx.rng.integers(0, 10, n), s.batch_size, resize=s.image_size, shuffle=True)
    epoch = iter(range(1 << 30))
    result = measure(Side(lambda: sum(1 for _ in batches.epoch(next(epoch))), s.data_batches), None, s)
    result["note"] = (f"batches of {s.batch_size} uint8 1x28x28 -> float32 1x{s.image_size}x{s.image_size}, "
                      f"shuffled; {result['ours']['median'] * s.batch_size:,.0f} images/s; no reference")
    return result


def _recipe(ctx: Context) -> dict[str, Any]:
    """Time ``resnet.training.fit`` on the chapter's recipe, on Fashion-MNIST when it is cached, else on random
    images of its size (the time does not depend on the pixels; the accuracy then means nothing)."""
    from resnet.data import DownloadError, load_fashion_mnist, random_like_fashion_mnist
    from resnet.training import TrainConfig, fit

    s, rn = ctx.settings, ctx.rn
    if s.recipe_examples:  # --quick
        dataset = random_like_fashion_mnist(s.recipe_examples)
    else:
        try:
            dataset = load_fashion_mnist(download_missing=False)
        except DownloadError:
            dataset = random_like_fashion_mnist()
    config = TrainConfig(epochs=s.recipe_epochs, batch_size=s.batch_size, lr=s.lr, resize=s.image_size)
    model = rn.ResNet18()
    started = time.perf_counter()
    history = fit(model, dataset, config, progress=False, log=lambda line: None, mixed_precision=s.mixed_precision,
                  accelerator=s.gpu, compile=s.compile)
    seconds = time.perf_counter() - started
    speeds, val_acc, device = history.column("images_per_s"), history.rows[-1]["val_acc"], rn.device_of(model)
    return {
        "ours": _stats([seconds], 1),
        "reference": None,
        "epochs": s.recipe_epochs,
        "images_per_s": speeds,
        "val_acc": val_acc,
        "dataset": dataset.name,
        "device": device,
        "note": (f"{s.recipe_epochs} epochs on {dataset.name} ({len(dataset.train_labels):,} + "
                 f"{len(dataset.val_labels):,} images) on {device}, evaluation and compilation included; "
                 f"{statistics.median(speeds):,.0f} images/s median epoch; final val_acc {val_acc:.4f}"
                 + ("" if dataset.name == "fashion-mnist" else " (random images: the accuracy means nothing)")),
    }


def _imports(ctx: Context, backend_too: bool) -> dict[str, Any]:
    repeats = ctx.settings.import_repeats
    if not backend_too:
        result = measure_imports("import resnet", None, repeats)
        result["note"] = "no framework imported; no reference"
        return result
    result = measure_imports(f"import resnet.backends.{ctx.rn.NAME}", ctx.kit.framework_import, repeats)
    result["reference_is"] = f"the framework alone: {ctx.kit.framework_import}"
    result["note"] = "ours includes the framework: ratio = framework alone / ours"
    return result


def _matmul(ctx: Context) -> dict[str, Any]:
    n = ctx.settings.matmul_n
    result = measure(Side(ctx.kit.matmul(n), 2 * n**3 / 1e9), None, ctx.settings, best=True)
    result["note"] = f"{n}x{n} float32 matrix product; the peak is the best repeat"
    return result


MEASURE: dict[str, Callable[[Context], dict[str, Any]]] = {
    "resnet18_train": lambda ctx: _resnet18(ctx, train=True),
    "resnet18_infer": lambda ctx: _resnet18(ctx, train=False),
    "resnet18_train_compiled": lambda ctx: _resnet18(ctx, train=True, compiled=True),
    "resnet18_infer_compiled": lambda ctx: _resnet18(ctx, train=False, compiled=True),
    **{name: (lambda ctx, g=g: _resnext(ctx, g)) for name, g in RESNEXT_GROUPS.items()},
    "data_pipeline": _data_pipeline,
    "import_resnet": lambda ctx: _imports(ctx, backend_too=False),
    "import_backend": lambda ctx: _imports(ctx, backend_too=True),
    "matmul_peak": _matmul,
    "recipe": _recipe,
}
UNITS = {"data_pipeline": "batches/s", "import_resnet": "s", "import_backend": "s", "matmul_peak": "GFLOP/s",
         "recipe": "s"}
ORDER = ("import_resnet", "import_backend", "matmul_peak", "data_pipeline", "resnext_g2", "resnext_g8", "resnext_g32",
         "resnet18_infer", "resnet18_train", "resnet18_infer_compiled", "resnet18_train_compiled", "recipe")


def _finish(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Add the unit, the ratio of the medians and whether it is a like-for-like comparison."""
    unit = UNITS.get(name, "images/s")
    lower_is_better = unit == "s"
    entry = {"name": name, "description": MEASUREMENTS[name], "status": "ok", "unit": unit,
             "higher_is_better": not lower_is_better, **result}
    ours, reference = entry["ours"], entry.get("reference")
    if reference:
        a, b = (reference["median"], ours["median"]) if lower_is_better else (ours["median"], reference["median"])
        entry["ratio"] = a / b
        entry["comparable"] = True
    else:
        entry["ratio"], entry["comparable"] = None, False
    return entry


def _add_peak_fractions(entries: list[dict[str, Any]]) -> None:
    peak = next((e for e in entries if e["name"] == "matmul_peak" and e["status"] == "ok"), None)
    for entry in entries:
        if entry["status"] != "ok" or "gflop_per_item" not in entry:
            continue
        entry["gflops"] = {side: entry[side]["median"] * entry["gflop_per_item"]
                           for side in ("ours", "reference") if entry.get(side)}
        if peak:
            entry["peak_fraction"] = {side: value / peak["ours"]["best"] for side, value in entry["gflops"].items()}


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS",
                     "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "MXNET_CPU_WORKER_NTHREADS",
                     "TF_ENABLE_ONEDNN_OPTS", "CUDA_VISIBLE_DEVICES")


def machine_info(kit: Any | None = None) -> dict[str, Any]:
    """CPU model, cores, load average, Python and (with a kit) the framework versions and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        # Thread settings change the numbers a lot on a small machine; record any that are set.
        "thread_env": {k: v for k, v in os.environ.items() if k in _THREAD_VARIABLES},
    }
    if kit is not None:
        info.update(kit.info())
    return info


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine since boot, CPU seconds of this process and its finished children),
    read from /proc (Linux); None elsewhere. Their changes over a run give the CPU that *other* processes used."""
    try:
        with open("/proc/stat") as handle:
            machine = [int(value) for value in handle.readline().split()[1:]]
        with open("/proc/self/stat") as handle:
            own = handle.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user and nice.
    busy = sum(machine[:8]) - machine[3] - machine[4]
    mine = sum(int(value) for value in own[11:15])  # utime, stime, cutime, cstime: all threads, waited-for children
    return busy / tick, mine / tick


def other_cpu_load(before: tuple[float, float] | None, after: tuple[float, float] | None, seconds: float) -> float | None:
    """Average number of cores that processes other than this one kept busy between two ``cpu_seconds()``."""
    if before is None or after is None or seconds <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / seconds)


def selected(only: Sequence[str] | None) -> list[str]:
    """The measurements to run, in running order; ValueError for an unknown name."""
    if only:
        unknown = [name for name in only if name not in MEASUREMENTS]
        if unknown:
            raise ValueError(f"unknown measurement {', '.join(unknown)}; known: {', '.join(MEASUREMENTS)}")
        return [name for name in ORDER if name in only]
    return list(ORDER)


def run_benchmark(rn: ModuleType, settings: Settings, only: Sequence[str] | None = None,
                  log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Run the selected measurements in backend module ``rn``; the JSON-ready result."""
    kit = KITS[rn.NAME](rn, settings)
    ctx = Context(rn, kit, settings)
    started, cpu_before, began_run = machine_info(kit), cpu_seconds(), time.perf_counter()
    entries = []
    for name in selected(only):
        if name in COMPILED and not kit.has_compile:
            entries.append({"name": name, "description": MEASUREMENTS[name], "status": "n/a",
                            "reason": f"torch.compile is PyTorch's; ours in {rn.NAME} already runs on {kit.fast_path}"})
            continue
        if settings.quick and not only and name in COMPILED:
            entries.append({"name": name, "description": MEASUREMENTS[name], "status": "skipped",
                            "reason": "not measured under --quick (compiling takes minutes); name it in --only"})
            continue
        if name == "recipe" and not (settings.gpu or settings.quick or (only and name in only)):
            entries.append({"name": name, "description": MEASUREMENTS[name], "status": "skipped",
                            "reason": "measured with --gpu (on a 2-core CPU the 10 epochs take hours); name it in --only"})
            continue
        log(f"bench {rn.NAME}: {name} ...")
        began = time.perf_counter()
        try:
            entry = _finish(name, MEASURE[name](ctx))
        except Exception as error:  # one failure must not hide the other rows
            entry = {"name": name, "description": MEASUREMENTS[name], "status": "error",
                     "reason": f"{type(error).__name__}: {error}",
                     "traceback": traceback.format_exc(limit=8)}
            if name.endswith("_compiled"):  # an unusable torch.compile is a finding, not a harness bug
                entry["status"] = "unavailable"
        entry["seconds"] = round(time.perf_counter() - began, 2)
        entries.append(entry)
    _add_peak_fractions(entries)
    machine = machine_info(kit)
    machine["load_average_at_start"] = started["load_average"]
    others = other_cpu_load(cpu_before, cpu_seconds(), time.perf_counter() - began_run)
    machine["other_cpu_load"] = None if others is None else round(others, 3)
    return {"schema": SCHEMA, "backend": rn.NAME, "fast_path": kit.fast_path, "quick": settings.quick,
            "settings": asdict(settings), "machine": machine,
            "measurements": sorted(entries, key=lambda e: list(MEASUREMENTS).index(e["name"]))}


# ------------------------------------------------------------------------------------------ output


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def format_stats(stats: dict[str, Any] | None) -> str:
    """``median [min-max]``."""
    if not stats:
        return "-"
    return f"{_number(stats['median'])} [{_number(stats['min'])}-{_number(stats['max'])}]"


#: Where /proc cannot tell what other processes used: a 1-minute load average at the start at or above this means
#: other processes were running, so the figures are unreliable. (The average lags by minutes, so it also counts a
#: benchmark that has just ended; ``other_cpu_load`` does not.)
BUSY_LOAD = 1.0
#: Other processes keeping this many cores busy on average during the run (``other_cpu_load``) make it unreliable.
BUSY_OTHERS = 0.25


def was_busy(machine: dict[str, Any]) -> bool:
    """Whether other processes ran during a run: by the CPU time they used while it ran (Linux), else by the
    load average at the start and, beyond what the benchmark's own threads account for, at the end."""
    if machine.get("other_cpu_load") is not None:
        return machine["other_cpu_load"] >= BUSY_OTHERS
    start, end = machine.get("load_average_at_start"), machine.get("load_average")
    return bool(start and start[0] >= BUSY_LOAD) or bool(end and end[0] >= machine["usable_cores"] + BUSY_LOAD)


def format_table(result: dict[str, Any]) -> str:
    """The printed table: one row per measurement."""
    m = result["machine"]
    lines = [
        f"resnet bench -- backend {result['backend']} ({result['fast_path']}), "
        f"{', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}",
        f"{m['cpu']}, {m['usable_cores']} usable cores, load average {m['load_average_at_start']} at start, "
        f"{m['load_average']} at end, other processes {m.get('other_cpu_load')} cores"
        + ("  [--quick: tiny sizes; the numbers mean nothing]" * result["quick"]),
        "",
    ]
    if was_busy(m):
        lines[-1:-1] = ["WARNING: other processes were running (" + (
            f"they kept {m['other_cpu_load']} cores busy" if m.get("other_cpu_load") is not None
            else f"load average {m['load_average_at_start'][0]} at the start") + "), so these numbers are unreliable."]
    header = ("measurement", "unit", "ours median [min-max]", "reference median [min-max]", "ours/ref", "%peak", "note")
    rows = [header]
    for e in result["measurements"]:
        if e["status"] != "ok":
            rows.append((e["name"], "", e["status"].upper(), "", "", "", e["reason"].splitlines()[0][:100]))
            continue
        ratio = f"{e['ratio']:.2f}x" if e.get("ratio") is not None else "n/c"
        peak = e.get("peak_fraction", {}).get("ours")
        note = e.get("note") or e.get("reference_is", "")
        rows.append((e["name"], e["unit"], format_stats(e["ours"]), format_stats(e.get("reference")), ratio,
                     f"{100 * peak:.0f}%" if peak is not None else "", note))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    lines.append("")
    lines.append("ours/ref: ratio of the medians, > 1 means ours is faster; n/c: no comparable reference. "
                 "Throughputs per second except import times (s).")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``resnet bench`` (also of ``python -m resnet.bench``)."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for CI and tests: batch 8, 32x32, 2 repeats (the numbers mean nothing)")
    parser.add_argument("--repeats", type=int, help="alternating repeats per measurement (default 5; 2 with --quick)")
    parser.add_argument("--steps", type=int,
                        help="steps per repeat for both sides (default: chosen so a repeat takes --target-seconds)")
    parser.add_argument("--target-seconds", type=float, help="about how long one side's repeat takes (default 1.0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (e.g. bench-results/jax.json)")
    parser.add_argument("--only", metavar="NAMES", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        action="extend", help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}")
    parser.add_argument("--list", action="store_true", help="list the measurements and exit")
    parser.add_argument("--backend", dest="bench_backend", metavar="NAME",
                        help="torch, tensorflow, jax or mxnet (as the global --backend)")
    parser.add_argument("--gpu", action="store_true",
                        help="torch and jax: run the models on the GPU, and time the 10-epoch recipe")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="torch and jax: both sides compute in bfloat16 with float32 weights")
    parser.add_argument("--compile", action="store_true", help="torch: the recipe's train step under torch.compile")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed options (validated)."""
    settings = Settings.quick_settings() if args.quick else Settings()
    for option in ("repeats", "steps"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option} must be a positive integer, got {value}")
    if args.target_seconds is not None and not args.target_seconds > 0:
        raise ValueError(f"--target-seconds must be positive, got {args.target_seconds}")
    changes = {"repeats": args.repeats, "steps": args.steps, "target_seconds": args.target_seconds,
               "gpu": args.gpu or None, "mixed_precision": args.mixed_precision or None, "compile": args.compile or None}
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """``resnet bench``: run, print the table, write the JSON; 1 if any measurement failed."""
    if args.list:
        for name, text in MEASUREMENTS.items():
            print(f"{name:<24} {text}")
        return 0
    settings = settings_from(args)
    selected(args.only)  # unknown names fail before any framework is imported
    if args.bench_backend:
        selection.set_backend(args.bench_backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rn = selection.backend_module()
    result = run_benchmark(rn, settings, args.only)
    print(format_table(result))
    if args.json:
        from resnet.atomic import atomic_path

        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    failed = [e["name"] for e in result["measurements"] if e["status"] == "error"]
    if failed:
        print(f"resnet bench: {len(failed)} measurement(s) failed: {', '.join(failed)} (tracebacks in the JSON)",
              file=sys.stderr)
        for entry in result["measurements"]:
            if entry["status"] == "error":
                print(entry["traceback"], file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resnet.bench``."""
    parser = argparse.ArgumentParser(prog="python -m resnet.bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, ImportError, OSError) as error:
        print(f"resnet bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
