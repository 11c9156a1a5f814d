"""distkeras: data-parallel training of Keras 3 models on Apache Spark.

Public names are imported on first use, so that ``import distkeras.protocol`` (a parameter
server client, a benchmark) does not pay for importing TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "trainers": ["ADAG", "AEASGD", "AGN", "DOWNPOUR", "EAMSGD", "EASGD", "AveragingTrainer",
                 "DynSGD", "EnsembleTrainer", "SingleTrainer", "Trainer"],
    "transformers": ["DenseTransformer", "LabelIndexTransformer", "MinMaxTransformer",
                     "OneHotTransformer", "ReshapeTransformer", "StandardTransformer"],
    "algorithms": ["Algorithm"],
    "errors": ["BackendError", "CheckpointError", "DataError", "TrainingAborted", "WorkerError"],
    "history": ["History"],
    "parameter_server": ["ParameterServer", "ServerConfig"],
    "spark": ["local_session"],
    "predictors": ["ModelPredictor"],
    "evaluators": ["AccuracyEvaluator"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'distkeras' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
