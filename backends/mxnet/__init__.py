"""The MXNet backend: the chapter's models as Gluon ``HybridBlock``s (NCHW) and the hooks of ``resnet.contract``."""

from __future__ import annotations

from resnet.backends.mxnet import blocks, hooks, models, parallel, train

from resnet.contract import export

__all__ = export(globals(), blocks, models, hooks, train, parallel)
