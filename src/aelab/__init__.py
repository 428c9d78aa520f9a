"""aelab: train, evaluate and explore convolutional autoencoders on images.

The public API is imported lazily, so ``aelab --help`` starts without loading PyTorch::

    from aelab import RunConfig, train, load_run
    result = train(RunConfig(), out="runs/mnist-d4")
    run = load_run("runs/mnist-d4")
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# the library never prints: its messages go to the logger "aelab", shown where a program asks for them (the command
# line does); without this, Python's last resort would print its warnings to stderr
logging.getLogger("aelab").addHandler(logging.NullHandler())

_EXPORTS = {
    "AelabError": "errors",
    "DataConfig": "config", "ModelConfig": "config", "TrainConfig": "config", "RunConfig": "config",
    "RECIPES": "config", "train_config_for": "config", "model_config_for": "config",
    "Encoder": "models.nets", "Decoder": "models.nets", "ConvAutoencoder": "models.ae",
    "ImageSet": "data.sets", "load_split": "data.sets", "load_splits": "data.sets",
    "fetch": "data.sources",
    "train": "training", "Trainer": "training", "TrainResult": "training", "TrainingInterrupted": "training",
    "NumericalFault": "training",
    "Callback": "callbacks", "ProgressBar": "callbacks", "Console": "callbacks", "TensorBoard": "callbacks",
    "MLflow": "callbacks",
    "load_run": "run", "Run": "run",
    "infer": "inference", "Inference": "inference",
    "evaluate": "evaluation", "reconstruction_loss": "evaluation", "Evaluation": "evaluation",
    "AutoencoderDetector": "estimator",
    "fit_detector": "scores", "score_images": "scores", "run_detector": "scores", "Detector": "scores",
    "export": "exporting", "reconstruct_files": "files", "encode_files": "files",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
