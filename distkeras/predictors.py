"""Distributed inference: a Keras model applied to every row of a Spark DataFrame.

The model travels as Keras ``.keras`` bytes in a Spark broadcast (never as a pickled model
object; one broadcast per predictor, reused by every ``predict``) and is loaded once per Python
worker process: workers keep the loaded model in a small cache keyed by a SHA-256 digest of its
architecture and weights, so a second ``predict`` of the same model (or a new
:class:`ModelPredictor` around it) does not load it again. Rows reach the model as numpy
batches through ``pyspark.ml.functions.predict_batch_udf`` (Arrow batches cut into
``batch_size`` rows); nothing is collected to the driver.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .backends import driver_backend
from .data import DataError, as_array, column_kinds
from .devices import Placement, place
from .models import model_from_bytes, model_to_bytes, pickle_custom_objects
from .workers import start_task

if TYPE_CHECKING:  # a task sets the driver's backend before it imports Keras
    import keras

__all__ = ["ModelPredictor", "load_keras_bytes", "model_digest", "model_to_bytes"]

#: models loaded in this (worker) process, newest last; keyed by :func:`model_digest` and
#: the GPU (of those the process sees) they live on
_LOADED: OrderedDict[tuple[str, int | None], keras.Model] = OrderedDict()
_LOADED_CAPACITY = 4
_LOADED_LOCK = threading.Lock()


def model_digest(model: keras.Model) -> str:
    """SHA-256 of the architecture and the weights: equal for equal models (the ``.keras``
    bytes are not, they carry a save date), so workers reuse a model they already loaded."""
    import keras

    digest = hashlib.sha256(model.to_json().encode())
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{weight.path}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


#: the name this module has always exported for :func:`distkeras.models.model_from_bytes`
load_keras_bytes = model_from_bytes


@dataclass(frozen=True)
class _Shipped:
    """What the broadcast carries: the model bytes, its digest and the custom objects."""

    digest: str
    keras_bytes: bytes
    custom_objects: bytes


def _cached_model(shipped: _Shipped, placement: Placement | None = None) -> keras.Model:
    """The model for ``shipped.digest``, loaded at most once per process and device (on the
    task's device, see devices.py)."""
    key = (shipped.digest, placement.index if placement is not None else None)
    with _LOADED_LOCK:
        model = _LOADED.get(key)
        if model is not None:
            _LOADED.move_to_end(key)
            return model
        with placement.scope() if placement is not None else contextlib.nullcontext():
            model = model_from_bytes(shipped.keras_bytes, shipped.custom_objects)
        _LOADED[key] = model
        while len(_LOADED) > _LOADED_CAPACITY:
            _LOADED.popitem(last=False)
        return model


def _make_predict_fn(broadcast, shapes: list[tuple[int, ...]], multi_output: bool,
                     backend: str) -> Callable[[], Callable]:
    """``make_predict_fn`` for predict_batch_udf; closes over no model, only the broadcast
    and the driver's Keras backend."""

    def make():
        start_task(backend)  # backend and GPU before anything initialises Keras or CUDA
        import keras

        def predict(*arrays: np.ndarray):
            # per batch: Spark caches this function in a reused worker for later tasks,
            # which may be assigned another GPU
            placement = place()
            model = _cached_model(broadcast.value, placement)
            rows = len(arrays[0])
            inputs = [np.asarray(a, dtype=np.float32).reshape((rows, *shape))
                      for a, shape in zip(arrays, shapes)]
            with placement.scope():
                result = model.predict_on_batch(inputs[0] if len(inputs) == 1 else inputs)
            outputs = [np.asarray(o, dtype=np.float32).reshape(rows, -1)
                       for o in keras.tree.flatten(result)]
            if not multi_output:
                return outputs[0]
            return {f"o{i}": out for i, out in enumerate(outputs)}

        # predict_batch_udf counts the parameters to decide how to feed the columns
        predict.__signature__ = inspect.Signature(
            [inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_ONLY)
             for i in range(len(shapes))])
        return predict

    return make


def _fixed_shapes(tensors, what: str) -> list[tuple[int, ...]]:
    shapes = []
    for tensor in tensors:
        shape = tuple(tensor.shape)[1:]
        if any(d is None for d in shape):
            raise DataError(f"model {what} {getattr(tensor, 'name', '?')} has an unknown "
                            f"dimension {tuple(tensor.shape)}: ModelPredictor needs fixed "
                            f"per-sample shapes")
        shapes.append(tuple(int(d) for d in shape))
    return shapes


class ModelPredictor:
    """Adds the predictions of ``keras_model`` to a DataFrame, computed on the executors.

    The model is shipped once per predictor (a broadcast of its ``.keras`` bytes) and loaded
    once per Python worker process; rows reach it as numpy batches of ``batch_size`` rows.
    Each row holds the flattened input; it is reshaped to the input's shape (e.g. 784
    values -> (28, 28, 1)).

    Output: one Spark ML Vector column ``output_col`` holding the model's (flattened) output;
    a multi-output model gets one Vector column per output, ``f"{output_col}_{i}"`` for output
    ``i`` in ``model.outputs`` order (see :attr:`output_cols`).

    Args:
        keras_model: A built `keras.Model` with fixed per-sample input and output shapes
            (a Sequential or functional model with a `keras.Input`).
        features_col: A Spark ML Vector, array or numeric column; a list of columns for a
            multi-input model (one per `model.inputs`, in order). Defaults to
            `"features"`.
        output_col: The name of the prediction column (the prefix of the columns of a
            multi-output model). Defaults to `"prediction"`.
        batch_size: Rows per model call, a positive integer. Defaults to `256`.

    Raises:
        TypeError: `keras_model` is not a `keras.Model`.
        ValueError: `keras_model` has no known inputs, `batch_size` is not a positive
            integer, or `output_col` is not a non-empty string.
        DataError: A model input or output has an unknown dimension, or `features_col`
            names another number of columns than the model has inputs.

    Example:

    ```python
    predictor = ModelPredictor(trained, features_col="features", output_col="prediction")
    scored = predictor.predict(test_df)
    accuracy = AccuracyEvaluator(prediction_col="prediction", label_col="label")
    print(accuracy.evaluate(scored))
    ```
    """

    def __init__(self, keras_model: keras.Model, features_col: str | Sequence[str] = "features",
                 output_col: str = "prediction", batch_size: int = 256):
        import keras

        if not isinstance(keras_model, keras.Model):
            raise TypeError(f"keras_model must be a keras.Model, got {type(keras_model).__name__}")
        if not keras_model.built or not getattr(keras_model, "inputs", None):
            raise ValueError("keras_model has no known inputs: give it a keras.Input (Sequential "
                             "or functional model) so its input shapes are known")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(output_col, str) or not output_col:
            raise ValueError(f"output_col must be a non-empty string, got {output_col!r}")
        self.features_cols = [features_col] if isinstance(features_col, str) \
            else list(features_col)
        self.input_shapes = _fixed_shapes(keras_model.inputs, "input")
        self.output_shapes = _fixed_shapes(keras_model.outputs, "output")
        if len(self.features_cols) != len(self.input_shapes):
            raise DataError(f"features_col names {len(self.features_cols)} column(s) "
                            f"{self.features_cols} but the model has {len(self.input_shapes)} "
                            f"input(s)")
        self.keras_model = keras_model
        self.features_col = features_col
        self.output_col = output_col
        self.batch_size = int(batch_size)
        self.keras_bytes = model_to_bytes(keras_model)
        self.digest = model_digest(keras_model)
        self._custom_objects = pickle_custom_objects()
        self._broadcast = None
        self._broadcast_sc = None

    @property
    def output_cols(self) -> list[str]:
        """Names of the columns :meth:`predict` adds, in ``model.outputs`` order."""
        if len(self.output_shapes) == 1:
            return [self.output_col]
        return [f"{self.output_col}_{i}" for i in range(len(self.output_shapes))]

    def predict(self, dataframe):
        """Add the prediction column(s) to `dataframe`; lazy, like any Spark transformation.

        The columns and the first row's widths are checked here (one small Spark job); every
        other row is checked as it is read, failing the job with the same kind of message.

        Args:
            dataframe: A DataFrame with the `features_col` column(s).

        Returns:
            `dataframe` plus the columns of `output_cols` (Spark ML Vectors).

        Raises:
            DataError: A feature column is missing or not numeric, its first row is null
                or of the wrong width, or an output column already exists.
        """
        from pyspark.ml.functions import array_to_vector, predict_batch_udf
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

        features = self._feature_exprs(dataframe)
        clashes = [c for c in self.output_cols if c in dataframe.columns]
        if clashes:
            raise DataError(f"output column(s) {clashes} already exist in the DataFrame; choose "
                            f"another output_col")
        widths = [int(np.prod(shape)) for shape in self.input_shapes]
        multi = len(self.output_shapes) > 1
        array = ArrayType(FloatType())
        return_type = StructType([StructField(f"o{i}", array)
                                  for i in range(len(self.output_shapes))]) if multi else array
        udf = predict_batch_udf(
            _make_predict_fn(self._shipped(dataframe.sparkSession.sparkContext),
                             self.input_shapes, multi, driver_backend()),
            return_type=return_type, batch_size=self.batch_size,
            input_tensor_shapes=[[w] for w in widths])
        result = udf(*features)
        if not multi:
            return dataframe.withColumn(self.output_col, array_to_vector(result))
        tmp = f"__distkeras_{self.digest[:12]}"
        out = dataframe.withColumn(tmp, result)
        out = out.withColumns({name: array_to_vector(F.col(tmp)[f"o{i}"])
                               for i, name in enumerate(self.output_cols)})
        return out.drop(tmp)

    def unpersist(self) -> None:
        """Free the broadcast model on the executors (a later ``predict`` ships it again)."""
        if self._broadcast is not None:
            self._broadcast.unpersist(blocking=False)
        self._broadcast = self._broadcast_sc = None

    # ---- internals ------------------------------------------------------------------------
    def _shipped(self, sc):
        """One broadcast per SparkContext, reused by every ``predict`` of this predictor."""
        if self._broadcast is None or self._broadcast_sc is not sc:
            self._broadcast = sc.broadcast(_Shipped(self.digest, self.keras_bytes,
                                                    self._custom_objects))
            self._broadcast_sc = sc
        return self._broadcast

    def _feature_exprs(self, dataframe) -> list:
        """One checked ``array<float>`` expression per feature column."""
        from pyspark.sql import functions as F

        kinds = column_kinds(dataframe, self.features_cols)
        raw = [as_array(F.col(name), kinds[name], "float") for name in self.features_cols]
        self._check_first_row(dataframe, raw)
        checked = []
        for i, (name, expr, shape) in enumerate(zip(self.features_cols, raw,
                                                   self.input_shapes)):
            width = int(np.prod(shape))
            found = F.when(expr.isNull(), F.lit("null")).otherwise(F.size(expr).cast("string"))
            message = F.concat(F.lit(f"column '{name}': model input {i} expects {width} values "
                                     f"per row (shape {shape}), a row has "), found)
            checked.append(F.when(F.size(expr) == width, expr)
                           .otherwise(F.raise_error(message)))
        return checked

    def _check_first_row(self, dataframe, raw) -> None:
        from pyspark.sql import functions as F

        first = dataframe.select(*[F.size(e) for e in raw]).first()
        if first is None:
            return  # no rows: nothing to predict, nothing to check
        for i, (name, shape, found) in enumerate(zip(self.features_cols, self.input_shapes,
                                                     first)):
            width = int(np.prod(shape))
            if found is None or found < 0:
                raise DataError(f"column '{name}' has a null in its first row")
            if found != width:
                raise DataError(f"column '{name}': model input {i} expects {width} values per "
                                f"row (shape {shape}), the data has {found}")
