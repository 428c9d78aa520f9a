"""The model families aelab trains: a family is one module whose model class says how it encodes,
decodes, what it minimises for a batch (``training_loss``) and which per-image term that is
(``objective``). The steps (eager, shard threads, CUDA graph, DDP) and the loop ask the model;
none of them knows which family it is. Adding a family is one module and one entry in
``FAMILIES``; a run folder records its family as ``model.kind`` ("ae" for runs saved before).

The registry itself, ``FAMILIES``, is data in ``aelab.config`` (which checks ``model.kind`` against
it); this module builds from it. For now a family's ``objective`` names one of ``infer``'s per-image
terms ("mse" or "bce"): the loop picks its validation loss by it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import FAMILIES, LOSSES
from .errors import AelabError


def family(kind: str) -> type:
    """The model class of the family ``kind``."""
    if kind not in FAMILIES:
        raise AelabError(f"unknown `model.kind` {kind!r}; choose {' or '.join(FAMILIES)}")
    module, name = FAMILIES[kind]
    return getattr(importlib.import_module(module), name)


def build_model(config: Any, loss: str = "mse") -> Any:
    """A new model of the family and size that ``config`` (a ``ModelConfig``) says, minimising
    ``loss`` (``train.loss``)."""
    model = family(config.kind).from_config(config, loss=loss)
    if getattr(model, "objective", None) not in LOSSES:
        raise AelabError(f"the `model.kind` {config.kind!r} model names its objective {getattr(model, 'objective', None)!r}; "
                         f"a family's objective is one of {', '.join(LOSSES)} (a per-image term of aelab.infer)")
    return model
