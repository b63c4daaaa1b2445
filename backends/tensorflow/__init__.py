"""The TensorFlow backend: the chapter's models as Keras 3 layers and models (NHWC) and the hooks of
``resnet.contract``."""

from __future__ import annotations

from resnet.backends.tensorflow import blocks, hooks, models, parallel, train

from resnet.contract import export

__all__ = export(globals(), blocks, models, hooks, train, parallel)
