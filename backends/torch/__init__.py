"""The PyTorch backend: the chapter's models as ``nn.Module``s (NCHW) and the hooks of ``resnet.contract``."""

from __future__ import annotations

from resnet.backends.torch import blocks, hooks, models, parallel, train

from resnet.contract import export

__all__ = export(globals(), blocks, models, hooks, train, parallel)
