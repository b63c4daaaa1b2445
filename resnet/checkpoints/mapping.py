"""The generic machinery of checkpoint conversion: a source's tensor names and layouts as data, checked both ways.

A source format (torchvision, timm, transformers, Keras Hub) is a ``SourceFormat``: a table of ``Rule`` rows
that give each canonical tensor of a model (``resnet.walk.tensors``) its name in the source and the layout
conversion between them (``TRANSFORMS``), the source names to ignore (``num_batches_tracked``), and how to read
and write its files. ``to_canonical`` and ``from_canonical`` apply a table in either direction; every
conversion is a pure transpose or reshape, so a round trip is bit-identical.

A checkpoint that does not fit the model asked for raises ``CheckpointMismatchError`` listing the unknown,
missing and misshapen tensors, and saying which model of the family it does fit ("looks like resnet101"), or
what its stages are when none does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resnet.checkpoints.architectures import ARCHITECTURES, architecture_spec, parse_spec
from resnet.shapes import tensor_infos
from resnet.specs import ModelSpec
from resnet.walk import tensors

__all__ = [
    "ARCHITECTURES",
    "FORMATS",
    "TRANSFORMS",
    "CheckpointMismatchError",
    "Rule",
    "SourceFormat",
    "Transform",
    "architecture_spec",
    "checkpoint_sizes",
    "expected_source",
    "fields",
    "from_canonical",
    "get_format",
    "guess_architecture",
    "parse_spec",
    "register",
    "source_names",
    "to_canonical",
]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model asked for, or a format cannot hold that model; the message lists
    the unknown, missing and misshapen tensors and says which model the checkpoint looks like."""


# ------------------------------------------------------------------------------------------- the transforms


@dataclass(frozen=True)
class Transform:
    """A layout conversion: ``to_canonical`` on import, its exact inverse ``from_canonical`` on export."""

    to_canonical: Callable[[np.ndarray], np.ndarray]
    from_canonical: Callable[[np.ndarray], np.ndarray]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _squeeze_1x1(a: np.ndarray) -> np.ndarray:
    # a 1x1 convolution used as the dense layer (timm's ResNetV2 head): (O, I, 1, 1) -> (O, I)
    if a.ndim != 4 or a.shape[2:] != (1, 1):
        raise ValueError(f"expected an (O, I, 1, 1) kernel of a 1x1 convolution, got shape {a.shape}")
    return a.reshape(a.shape[:2])


#: Name -> layout conversion. Canonical layouts: OIHW kernels (grouped: (O, I/groups, H, W)), (out, in) dense.
TRANSFORMS: dict[str, Transform] = {
    "identity": Transform(_identity, _identity),
    "hwio->oihw": Transform(lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),  # Keras conv
    "io->oi": Transform(lambda a: a.T, lambda a: a.T),  # Keras dense
    "oi11->oi": Transform(_squeeze_1x1, lambda a: a.reshape((*a.shape, 1, 1))),
}


# ------------------------------------------------------------------------------------------------ the tables


@dataclass(frozen=True)
class Rule:
    """One row of a source's table: canonical names matching the regex ``canonical`` (whole name) are called
    ``source`` in the checkpoint, converted by ``TRANSFORMS[transform]``.

    ``source`` is a ``str.format`` template filled with the regex's named groups and the fields ``fields``
    derives from them (``stage0``/``stage1``: the stage ``b2``... counted from 0/1; ``conv0``: a layer number
    counted from 0), or a ``rename(match) -> str`` where a template is not enough. ``kinds`` renames the
    ``kind`` group (e.g. ``{"weight": "gamma"}`` for Keras' BatchNorm), kinds not in it keep their name.
    """

    canonical: str
    source: str | Callable[[re.Match[str]], str]
    transform: str = "identity"
    kinds: Mapping[str, str] | None = None

    def source_name(self, match: re.Match[str]) -> str:
        """The source name of the canonical name ``match`` matched."""
        if callable(self.source):
            return self.source(match)
        values = fields(match)
        if self.kinds is not None and "kind" in values:
            values["kind"] = self.kinds.get(values["kind"], values["kind"])
        return self.source.format(**values)


def fields(match: re.Match[str]) -> dict[str, Any]:
    """A match's named groups, with the index arithmetic the tables need: ``stage`` (the number in ``b2``...)
    gives ``stage0`` (0 for ``b2``) and ``stage1`` (1 for ``b2``, torchvision's ``layer1``); ``conv`` (the
    number in ``conv1``/``bn1``...) gives ``conv0`` (transformers' ``layer.0``)."""
    values: dict[str, Any] = dict(match.groupdict())
    if values.get("stage") is not None:
        values["stage0"], values["stage1"] = int(values["stage"]) - 2, int(values["stage"]) - 1
    if values.get("conv") is not None:
        values["conv0"] = int(values["conv"]) - 1
    return values


@dataclass(frozen=True)
class SourceFormat:
    """A published checkpoint format.

    Attributes:
        name: the format's name (``"torchvision"``, ``"timm"``, ``"transformers"``, ``"keras-hub"``).
        rules: the table, or ``rules(spec)`` -> the table for a model (timm names ResNet and ResNetV2 apart).
        read: ``read(path) -> (arrays, meta)``: the checkpoint's tensors by source name, and what else the
            files say (e.g. ``meta["config"]``, a parsed config.json).
        write: ``write(arrays, spec, path)``: write source-named arrays for export, or None (import only).
        ignored: regexes (whole name) of source tensors that hold nothing a model needs (BatchNorm's
            ``num_batches_tracked``).
        check: ``check(spec)`` raises CheckpointMismatchError when the format cannot hold that architecture.
        options_from: ``options_from(meta)`` -> options the files state, e.g. ``{"stride_in_1x1": True}``.
        spec_from: ``spec_from(meta, arrays, stride_in_1x1)`` -> the model the files describe (transformers'
            config.json), or None where they do not say.
        describe: ``describe(arrays)`` -> the checkpoint's stages in words (for a checkpoint fitting no model).
        hints: (regex over missing source names, what it means) pairs added to a mismatch message.
        export_counter: the name of BatchNorm's step counter written (0) beside each BatchNorm on export, as
            PyTorch's modules hold one; None for none.
    """

    name: str
    rules: Sequence[Rule] | Callable[[ModelSpec], Sequence[Rule]]
    read: Callable[[str | os.PathLike], tuple[dict[str, np.ndarray], dict[str, Any]]]
    write: Callable[[dict[str, np.ndarray], ModelSpec, str | os.PathLike], None] | None = None
    ignored: tuple[str, ...] = ()
    check: Callable[[ModelSpec], None] = lambda spec: None
    options_from: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda meta: {}
    spec_from: Callable[[Mapping[str, Any], Mapping[str, np.ndarray], bool], ModelSpec | None] | None = None
    describe: Callable[[Mapping[str, np.ndarray]], str | None] = lambda arrays: None
    hints: tuple[tuple[str, str], ...] = ()
    export_counter: str | None = None

    def table(self, spec: ModelSpec) -> Sequence[Rule]:
        """The rules for ``spec``."""
        return self.rules(spec) if callable(self.rules) else self.rules

    def is_ignored(self, name: str) -> bool:
        """True for a source tensor that holds nothing a model needs."""
        return any(re.fullmatch(pattern, name) for pattern in self.ignored)


#: The registered formats by name, filled by the per-source modules.
FORMATS: dict[str, SourceFormat] = {}


def register(fmt: SourceFormat) -> SourceFormat:
    """Add a format to ``FORMATS`` (under its name) and return it."""
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str | SourceFormat) -> SourceFormat:
    """The format named ``name``; ValueError listing the known ones."""
    if isinstance(name, SourceFormat):
        return name
    from resnet import checkpoints  # noqa: F401  (the per-source modules register themselves on import)

    if name not in FORMATS:
        raise ValueError(f"unknown checkpoint format {name!r}; known formats: {', '.join(FORMATS)}")
    return FORMATS[name]


# ------------------------------------------------------------------------------------------------ the mapping


def source_names(fmt: SourceFormat, spec: ModelSpec) -> dict[str, tuple[str, str]]:
    """Canonical name -> (source name, transform name) for every tensor of ``spec``, by the first rule
    that matches; CheckpointMismatchError when the format cannot hold the model."""
    fmt.check(spec)
    compiled = [(re.compile(rule.canonical), rule) for rule in fmt.table(spec)]
    names = {}
    for tensor in tensors(spec):
        for pattern, rule in compiled:
            match = pattern.fullmatch(tensor.name)
            if match:
                names[tensor.name] = (rule.source_name(match), rule.transform)
                break
        else:
            raise CheckpointMismatchError(f"the {fmt.name} format has no name for {tensor.name}: it cannot hold {spec}")
    return names


def expected_source(fmt: SourceFormat, spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Source name -> the shape the source holds for ``spec``'s tensors."""
    infos = tensor_infos(spec, (1, spec.stem.in_channels or 3, 32, 32))
    shapes = {}
    for canonical, (name, transform) in source_names(fmt, spec).items():
        # the inverse transform of an empty array of the canonical shape gives the source's shape
        shapes[name] = TRANSFORMS[transform].from_canonical(np.empty(infos[canonical].shape, np.uint8)).shape
    return shapes


def _mismatches(fmt: SourceFormat, spec: ModelSpec, arrays: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
    """The unknown, missing and misshapen source tensors of ``arrays`` for ``spec`` (empty lists: it fits)."""
    expected = expected_source(fmt, spec)
    present = {name: value for name, value in arrays.items() if not fmt.is_ignored(name)}
    return {
        "unknown": [name for name in present if name not in expected],
        "missing": [name for name in expected if name not in present],
        "misshapen": [
            f"{name}: checkpoint {tuple(np.shape(present[name]))}, model {shape}"
            for name, shape in expected.items()
            if name in present and tuple(np.shape(present[name])) != shape
        ],
    }


def _listed(names: list[str], limit: int = 10) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def checkpoint_sizes(fmt: SourceFormat, name: str, arrays: Mapping[str, np.ndarray], **options: Any) -> dict[str, int]:
    """num_classes and in_channels of architecture ``name`` as the checkpoint's head and stem kernels give
    them (where it has them under this format's names), for the model to be compared with it."""
    names = source_names(fmt, architecture_spec(name, **options))
    sizes = {}

    def canonical_shape(name: str, ndim: Sequence[int]) -> tuple[int, ...] | None:
        """The canonical shape of tensor ``name`` as the checkpoint holds it (Keras' dense kernels are (in, out),
        its convolution kernels HWIO), found by converting an empty array of its shape; None if absent."""
        source, transform = names[name]
        found = arrays.get(source)
        if found is None or np.ndim(found) not in ndim:
            return None
        return TRANSFORMS[transform].to_canonical(np.empty(np.shape(found), np.uint8)).shape

    head, stem = canonical_shape("last.fc.weight", (2, 4)), canonical_shape("b1.conv.weight", (4,))
    if head is not None:
        sizes["num_classes"] = int(head[0])
    if stem is not None:
        sizes["in_channels"] = int(stem[1])
    return sizes


def guess_architecture(fmt: SourceFormat, arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The architectures (``ARCHITECTURES``) whose every tensor the checkpoint holds under ``fmt``'s names, with
    the right shapes, and nothing more. The stride placement changes no name or shape, so it is not tried."""
    fits = []
    for name in ARCHITECTURES:
        try:
            spec = architecture_spec(name, **checkpoint_sizes(fmt, name, arrays))
            if not any(_mismatches(fmt, spec, arrays).values()):
                fits.append(name)
        except ValueError:  # the format cannot hold this architecture, or the sizes are not valid
            continue
    return fits


def to_canonical(
    arrays: Mapping[str, np.ndarray], fmt: SourceFormat | str, spec: ModelSpec, source: str = "the checkpoint"
) -> dict[str, np.ndarray]:
    """The checkpoint's ``arrays`` (source names) as ``spec``'s canonical tensors, float32 (float64 where the
    source is), in canonical layouts.

    CheckpointMismatchError unless the checkpoint holds exactly the model's tensors (besides ``fmt.ignored``
    ones) with the right shapes: it lists what is unknown, missing and misshapen, and names the architectures
    the checkpoint fits instead, or describes its stages. ``source`` names the checkpoint in messages.
    """
    fmt = get_format(fmt)
    problems = _mismatches(fmt, spec, arrays)
    if any(problems.values()):
        lines = [f"{source} does not fit this model as a {fmt.name} checkpoint:"]
        for title, names in problems.items():
            if names:
                lines.append(f"  {title} ({len(names)}): {_listed(names)}")
        for pattern, hint in fmt.hints:
            if any(re.fullmatch(pattern, name) for name in problems["missing"]):
                lines.append(f"  {hint}")
        fits = guess_architecture(fmt, arrays)
        if fits:
            sizes = checkpoint_sizes(fmt, fits[0], arrays)
            lines.append(
                f"This checkpoint looks like {' or '.join(fits)} ({sizes.get('num_classes', '?')} classes, "
                f"{sizes.get('in_channels', '?')} input channels): convert it with --model {fits[0]}."
            )
        else:
            described = fmt.describe(arrays)
            lines.append(
                f"It fits none of {', '.join(ARCHITECTURES)}"
                + (f"; it has {described}." if described else ".")
                + f" Check the format (--from {fmt.name}) and the model."
            )
        raise CheckpointMismatchError("\n".join(lines))
    out = {}
    bad = []
    for canonical, (name, transform) in source_names(fmt, spec).items():
        value = np.asarray(arrays[name])
        if value.dtype == np.float16:  # exact in float32
            value = value.astype(np.float32)
        if value.dtype not in (np.float32, np.float64):
            bad.append(f"{name}: {value.dtype}")
            continue
        out[canonical] = np.ascontiguousarray(TRANSFORMS[transform].to_canonical(value))
    if bad:
        raise CheckpointMismatchError(
            f"{source} holds tensors that are not floating point ({_listed(bad)}); a model's weights are "
            "float16, float32 or float64"
        )
    return out


def from_canonical(arrays: Mapping[str, np.ndarray], fmt: SourceFormat | str, spec: ModelSpec) -> dict[str, np.ndarray]:
    """``spec``'s canonical ``arrays`` under ``fmt``'s names and layouts (the exact inverse of
    ``to_canonical``), with BatchNorm step counters (``fmt.export_counter``) of 0 where the format has them."""
    fmt = get_format(fmt)
    names = source_names(fmt, spec)
    missing = [name for name in names if name not in arrays]
    unknown = [name for name in arrays if name not in names]
    if missing or unknown:
        raise CheckpointMismatchError(
            f"the weights do not fit the model they are exported as: missing ({len(missing)}): {_listed(missing)}; "
            f"unknown ({len(unknown)}): {_listed(unknown)}"
        )
    out = {}
    for canonical, (name, transform) in names.items():
        out[name] = np.ascontiguousarray(TRANSFORMS[transform].from_canonical(np.asarray(arrays[canonical])))
        if fmt.export_counter and name.endswith(".running_var"):
            out[name[: -len("running_var")] + fmt.export_counter] = np.zeros((), np.int64)
    return out
