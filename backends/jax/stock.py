"""The benchmark's reference in JAX: the chapter's models written plainly with the framework's stock layers
(Flax linen ``nn.Conv`` with the book's ``padding='same'`` and ``feature_group_count``, ``nn.BatchNorm``,
``nn.Dense``), trained by a jitted step with ``optax.sgd``, and the chapter's ResNet-18 as the book writes it;
the harness (``resnet.bench``) times this package's models against them."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet import specs
from resnet.bench.kit import Kit
from resnet.bench.settings import Settings
from resnet.contract import declared
from resnet.layouts import shape_to_native

__all__ = ["StockKit"]

LAYOUT = declared(__name__).layout


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    """An NCHW batch transposed the plain way, a view that the framework copies into its array (as ours does)."""
    return np.transpose(x, (0, 2, 3, 1))


# The chapter's code (JAX tab), with `groups` as the number of groups.
class Residual(nn.Module):
    """The book's residual block, with the stock Flax layers."""

    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    def setup(self) -> None:
        self.conv1 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same", strides=self.strides)
        self.conv2 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same")
        self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides) if self.use_1x1conv else None
        self.bn1 = nn.BatchNorm(not self.training)
        self.bn2 = nn.BatchNorm(not self.training)

    def __call__(self, X: jax.Array) -> jax.Array:
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        return nn.relu(Y + X)


class ResNet18(nn.Module):
    """The book's ResNet-18, with the stock Flax layers."""

    num_classes: int = 10
    training: bool = True

    def setup(self) -> None:
        layers = [
            nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding="same"),
            nn.BatchNorm(not self.training),
            nn.relu,
            lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="same"),
        ]
        for i, (num_residuals, num_channels) in enumerate(specs.RESNET18_ARCH):
            for j in range(num_residuals):
                first = j == 0 and i > 0
                layers.append(
                    Residual(
                        num_channels, use_1x1conv=first, strides=(2, 2) if first else (1, 1), training=self.training
                    )
                )
        layers += [lambda x: x.mean(axis=(1, 2)), nn.Dense(self.num_classes)]
        self.net = nn.Sequential(layers)

    def __call__(self, X: jax.Array) -> jax.Array:
        return self.net(X)


# The chapter's own code (JAX tab), as the book writes it: `Y += X`, nested nn.Sequential stages, the global
# average as an avg_pool over the whole map and a reshape.
class BookResidual(nn.Module):
    """The chapter's ``Residual`` (JAX tab), unchanged."""

    num_channels: int
    use_1x1conv: bool = False
    strides: tuple = (1, 1)
    training: bool = True

    def setup(self) -> None:
        self.conv1 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same", strides=self.strides)
        self.conv2 = nn.Conv(self.num_channels, kernel_size=(3, 3), padding="same")
        if self.use_1x1conv:
            self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=self.strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm(not self.training)
        self.bn2 = nn.BatchNorm(not self.training)

    def __call__(self, X: jax.Array) -> jax.Array:
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return nn.relu(Y)


class BookResNet18(nn.Module):
    """The chapter's ``ResNet`` with ``ResNet18``'s arch (JAX tab; d2l's Classifier is a Flax module)."""

    arch: tuple = tuple(specs.RESNET18_ARCH)
    num_classes: int = 10
    training: bool = True

    def setup(self) -> None:
        self.net = self.create_net()

    def b1(self) -> nn.Sequential:
        return nn.Sequential(
            [
                nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding="same"),
                nn.BatchNorm(not self.training),
                nn.relu,
                lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="same"),
            ]
        )

    def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> nn.Sequential:
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(BookResidual(num_channels, use_1x1conv=True, strides=(2, 2), training=self.training))
            else:
                blk.append(BookResidual(num_channels, training=self.training))
        return nn.Sequential(blk)

    def create_net(self) -> nn.Sequential:
        net = nn.Sequential([self.b1()])
        for i, b in enumerate(self.arch):
            net.layers.extend([self.block(*b, first_block=(i == 0))])
        net.layers.extend(
            [
                nn.Sequential(
                    [
                        lambda x: nn.avg_pool(x, window_shape=x.shape[1:3], strides=x.shape[1:3], padding="valid"),
                        lambda x: x.reshape((x.shape[0], -1)),
                        nn.Dense(self.num_classes),
                    ]
                )
            ]
        )
        return net

    def __call__(self, X: jax.Array) -> jax.Array:
        return self.net(X)


class ResNeXtBlock(nn.Module):
    """The book's ResNeXt block (identity shortcut), with the stock grouped convolution
    (``feature_group_count=groups``)."""

    num_channels: int
    groups: int
    bot_mul: float
    training: bool = True

    def setup(self) -> None:
        bot_channels = int(round(self.num_channels * self.bot_mul))
        self.conv1 = nn.Conv(bot_channels, kernel_size=(1, 1), strides=(1, 1))
        self.conv2 = nn.Conv(
            bot_channels, kernel_size=(3, 3), strides=(1, 1), padding="same", feature_group_count=self.groups
        )
        self.conv3 = nn.Conv(self.num_channels, kernel_size=(1, 1), strides=(1, 1))
        self.bn1, self.bn2, self.bn3 = (nn.BatchNorm(not self.training) for _ in range(3))

    def __call__(self, X: jax.Array) -> jax.Array:
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        return nn.relu(Y + X)


class _FlaxModel:
    """A Flax module with its variables (Flax modules hold none)."""

    def __init__(self, module: nn.Module, variables: dict[str, Any]) -> None:
        self.module, self.variables = module, dict(variables)


class StockKit(Kit):
    """JAX: the book's Flax linen layers (``padding='same'``, ``feature_group_count``), a jitted optax step
    (methods: ``resnet.bench.kit.Kit``)."""

    framework_import = "import jax, flax.linen, optax"
    fast_path = "jax.jit"
    has_compile = False

    def __init__(self, rn: ModuleType, settings: Settings) -> None:
        super().__init__(rn, settings)
        if settings.gpu != (jax.default_backend() == "gpu"):
            raise ValueError(
                f"--gpu {'asks for' if settings.gpu else 'is off but'} a GPU, and JAX's default device "
                f"is {jax.default_backend()}: install jax[cuda12] on a machine with a GPU for --gpu, or "
                "set JAX_PLATFORMS=cpu to measure the CPU there"
            )
        self.mixed_precision = settings.mixed_precision

    def _compute(self, params: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        """The weights and batch to compute with: bfloat16 copies with --mixed-precision (the gradient flows back
        to the float32 weights), else themselves."""
        if not self.mixed_precision:
            return params, x
        bf16 = jnp.bfloat16
        return jax.tree_util.tree_map(lambda leaf: leaf.astype(bf16), params), x.astype(bf16)

    def info(self) -> dict[str, Any]:
        return {
            "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
            "threads": "XLA default",
            "device": jax.default_backend(),
        }

    def _init(self, module: nn.Module, input_shape: tuple[int, ...]) -> _FlaxModel:
        # Flax's own initializers (truncated normal per kernel shape) take 20-30 s to compile for ResNet-18 on
        # this CPU, jitted or not, and the values do not matter for speed: take the shapes from Flax and fill
        # them with He-normal kernels, zero biases and means, unit scales and variances.
        x = jax.ShapeDtypeStruct(shape_to_native(input_shape, LAYOUT), jnp.float32)
        shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
        rng = np.random.default_rng(0)

        def fill(path: tuple, leaf: Any) -> jax.Array:
            name = getattr(path[-1], "key", "")
            if name == "kernel":
                fan_in = int(np.prod(leaf.shape[:-1]))
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
            else:
                value = np.ones(leaf.shape) if name in ("scale", "var") else np.zeros(leaf.shape)
            return jnp.asarray(value.astype(leaf.dtype))

        return _FlaxModel(module, jax.tree_util.tree_map_with_path(fill, shapes))

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> _FlaxModel:
        return self._init(ResNet18(num_classes), input_shape)

    def book_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> _FlaxModel:
        return self._init(BookResNet18(num_classes=num_classes), input_shape)

    def stock_resnext(self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float) -> _FlaxModel:
        return self._init(ResNeXtBlock(num_channels, groups, bot_mul), input_shape)

    def stock_train_step(self, model: _FlaxModel, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        optimizer = optax.sgd(lr)
        module = model.module

        @jax.jit
        def step(params: Any, batch_stats: Any, opt_state: Any, x: jax.Array, labels: jax.Array) -> Any:
            def loss_fn(params: Any) -> Any:
                weights, batch = self._compute(params, x)
                logits, updates = module.apply(
                    {"params": weights, "batch_stats": batch_stats}, batch, mutable=["batch_stats"]
                )
                logits = logits.astype(jnp.float32)
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

            (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            changes, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

        state = {"opt_state": optimizer.init(model.variables["params"])}

        def train_step(x: np.ndarray, labels: np.ndarray) -> float:
            params, batch_stats, state["opt_state"], loss = step(
                model.variables["params"],
                model.variables["batch_stats"],
                state["opt_state"],
                jnp.asarray(_to_nhwc(x)),
                jnp.asarray(labels, dtype=jnp.int32),
            )
            model.variables = {"params": params, "batch_stats": batch_stats}
            return float(loss)

        return train_step

    def stock_predict(self, model: _FlaxModel) -> Callable[[np.ndarray], np.ndarray]:
        module = model.module.clone(training=False)

        @jax.jit
        def compiled(variables: Any, x: jax.Array) -> jax.Array:
            params, batch = self._compute(variables["params"], x)
            return module.apply({**variables, "params": params}, batch).astype(jnp.float32)

        return lambda x: np.asarray(compiled(model.variables, jnp.asarray(_to_nhwc(x))))

    def ours_block(self, model: nn.Module) -> _FlaxModel:
        return _FlaxModel(model.clone(training=True), self.rn.variables(model))

    def block_step(self, model: _FlaxModel, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        module = model.module
        xj, gj = jnp.asarray(_to_nhwc(x)), jnp.asarray(_to_nhwc(output_grad))

        @jax.jit
        def forward_backward(params: Any, batch_stats: Any, x: jax.Array, g: jax.Array) -> Any:
            def forward(params: Any) -> Any:
                weights, batch = self._compute(params, x)
                y, updates = module.apply(
                    {"params": weights, "batch_stats": batch_stats}, batch, mutable=["batch_stats"]
                )
                return y, updates["batch_stats"]

            y, pullback, batch_stats = jax.vjp(forward, params, has_aux=True)
            return pullback(g.astype(y.dtype))[0], batch_stats

        params, batch_stats = model.variables["params"], model.variables.get("batch_stats", {})
        return lambda: jax.block_until_ready(forward_backward(params, batch_stats, xj, gj))

    def matmul(self, n: int) -> Callable[[], None]:
        rng = np.random.default_rng(0)
        a, b = (jnp.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
        product = jax.jit(lambda a, b: a @ b)
        return lambda: product(a, b).block_until_ready()
