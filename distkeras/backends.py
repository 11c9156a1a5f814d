"""Which Keras backend a Spark task runs: the driver's, set before Keras is imported there.

Keras 3 picks its backend (TensorFlow, JAX or PyTorch) once per process, when it is first
imported, from ``KERAS_BACKEND`` or ``~/.keras/keras.json``. Executors do not share the
driver's notebook state, so a task would otherwise run whatever its environment says. Every
distkeras task calls :func:`use_backend` with the driver's backend before it unpickles
anything that may import Keras (a loss function, a custom layer).
"""

from __future__ import annotations

import importlib.util
import os
import sys

from .errors import BackendError

#: backend name -> (the module it needs, what to install for it)
REQUIREMENTS = {
    "tensorflow": ("tensorflow", "tensorflow"),
    "jax": ("jax", "jax[cpu] (jax[cuda12] on GPU executors)"),
    "torch": ("torch", "torch"),
    "numpy": ("numpy", "numpy"),  # Keras' inference-only backend
}


def driver_backend() -> str:
    """The backend Keras runs on in this (the driver's) process."""
    import keras

    return keras.backend.backend()


def current_backend() -> str | None:
    """The backend of the Keras this process has imported; None before Keras is imported."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None


def use_backend(name: str) -> None:
    """Make ``name`` the Keras backend of this process (a Spark task's Python worker).

    Raises:
        BackendError: This Python cannot import the backend's package (the message names
            the backend and what to install), or it already runs Keras on another backend
            (Spark reuses Python workers between jobs of one application).
    """
    running = current_backend()
    if running == name:
        return
    if running is not None:
        raise BackendError(
            f"this Spark Python worker already runs Keras on '{running}' but the driver trains "
            f"on '{name}': Keras cannot switch backends inside a process. Use one backend per "
            f"Spark application (restart the SparkSession after changing it), or set "
            f"spark.python.worker.reuse=false")
    module, package = REQUIREMENTS.get(name, (name, name))
    if importlib.util.find_spec(module) is None:
        raise BackendError(
            f"the driver trains with the Keras backend '{name}' but this executor's Python "
            f"({sys.executable}) cannot import '{module}': install {package} in the executors' "
            f"environment (see docs/backends.md), or choose another backend on the driver "
            f"(KERAS_BACKEND)")
    os.environ["KERAS_BACKEND"] = name
