"""distkeras: data-parallel training of Keras 3 models on Apache Spark."""

from .algorithms import Algorithm
from .data import DataError
from .history import History
from .parameter_server import ParameterServer, ServerConfig, TrainingAborted
from .spark import local_session
from .trainers import (
    ADAG,
    AEASGD,
    AGN,
    DOWNPOUR,
    EAMSGD,
    EASGD,
    AveragingTrainer,
    DynSGD,
    EnsembleTrainer,
    SingleTrainer,
    Trainer,
)
from .transformers import (
    DenseTransformer,
    LabelIndexTransformer,
    MinMaxTransformer,
    OneHotTransformer,
    ReshapeTransformer,
    StandardTransformer,
)

__version__ = "0.1.0"

__all__ = [
    "ADAG", "AEASGD", "AGN", "DOWNPOUR", "EAMSGD", "EASGD", "Algorithm", "AveragingTrainer",
    "DataError", "DynSGD", "EnsembleTrainer", "History", "ParameterServer", "ServerConfig",
    "SingleTrainer", "Trainer", "TrainingAborted", "local_session",
    "DenseTransformer", "LabelIndexTransformer", "MinMaxTransformer", "OneHotTransformer",
    "ReshapeTransformer", "StandardTransformer",
]
