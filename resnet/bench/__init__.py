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
  plain way with the framework's stock layers (``backends/<name>/stock.py``), trained by a stock step on
  the framework's usual fast path: torch eager + ``torch.optim.SGD``; a ``tf.function`` step with
  ``keras.optimizers.SGD``; a jitted step with ``optax.sgd``; a hybridized Gluon net with ``gluon.Trainer``.
  Both sides are fed the *same NumPy NCHW batches* and convert them the same plain way inside the timed
  region (transposing to NHWC for TensorFlow and JAX), and both return the loss as a Python float (or the
  logits as NumPy), which also waits for the step to finish: the end-to-end cost of one step as a training
  loop sees it.
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
* ``data_pipeline``: ``resnet.batches.Batches`` turning uint8 28x28 images into shuffled float32 batches of
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

The package, framework-free (each backend's stock-layer reference is in that backend's package, the module
``stock`` with a class ``StockKit``; ``resnet.bench.kit`` says what it provides):

============  ==================================================================================================
``settings``  what is measured (``MEASUREMENTS``, ``REFERENCES``, ``UNITS``) and the ``Settings``
``harness``   the timing: ``Side``, ``measure``, ``measure_imports``
``kit``       what the harness asks of a backend's ``StockKit`` (``Kit``), and ``load_kit``
``machine``   ``machine_info``, and the CPU that other processes used (``cpu_seconds``, ``other_cpu_load``)
``rows``      one function per measurement, and ``run_benchmark``
``output``    the printed table (``format_table``) and ``was_busy``
``cli``       ``resnet bench`` and ``python -m resnet.bench``
``report``    ``python -m resnet.bench.report``: the JSON files of several backends as the README's markdown
============  ==================================================================================================
"""

from __future__ import annotations

from resnet.bench.cli import add_arguments, main, run, settings_from
from resnet.bench.harness import Side, measure, measure_imports
from resnet.bench.kit import Kit, load_kit
from resnet.bench.machine import cpu_seconds, machine_info, other_cpu_load
from resnet.bench.output import format_stats, format_table, was_busy
from resnet.bench.rows import run_benchmark, selected
from resnet.bench.settings import COMPILED, MEASUREMENTS, REFERENCES, RESNEXT_GROUPS, SCHEMA, UNITS, Settings

# ``report`` is not imported here: ``python -m resnet.bench.report`` runs it as __main__, which must find it
# not yet imported.
__all__ = [
    "COMPILED",
    "MEASUREMENTS",
    "REFERENCES",
    "RESNEXT_GROUPS",
    "SCHEMA",
    "UNITS",
    "Kit",
    "Settings",
    "Side",
    "add_arguments",
    "cpu_seconds",
    "format_stats",
    "format_table",
    "load_kit",
    "machine_info",
    "main",
    "measure",
    "measure_imports",
    "other_cpu_load",
    "run",
    "run_benchmark",
    "selected",
    "settings_from",
    "was_busy",
]
