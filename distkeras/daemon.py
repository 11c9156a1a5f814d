"""PySpark's Python-worker daemon, with the Keras backend's library imported before it forks.

Why: PySpark forks every Python worker from one daemon process per executor
(``spark.python.daemon.module``). A fresh worker that trains imports TensorFlow first: about
4.5 s and 5 s of CPU each on the 2-core build machine, two workers at once, before the first
batch of a session's first ``train()``. A daemon that imported the library once hands it
to every worker it forks, copy-on-write.

The library (``tensorflow``, ``jax``, ``torch``) is imported, and Keras with JAX. Keras fixes
its backend when it is imported, and each task chooses the driver's backend itself
(:func:`distkeras.backends.use_backend`); TensorFlow imports Keras too, on the backend of
the daemon's environment, so the first task of a forked worker may switch that unused
Keras to the driver's backend (``keras.config.set_backend``, about 0.2 s). Importing starts
none of the libraries' runtimes (TensorFlow's thread pools, a JAX backend, CUDA): each
forked worker starts them as a fresh process would, on the GPU its task was given. The
threads that the import does start (TensorFlow imports pyarrow, whose allocator keeps one;
numpy's OpenBLAS pool) belong to libraries with fork handlers of their own; every task of
the test suite runs in workers forked this way. A library that fails to import is reported
on the daemon's stderr and skipped: the daemon then works as PySpark's own.

A local session starts the import before its JVM (:mod:`distkeras.forkserver`): this module,
when Spark starts it, hands its place to the fork server's child and stands in for it.

Set up by :func:`distkeras.local_session`; on a cluster (where each executor's daemon
imports for itself, once)::

    --conf spark.python.daemon.module=distkeras.daemon
    --conf spark.executorEnv.DISTKERAS_PRELOAD=tensorflow   # or jax,keras or torch
"""

from __future__ import annotations

import importlib
import os
import sys

#: the environment variable naming the modules to import, comma-separated
PRELOAD_ENV = "DISTKERAS_PRELOAD"
#: set in the daemon, so in every worker it forks, until a task chooses its Keras backend
UNCLAIMED_ENV = "DISTKERAS_FORKED_UNCLAIMED"


def preload(names: str) -> list[str]:
    """Import each comma-separated module of ``names``; return those imported."""
    imported = []
    for name in filter(None, (part.strip() for part in names.split(","))):
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - the workers import it again, and say why
            print(f"distkeras.daemon: could not preload {name}: {error!r}", file=sys.stderr)
        else:
            imported.append(name)
    return imported


def main() -> None:
    from .forkserver import SOCKET_ENV, hand_over, stand_in

    path = os.environ.get(SOCKET_ENV)
    if path:
        daemon = hand_over(path)
        if daemon is not None:
            stand_in(daemon)
            return
    preload(os.environ.get(PRELOAD_ENV, ""))
    os.environ[UNCLAIMED_ENV] = "1"
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
