"""The chapter's training recipe as settings (``TrainConfig``, checked when made), the input sizes a model
takes, and the ``History`` a run returns. Framework-free; ``resnet.training.fit`` runs the recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resnet.specs import learning_rate

__all__ = ["MAX_RESIZE", "History", "TrainConfig", "check_input_size"]


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: the book's defaults are 10 epochs, batch 128, SGD, 96x96 images.

    ``lr`` is the SGD learning rate; None (the default) means the model's own ``model.lr``, as the book's
    trainer takes it from the model: the chapter's recipe is ``fit(ResNet18(lr=0.01), data)``.
    ``max_train_examples`` and ``max_val_examples`` train and validate on the first that many examples of the
    data set (None, the default: all of them), as transformers' example scripts' ``--max_train_samples``: a
    quick try of a setting, or a test's short run.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    resize: int | None = 96
    seed: int = 0
    max_train_examples: int | None = None
    max_val_examples: int | None = None

    def __post_init__(self) -> None:
        for name, example in (("epochs", "the book's 10"), ("batch_size", "the book's 128")):
            value = getattr(self, name)
            if not _integer_in(value, 1):
                raise ValueError(f"{name} must be a positive integer ({example}), got {value!r}")
        if self.lr is not None:
            learning_rate(self.lr)  # a positive, finite number, or ValueError saying so
        if self.resize is not None and not _integer_in(self.resize, 1, MAX_RESIZE):
            raise ValueError(
                f"resize must be an image size in pixels from 1 to {MAX_RESIZE} (the book's 96; ImageNet models "
                f"take 224), or None for the images' own size; got {self.resize!r}"
            )
        if not _integer_in(self.seed, 0, 2**32 - 1):
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1 (NumPy's seeds), got {self.seed!r}")
        for name in ("max_train_examples", "max_val_examples"):
            value = getattr(self, name)
            if value is not None and not _integer_in(value, 1):
                raise ValueError(f"{name} must be a positive integer, or None for the whole data set; got {value!r}")


def _integer_in(value: Any, low: int, high: float = float("inf")) -> bool:
    """Whether ``value`` is an int (a bool is not) from ``low`` to ``high``, both included."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


#: The largest ``resize`` accepted: a batch of 128 one-channel images at this size is 2 GiB in float32
#: before the first convolution multiplies it, so anything above is a typo rather than a plan.
MAX_RESIZE = 2048


def check_input_size(spec: Any, channels: int, size: int) -> None:
    """ValueError when ``size`` x ``size`` images are too small for the model (a feature map would vanish),
    naming the smallest size it takes."""
    from resnet.shapes import smallest_input_size

    smallest = smallest_input_size(spec, channels)
    if size < smallest:
        raise ValueError(
            f"{size}x{size} images are too small for this model: its layers need at least "
            f"{smallest}x{smallest}. Choose a larger --resize (resize=), e.g. the book's 96"
        )


@dataclass
class History:
    """Per-epoch metrics (``rows``) and the loss of every training step (``step_losses``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    dataset: str = ""
    note: str = ""

    def column(self, name: str) -> list[Any]:
        """One metric over the epochs, e.g. ``history.column("val_acc")``."""
        return [row[name] for row in self.rows]
