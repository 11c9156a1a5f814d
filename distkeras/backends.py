"""Which Keras backend a Spark task runs: the driver's, set before Keras is imported there.

Keras 3 picks its backend (TensorFlow, JAX or PyTorch) once per process, when it is first
imported, from ``KERAS_BACKEND`` or ``~/.keras/keras.json``. Executors do not share the
driver's notebook state, so a task would otherwise run whatever its environment says. Every
distkeras task calls :func:`use_backend` with the driver's backend before it unpickles
anything that may import Keras (a loss function, a custom layer).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings

from .daemon import UNCLAIMED_ENV
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


def configured_backend() -> str:
    """The backend Keras runs, or will run when this process imports it: Keras' own choice
    (``KERAS_BACKEND``, then ``keras.json`` in ``KERAS_HOME`` or ``~/.keras``, then
    TensorFlow), read without importing Keras."""
    running = current_backend()
    if running is not None:
        return running
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as config:
            return str(json.load(config).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def backend_library(name: str) -> str | None:
    """The library backend ``name`` runs on (``tensorflow``, ``jax``, ``torch``), if this
    Python can import it; None otherwise (and for the numpy backend: nothing to gain)."""
    module = REQUIREMENTS.get(name, (name, name))[0]
    if module == "numpy" or importlib.util.find_spec(module) is None:
        return None
    return module


#: backends whose Keras a worker daemon imports too (about 1.5 s a worker on JAX). TensorFlow
#: imports Keras by itself; Keras on PyTorch asks CUDA at import whether there is a GPU,
#: which a process must not do before it forks (and before a task chooses its GPU).
PRELOAD_KERAS = {"jax"}


def preload_for(name: str) -> str | None:
    """What a worker daemon imports before it forks for backend ``name``, comma-separated
    (``distkeras.daemon``): its library, and Keras where that is safe; None when there is
    nothing to import."""
    library = backend_library(name)
    if library is None:
        return None
    return f"{library},keras" if name in PRELOAD_KERAS else library


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
    # a worker forked by distkeras.daemon, before any task of it chose a backend: a Keras
    # there was imported by the daemon's preload (TensorFlow imports Keras), never used
    unclaimed = os.environ.pop(UNCLAIMED_ENV, None) is not None
    running = current_backend()
    if running == name:
        return
    if running is not None and not unclaimed:
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
    if running is not None:
        import keras

        with warnings.catch_warnings():  # nothing was built on the preloaded Keras
            warnings.simplefilter("ignore", UserWarning)
            keras.config.set_backend(name)


#: environment variables through which a user sets TensorFlow's thread pools (they win)
TF_THREAD_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def limit_threads(name: str, threads: int | None) -> None:
    """Size the backend's CPU thread pools to ``threads`` in this process, before it starts
    them: TensorFlow otherwise gives every process as many threads as the host has cores,
    and two workers on two cores measured 1.2-1.3x fewer samples/s for it. A no-op for
    ``None``, where the user's environment sets the pools, where TensorFlow already runs (a
    reused Python worker keeps its first task's pools) and on JAX (its CPU steps measured no
    faster with one thread).
    """
    if not threads or name != "tensorflow" or any(v in os.environ for v in TF_THREAD_ENV):
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow is initialised: its pools stay as they are
        pass


def cpu_threads(name: str) -> int:
    """The intra-op threads the backend runs with in this process (0: its default, every
    core of the host)."""
    if name != "tensorflow" or "tensorflow" not in sys.modules:
        return 0
    import tensorflow as tf

    return int(tf.config.threading.get_intra_op_parallelism_threads())
