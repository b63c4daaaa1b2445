"""The data sets every backend trains on, in NumPy: Fashion-MNIST (downloaded once and verified), the bundled
digits, and random stand-ins.

Data sets are uint8 images of shape (N, 1, H, W) with integer labels. ``resnet.batches`` turns them into the
shuffled, resized float32 batches the train steps take (``Batches``, ``bilinear_resize`` and ``prefetch`` are
importable from here too, where the first release had them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from resnet.batches import Batches, bilinear_resize, prefetch
from resnet.digits import bundled_digits
from resnet.download import Attempt, DownloadError, corruption, download, remove_stale_temporaries, verified
from resnet.idx import read_idx

__all__ = [
    "DATASETS",
    "Batches",
    "Dataset",
    "bilinear_resize",
    "default_data_dir",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "prefetch",
    "random_like_fashion_mnist",
]

#: Where Fashion-MNIST is published, tried in order (RESNET_FASHION_MNIST_URL, if set, comes first).
FASHION_MNIST_URLS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]
#: The project's page, for people fetching the files by hand.
FASHION_MNIST_HOME = "https://github.com/zalandoresearch/fashion-mnist"
#: The four files and their published MD5 checksums.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


@dataclass(frozen=True)
class Dataset:
    """Train and validation images (N, 1, H, W) uint8 with int64 labels, and where they came from.

    ``note`` is a one-line warning about the set (empty for Fashion-MNIST itself); ``details`` are the lines
    that explain it, e.g. why Fashion-MNIST could not be had: one line per file, then what to do.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    classes: tuple[str, ...]
    note: str = ""
    details: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def first(self, train: int | None = None, val: int | None = None) -> Dataset:
        """The set with only its first ``train`` training and ``val`` validation examples (None: all of them;
        more than there are: all of them)."""
        return replace(
            self,
            train_images=self.train_images[:train],
            train_labels=self.train_labels[:train],
            val_images=self.val_images[:val],
            val_labels=self.val_labels[:val],
        )


def default_data_dir() -> Path:
    """``RESNET_DATA`` if set, else the user cache directory (``$XDG_CACHE_HOME`` or ~/.cache)/resnet."""
    if os.environ.get("RESNET_DATA"):
        return Path(os.environ["RESNET_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet"


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download_missing: bool = True) -> Dataset:
    """Fashion-MNIST from ``data_dir/fashion-mnist`` (the four IDX .gz files), downloading what is missing
    or corrupt and verifying every file against its published MD5 checksum.

    When a file cannot be had, DownloadError says why in one line per file (each URL tried and its error),
    naming the four files and the directory to put them in. A host that did not answer at all is not asked
    again for the other files (offline, that would only multiply the wait by four). A cached file with the
    wrong MD5 (corrupt, cut short) is never read: it is replaced by a verified download, atomically, or else
    named in the error (its MD5 against the published one, its size) and left as it was; its path is in the
    error's ``corrupt``. Only verified files reach the gzip and IDX parsing.
    """
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    directory = directory / "fashion-mnist"
    urls = [os.environ["RESNET_FASHION_MNIST_URL"]] if os.environ.get("RESNET_FASHION_MNIST_URL") else []
    urls += FASHION_MNIST_URLS
    paths, problems, corrupt = _fetch_files(directory, urls, download_missing)
    if problems:
        raise DownloadError(
            f"could not get Fashion-MNIST into {directory}:",
            [*problems, _advice(directory, corrupt)],
            corrupt=[str(directory / name) for name in corrupt],
        )
    images = {split: read_idx(paths[f"{split}-images-idx3-ubyte.gz"], 3) for split in ("train", "t10k")}
    labels = {split: read_idx(paths[f"{split}-labels-idx1-ubyte.gz"], 1) for split in ("train", "t10k")}
    for split in ("train", "t10k"):
        if len(images[split]) != len(labels[split]):
            raise ValueError(
                f"{paths[f'{split}-images-idx3-ubyte.gz']} has {len(images[split])} images but "
                f"{paths[f'{split}-labels-idx1-ubyte.gz']} has {len(labels[split])} labels; delete both and "
                "download them again"
            )
    return Dataset(
        "fashion-mnist",
        images["train"][:, None],
        labels["train"].astype(np.int64),
        images["t10k"][:, None],
        labels["t10k"].astype(np.int64),
        FASHION_MNIST_CLASSES,
    )


def _fetch_files(
    directory: Path, urls: list[str], download_missing: bool
) -> tuple[dict[str, Path], list[str], list[str]]:
    """The four files' paths, downloading what is missing or corrupt; one line per file that could not be had;
    and the names of the cached files that were corrupt and could not be replaced (left as they were)."""
    paths: dict[str, Path] = {}
    problems: list[str] = []
    corrupt: list[str] = []
    silent: dict[str, Attempt] = {}  # base URL -> its first failure with no answer at all
    remove_stale_temporaries(directory, list(FASHION_MNIST_FILES))  # what killed downloads left behind
    for name, md5 in FASHION_MNIST_FILES.items():
        if verified(directory / name, md5):
            paths[name] = directory / name
            continue
        found = corruption(directory / name, md5)  # a corrupt or cut-short cached file: never read
        if not download_missing:
            reason = "downloading was not allowed" if found else f"not in {directory}, and downloading was not allowed"
        else:
            asked = [base for base in urls if base not in silent]
            try:
                paths[name] = download(name, md5, directory, asked)  # replaces a corrupt file atomically
                continue
            except DownloadError as error:
                tried = {attempt.base: attempt.line() for attempt in error.attempts}
                failures = [
                    tried[base]
                    if base in tried
                    else f"{base.rstrip('/')}/{name} not tried (no answer for {Path(silent[base].url).name}: "
                    f"{silent[base].error})"
                    for base in urls
                    if base in tried or base in silent
                ]
                reason = "; ".join(failures or ["no location to download it from"])
                for attempt in error.attempts:
                    if attempt.unreachable:
                        silent.setdefault(attempt.base, attempt)
        if found:
            corrupt.append(name)
            reason = f"the cached file is corrupt ({found}) and was not used; {reason}"
        problems.append(f"{name}: {reason}")
    return paths, problems, corrupt


def _advice(directory: Path, corrupt: Sequence[str] = ()) -> str:
    """What to do when Fashion-MNIST cannot be had: replace the corrupt files, or put the four files into the
    directory, or choose the offline set."""
    names = list(FASHION_MNIST_FILES)
    put = (
        f"the four files {_and(names)} (from {FASHION_MNIST_HOME}) into {directory}, or choose another --data-dir "
        "(RESNET_DATA) whose fashion-mnist/ holds them; or train on the offline set (--dataset digits)."
    )
    if not corrupt:
        return f"Put {put}"
    one = len(corrupt) == 1
    return (
        f"Delete the corrupt {_and(list(corrupt))} from {directory} (a run with a network then downloads "
        f"{'it' if one else 'them'} again) or copy the right {'file' if one else 'files'} over "
        f"{'it' if one else 'them'}; or put {put}"
    )


def _and(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def load_digits(val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The handwritten digits that ship inside scikit-learn (1,797 real 8x8 images, 10 classes), for
    machines with no network: scaled from 0..16 to 0..255 uint8 and split with a seeded permutation."""
    pixels, labels = bundled_digits()
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(round(len(images) * (1 - val_fraction)))
    train, val = order[:split], order[split:]
    return Dataset(
        "digits",
        images[train],
        labels[train],
        images[val],
        labels[val],
        tuple(str(d) for d in range(10)),
        note="offline set: scikit-learn's 8x8 handwritten digits, not Fashion-MNIST",
    )


#: Dataset names accepted by ``load_dataset`` and ``resnet train --dataset``.
DATASETS = ("auto", "fashion-mnist", "digits")


def load_dataset(name: str = "auto", data_dir: str | os.PathLike | None = None) -> Dataset:
    """``fashion-mnist`` (cached or downloaded; errors if neither works), ``digits`` (offline), or ``auto``:
    Fashion-MNIST when it can be had, else the digits with a loud note saying so."""
    key = name.strip().lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}")
    if key == "digits":
        return load_digits()
    try:
        return load_fashion_mnist(data_dir)
    except DownloadError as error:
        if key == "fashion-mnist":
            raise
        fallback = load_digits()
        corrupt = getattr(error, "corrupt", ())
        why = (
            f"Fashion-MNIST's cached {_and([Path(path).name for path in corrupt])} "
            f"{'is' if len(corrupt) == 1 else 'are'} corrupt (not used) and could not be downloaded again"
            if corrupt
            else "Fashion-MNIST is neither cached nor downloadable here"
        )
        note = f"WARNING: {why}, so this run uses the OFFLINE set (scikit-learn's 8x8 handwritten digits) instead."
        details = getattr(error, "details", ()) or (str(error),)
        return Dataset(**{**fallback.__dict__, "note": note, "details": tuple(details)})


def random_like_fashion_mnist(train_examples: int | None = None, seed: int = 0) -> Dataset:
    """Random uint8 images and labels of Fashion-MNIST's sizes (60,000 train and 10,000 validation 1x28x28
    images, or ``train_examples`` and a sixth of that), for timing the recipe where the real set cannot be had:
    a step takes as long on any pixels, but the accuracy on these means nothing."""
    train = 60_000 if train_examples is None else train_examples
    val = 10_000 if train_examples is None else max(1, train_examples // 6)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (train + val, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, train + val).astype(np.int64)
    return Dataset(
        "random-28x28",
        images[:train],
        labels[:train],
        images[train:],
        labels[train:],
        FASHION_MNIST_CLASSES,
        note="random images of Fashion-MNIST's size, for timing only: the accuracy means nothing",
    )
