"""The backend contract, declared once: what every package under ``resnet.backends`` provides.

A backend is a package ``resnet.backends.<name>`` (source: ``backends/<name>/``) registered by one line in
``resnet.registry``, which also holds what it declares about itself (layout, mixed precision, GPU). Every
backend has the same modules, holding the same kind of thing:

============  ==================================================================================================
``layers``    the framework's layers built from layer descriptions (``make_layer``), the projection ``Shortcut``,
              the per-framework numerics fixes and fast paths
``blocks``    ``Residual``, ``ResNeXtBlock``, ``BasicBlock``, ``Bottleneck``, ``PreActBasic``,
              ``PreActBottleneck``: the framework's own module classes, with the book's names and signatures
``models``    ``ResNet``, ``ResNet18`` and the family's builders (``resnet18()`` ... ``resnext101_32x8d()``)
``hooks``     the hooks below that the common API (``resnet.api``, ``resnet.weights``) calls
``train``     ``make_train_step`` and ``make_predict``, on the framework's usual fast path
``parallel``  data-parallel training through the framework's own engine: ``init_distributed``, ``launch``,
              ``replicate``, ``make_parallel_train_step``, ``agree`` (the plan and the batch split are
              ``resnet.parallel``'s)
``stock``     the benchmark's reference: the chapter's model written plainly with the framework's stock layers
``d2l``       the framework's part of the stand-in for the book's ``d2l`` (``resnet.d2l``): the ``Module`` and
              ``Classifier`` bases of the chapter's own classes, ``to_batch``, ``train_and_predict``, the
              device and random helpers the chapter's cells use
============  ==================================================================================================

Every block and model has a ``spec`` attribute, its description (``resnet.specs``); the common API finds a
model's backend from its class (``resnet.api.backend_of``). Arrays cross the hooks as NumPy arrays in NCHW order
with canonical names and layouts (``resnet.walk``, ``resnet.layouts``), or as the backend's native tensors
where a hook says so.

The hooks are written in each backend's ``hooks``, ``train`` and ``parallel`` modules under ``@hook``, which gives
them the docstrings of ``Hooks`` below and checks their parameters against it. ``contract_problems(module)`` lists
what a backend lacks; the contract test runs it on every backend.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from resnet.parallel import Plan
from resnet.registry import REGISTRY, BackendInfo
from resnet.specs import BlockSpec, ConvSpec, ModelSpec
from resnet.walk import tensors

__all__ = [
    "CLASSES",
    "HOOKS",
    "Hooks",
    "MODEL_HOOKS",
    "PARALLEL_HOOKS",
    "TRAIN_HOOKS",
    "check_batch_norm_batch",
    "check_mixed_precision",
    "contract_problems",
    "declared",
    "export",
    "first_layer_channels",
    "hook",
    "learning_rate_of",
]

#: The model classes every backend defines, with the book's names.
CLASSES = (
    "Residual",
    "ResNeXtBlock",
    "BasicBlock",
    "Bottleneck",
    "PreActBasic",
    "PreActBottleneck",
    "ResNet",
    "ResNet18",
)

Model = Any  # a backend's native block or model
Native = Any  # a backend's native tensor
F = TypeVar("F", bound=Callable[..., Any])


class Hooks:
    """The functions every backend module provides, with what each must do. ``model`` is one of the backend's
    blocks or models; "canonical" means canonical names (``resnet.walk``) and layouts (``resnet.layouts``)."""

    @staticmethod
    def to_native(x: np.ndarray, dtype: str = "float32") -> Native:
        """An NCHW NumPy array as a native tensor of ``dtype``, in the backend's layout (NHWC backends transpose
        4-D arrays; other arrays keep their shape)."""

    @staticmethod
    def to_numpy(y: Native) -> np.ndarray:
        """A native tensor as a NumPy array, 4-D ones in NCHW order (the inverse of ``to_native``)."""

    @staticmethod
    def dtype_of(model: Model) -> str:
        """The precision of the model's weights and computation: ``"float32"`` or ``"float64"``."""

    @staticmethod
    def device_of(model: Model) -> str:
        """Where the model's weights are, as ``"<type>:<index>"``: ``"cpu:0"``, ``"cuda:0"``, ``"gpu:0"``."""

    @staticmethod
    def to_accelerator(model: Model) -> str:
        """Move the model to a GPU when the framework sees one and has to be told (frameworks that place arrays
        by themselves leave it where it is); returns ``device_of(model)``. Inputs follow the model."""

    @staticmethod
    def is_built(model: Model) -> bool:
        """True once every layer knows its input size and has its weights."""

    @staticmethod
    def build(model: Model, input_shape: tuple[int, ...]) -> None:
        """Create the weights of a model's layers for an NCHW input shape, leaving BatchNorm statistics at their
        initial values; a no-op once built."""

    @staticmethod
    def input_channels(model: Model) -> int | None:
        """The number of input channels the model was built for, read from the weight of the first layer it runs
        (``first_layer_channels``); None before it is built, when it takes any (a description may still fix
        them: a family model's ``in_channels``)."""

    @staticmethod
    def apply(model: Model, x: Native, training: bool) -> Native:
        """Run the model on a native batch (building it first if needed). In training mode BatchNorm normalizes
        with the batch statistics and moves its running averages towards them, once, as a training step does
        (with the biased batch variance and ``resnet.specs.BN_MOMENTUM``); in inference mode it uses the running
        averages and changes nothing."""

    @staticmethod
    def part_outputs(model: Model, x: Native) -> list[tuple[str, Native]]:
        """(name, output) of each top-level part of a ResNet (``b1``, the stages, ``last``), in inference mode;
        one entry, named after the class, for a single block."""

    @staticmethod
    def trainable_count(model: Model) -> int:
        """The number of trainable parameters, counted by the framework (BatchNorm statistics excluded)."""

    @staticmethod
    def get_arrays(model: Model) -> dict[str, np.ndarray]:
        """Every weight and BatchNorm statistic as canonical name -> NumPy copy in canonical layout, in the
        model's precision."""

    @staticmethod
    def set_arrays(model: Model, arrays: dict[str, np.ndarray]) -> None:
        """Assign canonical arrays (already checked against ``get_arrays`` by the caller: same names and shapes)
        to the model's tensors, converted to the model's precision, in place: a compiled or hybridized
        model sees the new values."""

    @staticmethod
    def vjp(model: Model, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The training-mode output for an NCHW batch, and the gradients of ``sum(output * output_grad)`` with
        respect to every trainable tensor (canonical name -> canonical layout; zeros for a tensor the output
        does not depend on). BatchNorm updates its running averages once, as in a training step."""

    @staticmethod
    def init_distributed(plan: Plan) -> Plan:
        """Start the framework's own engine for ``plan`` (``resnet.parallel``), before any model is built: join
        the other processes (PyTorch's process group, gloo on a CPU and nccl on GPUs; ``jax.distributed``;
        TensorFlow's MultiWorkerMirroredStrategy from ``TF_CONFIG``; MXNet's 'dist_sync' kvstore) and make sure
        ``plan.devices`` local devices exist (on a CPU, by the framework's own means where it has them: logical
        CPU devices, several CPU contexts), else ValueError saying how many there are and how to get more.
        Returns the plan, with this process's index filled in where only the engine knows it (the rank MXNet's
        kvstore gives). Nothing to do for a plan of one replica; calling it again with the same plan changes
        nothing."""

    @staticmethod
    def launch(plan: Plan, target: Callable[..., Any], args: tuple) -> dict[int, Any] | None:
        """Where the framework gives each local device a process of its own (PyTorch), start ``plan.devices``
        worker processes on this host through the framework's launcher (``torch.distributed``'s elastic launch,
        meeting on 127.0.0.1 at a free port), each running ``target(*args)`` (a module-level function) with the
        launcher's environment, and return each worker's result by its process index once all have ended; a
        worker's failure raises, naming it. None where this process drives its devices itself or is a worker
        already: the caller then runs ``target`` here."""

    @staticmethod
    def replicate(model: Model, plan: Plan) -> Model:
        """The model to train under ``plan``: ``model`` itself, moved where the plan's replicas are, when the
        engine trains it as it is; else a copy made in the engine's scope (TensorFlow's ``strategy.scope()``)
        with the same weights, on which every hook works. ``plan.sync_bn`` chooses the framework's synchronised
        BatchNorm. The weights are the same in every process."""

    @staticmethod
    def make_parallel_train_step(
        model: Model, plan: Plan, lr: float | None = None, mixed_precision: bool = False
    ) -> Callable[..., float | Callable[[], float]]:
        """``make_train_step``'s step, data-parallel under ``plan``, for a model from ``replicate``. Every
        process calls ``step(x, labels, wait=True)`` with the same global NCHW batch; replica ``r`` takes rows
        ``plan.replica_slices(len(x))[r]`` and weights its mean cross-entropy by
        ``plan.loss_weights(len(x))[r]``; the engine averages the replicas' gradients, so one SGD step, the
        same on every replica, follows the gradient of the global batch's mean loss, which the step returns
        (the same in every process). BatchNorm normalizes each replica's rows with their own statistics, or with
        the global batch's when ``plan.sync_bn`` (the framework's synchronised BatchNorm); after the step every
        replica's running averages are the mean over the replicas of what each replica's update gave (with
        ``sync_bn``, the one update of the global batch). ``lr`` and ``mixed_precision`` as in
        ``make_train_step``."""

    @staticmethod
    def agree(plan: Plan, fingerprint: str) -> None:
        """Check through the framework's own collectives that every process of ``plan`` passes the same
        ``fingerprint`` (the run's settings, as text); ValueError otherwise, naming the processes that differ
        from process 0. A no-op in one process."""

    @staticmethod
    def make_train_step(
        model: Model, lr: float | None = None, compile: bool = False, mixed_precision: bool = False
    ) -> Callable[..., float | Callable[[], float]]:
        """A function ``step(x, labels, wait=True)`` taking one plain SGD step (the book's optimizer, learning
        rate ``lr``, or the model's own ``lr`` when None: ``learning_rate_of``) on the mean softmax
        cross-entropy of an NCHW NumPy batch and its integer labels, with BatchNorm in training mode; it returns
        the loss. With ``wait=False`` it returns at once a function that
        waits for the step and gives its loss, so that a loop can prepare the next batch meanwhile.

        ``compile=True`` asks for the framework's optional compiler (``torch.compile``); backends whose step is
        always compiled accept and ignore it. ``mixed_precision=True`` computes in bfloat16 with float32 weights
        and BatchNorm statistics where the backend declares it (``check_mixed_precision``), else ValueError."""

    @staticmethod
    def make_predict(model: Model, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
        """A function returning the model's inference-mode outputs (NumPy, NCHW or (N, classes), in the model's
        precision) for an NCHW NumPy batch, on the framework's fast path; ``mixed_precision`` as in
        ``make_train_step``."""


#: The hooks' names, in the order ``Hooks`` declares them.
HOOKS: tuple[str, ...] = tuple(name for name in vars(Hooks) if not name.startswith("_"))
#: The hooks each backend writes in its ``train`` module, and in its ``parallel`` module; the others are in
#: its ``hooks`` module.
TRAIN_HOOKS: tuple[str, ...] = ("make_train_step", "make_predict")
PARALLEL_HOOKS: tuple[str, ...] = ("init_distributed", "launch", "replicate", "make_parallel_train_step", "agree")
MODEL_HOOKS: tuple[str, ...] = tuple(name for name in HOOKS if name not in TRAIN_HOOKS + PARALLEL_HOOKS)


def _parameters(function: Callable[..., Any]) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def _call_form(name: str, function: Callable[..., Any]) -> str:
    """``name(a, b=1)``: the parameters that the contract fixes, without annotations."""
    shown = [p if default is inspect.Parameter.empty else f"{p}={default!r}" for p, default in _parameters(function)]
    return f"{name}({', '.join(shown)})"


def hook(function: F) -> F:
    """Mark a backend function as the contract's hook of the same name: it takes the contract's docstring (a
    docstring of its own follows it, for what is particular to the framework), and its parameters must have the
    contract's names and defaults (TypeError at import otherwise)."""
    declared_hook = getattr(Hooks, function.__name__, None)
    if declared_hook is None:
        raise TypeError(f"{function.__qualname__} is not a hook of the contract; the hooks are {', '.join(HOOKS)}")
    if _parameters(function) != _parameters(declared_hook):
        raise TypeError(
            f"{function.__module__}.{_call_form(function.__qualname__, function)} does not match the contract's "
            f"{_call_form(function.__name__, declared_hook)} (resnet.contract.Hooks)"
        )
    own = inspect.cleandoc(function.__doc__) if function.__doc__ else ""
    function.__doc__ = inspect.cleandoc(declared_hook.__doc__ or "") + (f"\n\nIn this backend: {own}" if own else "")
    return function


def declared(module_name: str) -> BackendInfo:
    """The declaration (``resnet.registry``) of the backend that the module ``module_name`` belongs to, e.g.
    ``declared(__name__)`` in ``resnet.backends.torch.hooks``."""
    parts = module_name.split(".")
    if parts[:2] != ["resnet", "backends"] or len(parts) < 3 or parts[2] not in REGISTRY:
        raise ValueError(
            f"{module_name!r} is not inside a registered backend package (resnet.backends.<name>, with <name> one "
            f"of {', '.join(REGISTRY)}); register the backend in resnet.registry"
        )
    return REGISTRY[parts[2]]


def export(namespace: dict[str, Any], *modules: ModuleType) -> list[str]:
    """Fill a backend package's namespace: its declaration (``INFO``, ``NAME``, ``LAYOUT``) and every public
    name of ``modules`` (their ``__all__``); returns the names for the package's ``__all__``."""
    info = declared(namespace["__name__"])
    namespace.update(INFO=info, NAME=info.name, LAYOUT=info.layout)
    names: list[str] = []
    for module in modules:
        for name in module.__all__:
            if not hasattr(module, name):
                what = f"the contract's hook {_call_form(name, getattr(Hooks, name))}" if name in HOOKS else name
                raise ImportError(
                    f"{module.__name__} does not define {what}, which its __all__ lists; write it (see "
                    "resnet.contract.Hooks for what each hook must do)"
                )
            namespace[name] = getattr(module, name)
            names.append(name)
    return names


def contract_problems(module: ModuleType) -> list[str]:
    """What ``module`` (a backend package) lacks or gets wrong against the contract, one line each; empty when
    it provides everything: its declaration, the model classes, the family's builders and every hook with the
    contract's parameters."""
    from resnet.specs import FAMILY

    name = getattr(module, "__name__", repr(module))
    problems = []
    info = REGISTRY.get(getattr(module, "NAME", None))  # type: ignore[arg-type]
    if info is None or f"resnet.backends.{info.name}" != name:
        problems.append(f"{name}: NAME is {getattr(module, 'NAME', None)!r}, not its registered name")
    elif getattr(module, "LAYOUT", None) != info.layout:
        problems.append(f"{name}: LAYOUT is {getattr(module, 'LAYOUT', None)!r}, but it is registered as {info.layout}")
    for public in (*CLASSES, *FAMILY):
        if not callable(getattr(module, public, None)):
            problems.append(f"{name}: missing {public}")
    for hook_name in HOOKS:
        function, declared_hook = getattr(module, hook_name, None), getattr(Hooks, hook_name)
        if not callable(function):
            problems.append(f"{name}: missing hook {_call_form(hook_name, declared_hook)}")
        elif _parameters(function) != _parameters(declared_hook):
            problems.append(
                f"{name}: hook {_call_form(hook_name, function)} does not match the contract's "
                f"{_call_form(hook_name, declared_hook)}"
            )
    return problems


def check_mixed_precision(backend: str, dtype: str, mixed_precision: bool) -> str:
    """The model precision ``dtype``, after checking that ``mixed_precision`` (bfloat16 computation, float32
    weights) is a bool that the backend (its registered name) and the model support."""
    if not isinstance(mixed_precision, bool):
        raise TypeError(f"mixed_precision must be True or False, got {mixed_precision!r}")
    if mixed_precision and not REGISTRY[backend].mixed_precision:
        able = " and ".join(name for name, info in REGISTRY.items() if info.mixed_precision)
        raise ValueError(
            f"mixed precision (bfloat16) is available in the {able} backends, not in {backend}, whose build here "
            "is CPU-only; train without it, or select one of those backends"
        )
    if mixed_precision and dtype != "float32":
        raise ValueError(
            f"mixed precision computes in bfloat16 with float32 weights, but this model is {dtype}; build it with "
            "dtype='float32', or train without mixed precision"
        )
    return dtype


def learning_rate_of(model: Any, lr: float | None) -> float:
    """The learning rate a train step uses: ``lr``, or when it is None the model's own ``lr`` (the book's
    ``ResNet(arch, lr=0.1)``); ValueError for a value that is not a positive finite number, or a block, which
    has no ``lr`` of its own, with no ``lr`` given."""
    from resnet.specs import learning_rate

    if lr is None:
        if getattr(model, "lr", None) is None:
            raise ValueError(
                f"{type(model).__name__} has no learning rate of its own (only a ResNet keeps one, as the book's "
                "ResNet(arch, lr=0.1) does); pass lr=..., e.g. make_train_step(model, 0.1)"
            )
        lr = model.lr
    return learning_rate(lr)


def first_layer_channels(spec: BlockSpec | ModelSpec, weight_shape: Sequence[int], layout: str) -> int:
    """The input channels a block or model was built for, from the native shape ``weight_shape`` of its first
    canonical tensor (``resnet.walk.tensors``): the weight of the first layer it runs, which reads its input (a
    ResNet's stem convolution, a block's ``conv1``, a pre-activation block's ``bn1``). A convolution's kernel is
    OIHW in the NCHW ``layout`` and HWIO in NHWC, with ``in_channels // groups`` inputs; BatchNorm's scale has one
    value per channel."""
    first = next(tensors(spec))
    if isinstance(first.layer, ConvSpec):
        return int(weight_shape[1 if layout == "NCHW" else 2]) * first.layer.groups
    return int(weight_shape[0])


def check_batch_norm_batch(input_shape: Sequence[int | None]) -> None:
    """ValueError for BatchNorm in training mode on an empty batch (``input_shape[0]`` 0; None, a batch size not
    known while tracing, passes), which every backend's BatchNorm calls with the same message: the batch
    statistics of no values are NaN, and Flax and Keras would write them into the running averages without a
    word, spoiling the model for good (PyTorch and MXNet stop with errors of their own)."""
    if input_shape[0] == 0:
        raise ValueError(
            f"BatchNorm in training mode got an empty batch (input shape {tuple(input_shape)}): the statistics of no "
            "values are NaN and would make its running averages NaN for good. Pass at least one image per batch "
            "(drop empty batches, such as an empty last one)"
        )
