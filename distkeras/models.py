"""Shipping a Keras model to the workers and back: the ``.keras`` format, never raw pickle
of the model object (Keras' own format rebuilds any model Keras can serialise)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:  # a task imports Keras (and its backend) only when it builds the model,
    import keras  # so unpickling a blueprint is cheap and a worker can say hello first

log = logging.getLogger(__name__)


def model_to_bytes(model: keras.Model) -> bytes:
    """``model`` in Keras' own ``.keras`` format (architecture and weights), as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as handle:
            return handle.read()


def model_from_bytes(data: bytes, custom_objects: dict | bytes | None = None) -> keras.Model:
    """The model that :func:`model_to_bytes` wrote, uncompiled. ``custom_objects``: a dict, or
    the bytes :func:`pickle_custom_objects` wrote (how they travel to a Spark task)."""
    import keras
    if isinstance(custom_objects, (bytes, bytearray)):
        custom_objects = cloudpickle.loads(custom_objects)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as handle:
            handle.write(data)
        with keras.saving.custom_object_scope(custom_objects or {}):
            return keras.saving.load_model(path, compile=False)


@dataclass(frozen=True)
class ModelBlueprint:
    """A model's architecture and initial weights, plus how each replica compiles it."""

    keras_bytes: bytes
    optimizer: Any  # Keras optimizer config dict (keras.optimizers.serialize)
    loss: Any
    metrics: list
    custom_objects: bytes  # cloudpickled registry: classes defined in a notebook travel too

    def build(self, optimizer: Any = None, dtype_policy: str | None = None) -> keras.Model:
        """A fresh compiled replica; ``optimizer`` overrides the blueprint's; ``dtype_policy``
        (e.g. ``"mixed_bfloat16"``) makes it compute in lower precision (see precision.py)."""
        import keras
        model = model_from_bytes(self.keras_bytes, self.custom_objects)
        if dtype_policy:  # before compile: mixed_float16 gets Keras' LossScaleOptimizer
            from .precision import apply_policy

            apply_policy(model, dtype_policy)
        model.compile(optimizer=keras.optimizers.get(optimizer or self.optimizer),
                      loss=self.loss, metrics=list(self.metrics))
        return model


def _serialize_optimizer(optimizer: Any) -> Any:
    import keras
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, dict):
        optimizer = keras.optimizers.deserialize(optimizer)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"worker_optimizer must be a Keras optimizer name, config dict or "
                        f"instance, got {type(optimizer).__name__}")
    return keras.optimizers.serialize(optimizer)


def _serialize_loss(loss: Any) -> Any:
    import keras
    if isinstance(loss, (str, dict)) or loss is None:
        return loss
    if isinstance(loss, (list, tuple)):
        return [_serialize_loss(item) for item in loss]
    if isinstance(loss, keras.losses.Loss):
        return keras.losses.serialize(loss)
    return loss  # a plain function: shipped by Spark's closure serialiser


def blueprint(model: keras.Model, optimizer: Any = None, loss: Any = None,
              metrics: Any = None) -> ModelBlueprint:
    """Capture ``model``; compile arguments default to those the model was compiled with."""
    import keras
    if not isinstance(model, keras.Model):
        raise TypeError(f"keras_model must be a keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("keras_model is not built: give its first layer an input shape or "
                         "call it on data once before training")
    compiled = getattr(model, "compiled", False) and getattr(model, "_compile_config", None)
    config = compiled.config if compiled else {}
    if optimizer is None:
        optimizer = model.optimizer if compiled and model.optimizer is not None else "adam"
    if loss is None:
        loss = config.get("loss")
    if loss is None:
        raise ValueError("no loss: pass loss=... to the trainer or compile the model first")
    if metrics is None:
        metrics = config.get("metrics") or []
    return ModelBlueprint(model_to_bytes(model), _serialize_optimizer(optimizer),
                          _serialize_loss(loss),
                          list(metrics) if isinstance(metrics, (list, tuple)) else [metrics],
                          pickle_custom_objects())


def pickle_custom_objects() -> bytes:
    """Registered custom Keras objects, by value where they live in ``__main__`` or a function
    (Spark's broadcast uses plain pickle, which cannot ship those)."""
    import keras
    shippable = {}
    for name, obj in keras.saving.get_custom_objects().items():
        try:
            cloudpickle.dumps(obj)
        except Exception as error:  # noqa: BLE001 - skip what cannot travel, say so
            log.warning("distkeras: custom object %s cannot be shipped to workers: %s",
                        name, error)
            continue
        shippable[name] = obj
    return cloudpickle.dumps(shippable)
