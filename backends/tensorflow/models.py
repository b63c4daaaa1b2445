"""The chapter's ResNet and ResNet-18 as ``keras.Model``s (NHWC), and the family's builder functions.

The network is a ``keras.Model``, the outer object that is trained and saved, and its parts ``Sequential``s of
Keras layers. The parts, the blocks of a stage (by index) and the layers with weights carry their canonical names
as Keras names (``b1``, ``b2``, ..., ``last``; ``0``, ``1``; ``conv``, ``bn``, ``fc``, ``conv1``), by which the
hooks look them up, and which make the weights' Keras paths canonical and stable: ``resnet18/net/b2/0/conv1/kernel``
holds ``b2.0.conv1.weight``, whatever else the process has built.

The models serialise as Keras' own do: ``get_config`` holds the description (the book's ``arch`` and
``num_classes``, or any other ``ModelSpec`` as plain data), ``lr``, ``dtype`` and the name; the classes are
registered (``resnet>ResNet``), so ``model.save("m.keras")`` and ``keras.models.load_model("m.keras")`` round-trip
with no ``custom_objects``, and ``keras.models.clone_model`` works.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import tensorflow as tf  # before keras, as in resnet.backends.tensorflow.layers

import keras  # isort: skip

from resnet.backends.tensorflow import blocks
from resnet.backends.tensorflow.layers import MaxPool2d, Sequential, make_layer, serializable

from resnet import api, specs
from resnet.contract import declared
from resnet.docs import CLASS_DOCS
from resnet.specs import BlockSpec, HeadSpec, ModelSpec, StemSpec

__all__ = ["ResNet", "ResNet18", *specs.FAMILY]

LAYOUT = declared(__name__).layout

#: The native block for a block description; Keras' options (``dtype``, the dtype policy, ``name``) as keywords.
make_block = functools.partial(specs.build_block, blocks)

#: Block kind -> the function that validates its fields and describes it (a description's fields are its
#: arguments, ``preact`` included).
_BLOCK_SPECS = {
    "residual": specs.residual,
    "resnext": specs.resnext,
    "basic": specs.basic,
    "preact_basic": specs.basic,
    "bottleneck": specs.bottleneck,
    "preact_bottleneck": specs.bottleneck,
}


def spec_to_config(spec: ModelSpec) -> dict[str, Any]:
    """A model description as plain data (dicts, lists, numbers, strings) for a Keras config."""

    def block(description: BlockSpec) -> dict[str, Any]:
        return {"kind": description.kind, **dataclasses.asdict(description)}

    stages = [[name, [block(b) for b in stage]] for name, stage in spec.stages]
    return {"stem": dataclasses.asdict(spec.stem), "stages": stages, "head": dataclasses.asdict(spec.head)}


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    """The model description that ``spec_to_config`` wrote, its blocks validated as their classes validate them."""

    def block(fields: dict[str, Any]) -> BlockSpec:
        fields = dict(fields)
        return _BLOCK_SPECS[fields.pop("kind")](**fields)

    stages = tuple((str(name), tuple(block(fields) for fields in stage)) for name, stage in config["stages"])
    return ModelSpec(StemSpec(**config["stem"]), stages, HeadSpec(**config["head"]))


def _book_arch(spec: ModelSpec) -> list[list[int]] | None:
    """The book's ``arch`` that describes ``spec``, or None when ``spec`` is not a book ResNet."""
    arch = [[len(stage), stage[0].num_channels] for _, stage in spec.stages if stage]
    try:
        return arch if specs.book_resnet(arch, spec.head.num_classes) == spec else None
    except ValueError:
        return None


def _check_global_policy(dtype: str) -> None:
    """Refuse a global Keras dtype policy (``keras.config.set_dtype_policy``) that this model would otherwise
    ignore: a model computes in its ``dtype`` argument, and mixed precision is refused in this CPU build."""
    policy = keras.config.dtype_policy().name
    if policy == "float32" or policy == dtype:
        return
    if policy in specs.DTYPES:
        raise ValueError(
            f"the global Keras dtype policy is {policy!r}, but this model's dtype is {dtype!r}: resnet's Keras "
            f"models compute in their dtype argument only, so pass dtype={policy!r} to compute in it, or reset the "
            "policy with keras.config.set_dtype_policy('float32')"
        )
    raise ValueError(
        f"the global Keras dtype policy is {policy!r}, but resnet's Keras models compute in float32 or float64 "
        "(their dtype argument): mixed precision is refused in this CPU build of TensorFlow, as "
        "make_train_step(..., mixed_precision=True) is. Reset the policy with keras.config.set_dtype_policy('float32')"
    )


@serializable
class ResNet(keras.Model):
    __doc__ = CLASS_DOCS["ResNet"]

    def __init__(
        self,
        arch: Sequence[Sequence[int]] | None = None,
        lr: float = specs.DEFAULT_LR,
        num_classes: int = 10,
        *,
        spec: ModelSpec | None = None,
        dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        dtype = specs.check_dtype(dtype)
        _check_global_policy(dtype)
        # A name of its own (resnet18), not Keras' counted one (res_net18_3): the weights' paths start with it.
        kwargs.setdefault("name", type(self).__name__.lower())
        super().__init__(dtype=dtype, **kwargs)
        self.spec = specs.model_spec(arch, num_classes, spec)
        self.lr = specs.learning_rate(lr)
        dtype = self.dtype_policy  # every layer takes the model's, as Keras casts each layer's inputs to its own
        parts = [self.b1()]
        for stage_name, stage in self.spec.stages:  # the book's self.block(...) for the book's arch
            parts.append(Sequential(self._blocks(stage), dtype=dtype, name=stage_name))
        parts.append(self.head())
        self.net = Sequential(parts, dtype=dtype, name="net")

    def b1(self) -> Sequential:
        """The stem: convolution, BN, ReLU and max pooling (the book's 7x7/2 convolution and 3x3/2 pooling; no
        pooling in a stem without, such as the multi-GPU ResNet-18's; no BN or ReLU in a pre-activation one)."""
        layers, pool, dtype = self.spec.stem.layers(), self.spec.stem.pool, self.dtype_policy
        parts = [make_layer(layers["conv"], dtype, name="conv")]
        if "bn" in layers:  # not in a pre-activation stem
            parts += [make_layer(layers["bn"], dtype, name="bn"), keras.layers.ReLU(dtype=dtype, name="relu")]
        if pool is not None:
            parts.append(MaxPool2d(pool.kernel, pool.stride, pool.padding, dtype=dtype, name="pool"))
        return Sequential(parts, dtype=dtype, name="b1")

    def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> Sequential:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width."""
        stage = specs.book_stage(num_residuals, num_channels, first_block)
        return Sequential(self._blocks(stage), dtype=self.dtype_policy)

    def _blocks(self, stage: Sequence[BlockSpec]) -> list[keras.layers.Layer]:
        """The native blocks of a stage, named by their index (their canonical name there)."""
        return [make_block(b, dtype=self.dtype_policy, name=str(i)) for i, b in enumerate(stage)]

    def head(self) -> Sequential:
        """The head: global average pooling and a dense layer to the classes (after BN and ReLU in ResNet v2)."""
        layers, dtype = self.spec.head.layers(), self.dtype_policy
        preact = (
            [make_layer(layers["bn"], dtype, name="bn"), keras.layers.ReLU(dtype=dtype, name="relu")]
            if "bn" in layers
            else []
        )
        pool = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pool")
        return Sequential([*preact, pool, make_layer(layers["fc"], dtype, name="fc")], dtype=dtype, name="last")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create every weight for an NHWC ``input_shape`` (Keras' ``model.build((None, 96, 96, 1))``, and what
        ``keras.models.load_model`` calls): a symbolic pass, nothing computed. Any height, width and batch size
        run afterwards."""
        specs.check_model_input(self.spec, input_shape[-1])
        if not self.net.built:
            self.net.build((None, None, None, input_shape[-1]))

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        specs.check_model_input(self.spec, X.shape[-1])
        return self.net(X, training=training)

    def layer_summary(self, X_shape: Sequence[int]) -> None:
        """The book's method: print each part's output shape for an NHWC input shape, e.g. the chapter's
        ``ResNet18().layer_summary((1, 96, 96, 1))``, in NHWC (``resnet.layer_summary`` speaks NCHW)."""
        api.layer_summary(self, X_shape, layout=LAYOUT)

    def get_config(self) -> dict[str, Any]:
        """Keras' config: the description (``arch`` and ``num_classes`` for the book's ResNet, else ``spec`` as
        plain data), ``lr``, ``dtype``, the name and trainability; of those, the arguments the class's
        ``__init__`` takes (a subclass such as ``ResNet18`` or the chapter's ``class ResNet18(ResNet)`` gets
        its own). A subclass with other arguments overrides ``get_config``, as Keras asks of any subclass."""
        arch = _book_arch(self.spec)
        config = {
            "arch": arch,
            "lr": self.lr,
            "num_classes": self.spec.head.num_classes,
            "spec": None if arch is not None else spec_to_config(self.spec),
            "dtype": self.dtype_policy.variable_dtype,
            "name": self.name,
            "trainable": self.trainable,
        }
        parameters = inspect.signature(type(self).__init__).parameters
        keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        return {k: v for k, v in config.items() if k in parameters or (keywords and k in ("name", "trainable"))}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ResNet:
        config = dict(config)
        if isinstance(config.get("spec"), dict):
            config["spec"] = spec_from_config(config["spec"])
        return cls(**config)


@serializable
class ResNet18(ResNet):
    __doc__ = CLASS_DOCS["ResNet18"]

    def __init__(
        self, lr: float = specs.DEFAULT_LR, num_classes: int = 10, *, dtype: str = "float32", **kwargs: Any
    ) -> None:
        super().__init__(specs.RESNET18_ARCH, lr, num_classes, dtype=dtype, **kwargs)


# The ResNet family of the chapter's exercises, in torchvision's convention (resnet18() ... resnext101_32x8d()),
# and the book's multi-GPU ResNet-18 (resnet18_multigpu()).
globals().update(specs.family_builders(ResNet))
