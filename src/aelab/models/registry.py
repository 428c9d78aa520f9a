"""The model families: ``model.kind`` -> the class of its model (``aelab.models.base`` says what
such a model gives the rest of aelab). The steps, ``infer``, scores, export and the report ask the
model; none of them knows which family it is. Adding a family is one module and one entry in
``FAMILIES``; a run folder records its family as ``model.kind`` ("ae" for runs saved before).

The registry itself, ``FAMILIES``, is data in ``aelab.config`` (which checks ``model.kind`` against
it); this module builds from it.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config import FAMILIES
from ..errors import AelabError


def family(kind: str) -> type:
    """The model class of the family ``kind``."""
    if kind not in FAMILIES:
        raise AelabError(f"unknown `model.kind` {kind!r}; choose {' or '.join(FAMILIES)}")
    module, name = FAMILIES[kind][:2]
    return getattr(importlib.import_module(module), name)


def build_model(config: Any, loss: str = "mse") -> Any:
    """A new model of the family and size that ``config`` (a ``ModelConfig``) says, minimising
    ``loss`` (``train.loss``)."""
    model = family(config.kind).from_config(config, loss=loss)
    terms = tuple(getattr(model, "terms", ()))
    if "mse" not in terms or getattr(model, "objective", None) not in terms:
        raise AelabError(f"the `model.kind` {config.kind!r} model reports the terms {terms} with the objective "
                         f"{getattr(model, 'objective', None)!r}; a family reports `mse` and its objective among its "
                         "terms (aelab.models.base)")
    return model
