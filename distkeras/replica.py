"""Training a worker's replica batch by batch, as fast as the Keras backend allows.

A worker trains one batch at a time because it may exchange weights with the parameter server
between any two batches. ``model.train_on_batch`` does exactly that, and on TensorFlow and
PyTorch it costs no more per step than ``model.fit`` (bench/step_overhead.py). On JAX it
costs about twice as much: every call copies the whole model state (weights, optimizer and
metric variables) out of the Keras variables into JAX arrays and back. :func:`replica_trainer`
gives JAX a loop that keeps that state as JAX arrays from batch to batch, running the same
compiled train step Keras builds for ``train_on_batch``, and writes it back into the model
only when the worker reads or sets its weights (:meth:`BatchTrainer.sync`).
"""

from __future__ import annotations

from typing import Any


class BatchTrainer:
    """``model.train_on_batch``, one batch after another; :meth:`sync` before the model's
    weights are read or set."""

    def __init__(self, model: Any):
        self.model = model

    def train(self, x: Any, y: Any) -> float:
        """Train one batch; its loss (the first of ``train_on_batch``'s values)."""
        loss = self.model.train_on_batch(x, y)
        return float(loss[0] if isinstance(loss, (list, tuple)) else loss)

    def sync(self) -> None:
        """Make the model's variables hold the state trained so far (nothing to do here)."""


class JaxBatchTrainer(BatchTrainer):
    """On JAX: the model's state stays in JAX arrays between batches.

    The first batch goes through ``train_on_batch``, which builds the model's compiled train
    step (``model.train_function``); later batches call that step on the held state, with
    the metric variables reset before each batch as ``train_on_batch`` resets them, so the
    loss returned is the batch's own. :meth:`sync` writes the state back as ``model.fit``
    does at an epoch's end; the next batch then reads it again from the variables, which
    may have been set in between."""

    def __init__(self, model: Any):
        super().__init__(model)
        self._state: tuple | None = None  # (trainable, non-trainable, optimizer, metrics)
        self._fresh_metrics: list | None = None  # the metric variables as reset

    def train(self, x: Any, y: Any) -> float:
        import jax

        model = self.model
        if self._fresh_metrics is None:  # the first batch: Keras builds and compiles
            loss = super().train(x, y)
            model.reset_metrics()
            self._fresh_metrics = [jax.numpy.array(v.value) for v in model.metrics_variables]
            return loss
        if self._state is None:
            self._state = model._get_jax_state(
                trainable_variables=True, non_trainable_variables=True,
                optimizer_variables=True, metrics_variables=True)
        trainable, non_trainable, optimizer, _ = self._state
        # the step donates its state: the reset metrics are copied for every batch
        metrics = [jax.numpy.array(v, copy=True) for v in self._fresh_metrics]
        data = jax.tree_util.tree_map(jax.device_put, (x, y, None))
        logs, state = model.train_function((trainable, non_trainable, optimizer, metrics),
                                           iter([data]))
        self._state = state
        return float(logs["loss"])

    def sync(self) -> None:
        if self._state is None:
            return
        model = self.model
        trainable, non_trainable, optimizer, metrics = self._state
        model._jax_state = {"trainable_variables": trainable,
                            "non_trainable_variables": non_trainable,
                            "optimizer_variables": optimizer,
                            "metrics_variables": metrics}
        model._jax_state_synced = False
        model.jax_state_sync()
        self._state = None  # read again from the variables before the next batch


def replica_trainer(model: Any) -> BatchTrainer:
    """The fastest :class:`BatchTrainer` for ``model``'s backend: :class:`JaxBatchTrainer` on
    JAX when this Keras has the state API it relies on, else ``train_on_batch`` itself."""
    import keras

    if (keras.backend.backend() == "jax" and hasattr(model, "_get_jax_state")
            and hasattr(model, "jax_state_sync")):
        return JaxBatchTrainer(model)
    return BatchTrainer(model)
