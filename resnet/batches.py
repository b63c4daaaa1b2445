"""The pipeline from a data set's uint8 images to a backend's batches, in NumPy: resizing, shuffling, batching
and prefetching.

``Batches`` turns (N, C, H, W) uint8 images into float32 NCHW batches scaled to [0, 1] and resized
bilinearly, shuffled by a NumPy generator seeded with (seed, epoch): the same seed gives the same batches in
every backend, and a resumed run sees the same batches as an uninterrupted one. Each backend's train step
moves a batch into its own layout.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

__all__ = ["Batches", "bilinear_resize", "prefetch"]


def _interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of bilinear interpolation with half-pixel centres and clamped edges, as torchvision's
    and PIL's bilinear resize do when enlarging."""
    scale = in_size / out_size
    centres = np.clip((np.arange(out_size) + 0.5) * scale - 0.5, 0, in_size - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    frac = centres - low
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.arange(out_size), low), 1 - frac)
    np.add.at(matrix, (np.arange(out_size), high), frac)
    return matrix


def bilinear_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, C, H, W) images to (N, C, size, size) bilinearly, as float32 in the input's scale.

    Enlarging (as the chapter does, 28 -> 96) matches torchvision's Resize; shrinking averages only the two
    nearest pixels per axis (no antialiasing).
    """
    n, c, h, w = images.shape
    rows = _interpolation_matrix(h, size).astype(np.float32)
    cols = _interpolation_matrix(w, size).astype(np.float32).T
    # Two batched float32 matrix products (BLAS, without the GIL): rows @ image @ cols^T for every image.
    return np.matmul(np.matmul(rows, images.astype(np.float32, copy=False)), cols)


class Batches:
    """Float32 NCHW batches in [0, 1] of (images, labels), resized to ``resize`` and shuffled per epoch.

    Args:
        images: (N, C, H, W) uint8.
        labels: (N,) integers.
        batch_size: images per batch; the last batch of an epoch may be smaller.
        resize: output height and width (None keeps the size).
        shuffle: reorder each epoch with ``np.random.default_rng((seed, epoch))``.
        seed: the shuffling seed.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        resize: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images must be (N, C, H, W) with one label each; got {images.shape} and {labels.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.batch_size, self.resize, self.shuffle, self.seed = batch_size, resize, shuffle, seed

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    @property
    def num_examples(self) -> int:
        """Images per epoch."""
        return len(self.images)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of one epoch (the order depends only on the seed and the epoch number)."""
        order = (
            np.random.default_rng((self.seed, epoch)).permutation(len(self.images))
            if self.shuffle
            else np.arange(len(self.images))
        )
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images[index].astype(np.float32) / 255.0
            if self.resize is not None and x.shape[2:] != (self.resize, self.resize):
                x = bilinear_resize(x, self.resize)
            yield x, self.labels[index]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.epoch(0)


def prefetch(
    batches: Iterator[tuple[np.ndarray, np.ndarray]], depth: int = 2
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same batches in the same order, made up to ``depth`` ahead in a background thread, so that resizing
    the next batch overlaps the train step (NumPy releases the GIL while it computes, and frameworks while
    their kernels run). An error in the pipeline is raised here, at the batch where it happened."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():  # a bounded wait, so that a consumer that stopped early is noticed
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not put(item):
                    return
            put(done)
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)

    worker = threading.Thread(target=produce, name="resnet-prefetch", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early (an error in the step, a break): let the worker end
        stop.set()
        worker.join()
