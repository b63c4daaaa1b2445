"""The JAX/Flax backend: the chapter's models as Flax ``linen`` Modules (NHWC) and the hooks of
``resnet.contract``.

Flax Modules hold no weights: ``init`` returns them and ``apply`` takes them. This backend keeps them in a
registry beside each model object (``hooks``): ``variables(model)`` returns ``{'params': ..., 'batch_stats':
...}`` for ``model.apply``, and ``set_variables(model, variables)`` puts variables obtained with
``init``/``apply`` back.
"""

from __future__ import annotations

from resnet.backends.jax import blocks, hooks, models, parallel, train

from resnet.contract import export

__all__ = export(globals(), blocks, models, hooks, train, parallel)
