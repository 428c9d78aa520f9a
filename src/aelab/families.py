"""The model families aelab trains: a family is one module whose model class says how it encodes,
decodes, what it minimises for a batch (``training_loss``) and which per-image term that is
(``objective``). The steps (eager, shard threads, CUDA graph, DDP) and the loop ask the model;
none of them knows which family it is. Adding a family is one module and one entry in
``FAMILIES``; a run folder records its family as ``model.kind`` ("ae" for runs saved before).

No torch here: the configuration checks ``model.kind`` against this registry.
"""

from __future__ import annotations

import importlib
from typing import Any

# kind -> (module, class): the class is built with ``from_config(model_config, loss=train.loss)``
FAMILIES: dict[str, tuple[str, str]] = {
    "ae": ("aelab.model", "ConvAutoencoder"),  # the tutorial's convolutional autoencoder
}


def family(kind: str) -> type:
    """The model class of the family ``kind``."""
    from .errors import AelabError

    if kind not in FAMILIES:
        raise AelabError(f"unknown `model.kind` {kind!r}; choose {' or '.join(FAMILIES)}")
    module, name = FAMILIES[kind]
    return getattr(importlib.import_module(module), name)


def build_model(config: Any, loss: str = "mse") -> Any:
    """A new model of the family and size that ``config`` (a ``ModelConfig``; the config imports this
    registry, not the reverse) says, minimising ``loss`` (``train.loss``)."""
    return family(config.kind).from_config(config, loss=loss)
