"""Spark ML integration: a distkeras trainer as a ``pyspark.ml`` Estimator, its result as a Model.

Both are ordinary Pipeline stages. ``KerasEstimator.fit(df)`` runs ``trainer.train(df)`` and
returns a :class:`KerasModel`, whose ``transform`` adds the model's prediction (a Vector
column, via :class:`~distkeras.predictors.ModelPredictor`).

Persistence (no pickle anywhere): ``KerasModel.save(path)`` writes ``path/metadata`` (Spark
ML's JSON metadata: class, uid, params) and ``path/model.keras`` (the Keras model in Keras'
own format). ``KerasEstimator.save(path)`` writes its params only: a trainer holds a live
model, an optimizer and Spark state that are not saved, so a loaded estimator needs
``setTrainer(...)`` before ``fit``.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence
from typing import Any

import keras
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from .models import model_from_bytes, model_to_bytes
from .predictors import ModelPredictor

__all__ = ["KerasEstimator", "KerasModel"]

KERAS_FILE = "model.keras"


def _column_or_columns(value: Any) -> str | list[str]:
    """Param converter: one column name, or a list of names (multi-input/-output models)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"expected a column name or a list of column names, got {value!r}")


class _KerasParams(Params):
    """The params both stages share, named as pyspark.ml names them."""

    featuresCol = Param(Params._dummy(), "featuresCol", "features column, or a list of "
                        "columns for a multi-input model", typeConverter=_column_or_columns)
    labelCol = Param(Params._dummy(), "labelCol", "label column, or a list of columns for a "
                     "multi-output model", typeConverter=_column_or_columns)
    predictionCol = Param(Params._dummy(), "predictionCol", "prediction column (a multi-output "
                          "model adds predictionCol_0, predictionCol_1, ...)",
                          typeConverter=TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "rows per model call when predicting",
                      typeConverter=TypeConverters.toInt)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(featuresCol="features", labelCol="label", predictionCol="prediction",
                         batchSize=256)

    def getFeaturesCol(self) -> str | list[str]:
        """The features column, or the list of them."""
        return self.getOrDefault(self.featuresCol)

    def getLabelCol(self) -> str | list[str]:
        """The label column, or the list of them."""
        return self.getOrDefault(self.labelCol)

    def getPredictionCol(self) -> str:
        """The prediction column."""
        return self.getOrDefault(self.predictionCol)

    def getBatchSize(self) -> int:
        """Rows per model call when predicting."""
        return self.getOrDefault(self.batchSize)

    def setFeaturesCol(self, value: str | Sequence[str]):
        """Set the features column (a list for a multi-input model); returns self."""
        return self._set(featuresCol=value)

    def setLabelCol(self, value: str | Sequence[str]):
        """Set the label column (a list for a multi-output model); returns self."""
        return self._set(labelCol=value)

    def setPredictionCol(self, value: str):
        """Set the prediction column; returns self."""
        return self._set(predictionCol=value)

    def setBatchSize(self, value: int):
        """Set the rows per model call when predicting; returns self."""
        return self._set(batchSize=value)

    def _set_given(self, **kwargs: Any) -> None:
        self._set(**{k: v for k, v in kwargs.items() if v is not None})


def _make_trainer(trainer: Any, kwargs: dict):
    """A trainer instance from an instance, a trainer class, or a trainer class name."""
    from . import trainers

    if trainer is None or isinstance(trainer, trainers.Trainer):
        if kwargs:
            raise TypeError(f"trainer keyword arguments {sorted(kwargs)} are only accepted "
                            f"with a trainer class or class name, not with an instance")
        return trainer
    cls = getattr(trainers, trainer, None) if isinstance(trainer, str) else trainer
    if not (isinstance(cls, type) and issubclass(cls, trainers.Trainer)):
        raise ValueError(f"trainer must be a distkeras Trainer instance, class or class name "
                         f"(e.g. 'ADAG'), got {trainer!r}")
    if "keras_model" not in kwargs:
        raise TypeError(f"trainer={cls.__name__}: pass keras_model=... with its arguments")
    return cls(**kwargs)


class KerasEstimator(Estimator, _KerasParams, DefaultParamsReadable, DefaultParamsWritable):
    """A distkeras trainer as a Spark ML Estimator: ``fit(df)`` trains, returns a KerasModel.

    ``fit`` runs ``trainer.train(df)`` (an `EnsembleTrainer`'s members are averaged into one
    model) and returns a :class:`KerasModel` with this estimator's params. After ``fit`` the
    trainer (``getTrainer()``) holds the run's ``history`` and training time. A saved and
    loaded estimator keeps its params only and needs ``setTrainer(...)`` before ``fit``.

    Args:
        trainer: A trainer instance (`ADAG(model, ...)`), or a trainer class or its name
            (`"ADAG"`) with the trainer's keyword arguments (`keras_model=...` included).
            Defaults to `None` (set one with `setTrainer` before `fit`).
        featuresCol: The features column(s). Defaults to the trainer's `features_col`;
            set here it overrides it (`fit` writes it into the trainer).
        labelCol: The label column(s). Defaults to the trainer's `label_col`; set here it
            overrides it.
        predictionCol: The column the fitted model adds. Defaults to `"prediction"`.
        batchSize: Rows per model call when the fitted model predicts. Defaults to `256`.
        **trainer_kwargs: The trainer's arguments, with a trainer class or name.

    Raises:
        ValueError: `trainer` is not a distkeras trainer instance, class or class name;
            at `fit()`: there is no trainer.
        TypeError: `trainer_kwargs` come with a trainer instance, or a trainer class
            without `keras_model`.

    Example:

    ```python
    estimator = KerasEstimator(trainer="ADAG", keras_model=model,
                               loss="categorical_crossentropy", num_workers=2,
                               featuresCol="features", labelCol="label")
    fitted = estimator.fit(train_df)  # a KerasModel; estimator.getTrainer().history
    scored = fitted.transform(test_df)  # adds "prediction"
    ```
    """

    def __init__(self, trainer: Any = None, *, featuresCol: str | Sequence[str] | None = None,
                 labelCol: str | Sequence[str] | None = None, predictionCol: str | None = None,
                 batchSize: int | None = None, **trainer_kwargs: Any):
        super().__init__()
        self.trainer = None
        self.setTrainer(_make_trainer(trainer, trainer_kwargs))
        self._set_given(featuresCol=featuresCol, labelCol=labelCol,
                        predictionCol=predictionCol, batchSize=batchSize)

    def setTrainer(self, trainer: Any) -> KerasEstimator:
        """Use ``trainer`` for the next ``fit``; its columns become the column defaults.

        Args:
            trainer: A trainer instance, or `None`.

        Returns:
            This estimator.

        Raises:
            ValueError: `trainer` is not a distkeras trainer instance, class or name.
            TypeError: `trainer` is a class or name: it needs its arguments, so pass an
                instance (or the class with its arguments to the constructor).
        """
        self.trainer = _make_trainer(trainer, {})
        if self.trainer is not None:
            self._setDefault(featuresCol=_column_or_columns(self.trainer.features_col),
                             labelCol=_column_or_columns(self.trainer.label_col))
        return self

    def getTrainer(self):
        """The trainer `fit` uses (after `fit`: with the run's `history`), or `None`."""
        return self.trainer

    def _fit(self, dataset) -> KerasModel:
        if self.trainer is None:
            raise ValueError("KerasEstimator has no trainer (a loaded estimator keeps only its "
                             "params): call setTrainer(...) before fit")
        self.trainer.features_col = self.getFeaturesCol()
        self.trainer.label_col = self.getLabelCol()
        trained = self.trainer.train(dataset)
        if isinstance(trained, list):  # EnsembleTrainer: one model averaging the members
            trained = type(self.trainer).average(trained)
        model = KerasModel(trained, featuresCol=self.getFeaturesCol(),
                           labelCol=self.getLabelCol(), predictionCol=self.getPredictionCol(),
                           batchSize=self.getBatchSize())
        return self._copyValues(model)


class KerasModel(Model, _KerasParams, MLReadable, MLWritable):
    """A trained Keras model as a Spark ML Model: ``transform`` adds ``predictionCol``.

    ``transform`` runs a :class:`~distkeras.predictors.ModelPredictor` (see there for what
    it checks and raises). ``save(path)`` writes Spark ML's metadata and the model in
    Keras' ``.keras`` format (no pickle); ``KerasModel.load(path)`` reads them back and
    checks the model file against the SHA-256 digest in the metadata.

    Args:
        keras_model: The trained `keras.Model` (also usable directly, on numpy).
            Defaults to `None` (then `transform` and `save` raise `ValueError`).
        featuresCol: The features column(s). Defaults to `"features"`.
        labelCol: The label column(s), kept as a param. Defaults to `"label"`.
        predictionCol: The column `transform` adds (a multi-output model: one per output,
            `predictionCol_0`, ...). Defaults to `"prediction"`.
        batchSize: Rows per model call. Defaults to `256`.

    Example:

    ```python
    model = KerasModel(trained, featuresCol="features")
    model.transform(df).select("prediction").show()
    model.save("/tmp/model")
    same = KerasModel.load("/tmp/model")
    ```
    """

    def __init__(self, keras_model: keras.Model | None = None, *,
                 featuresCol: str | Sequence[str] | None = None,
                 labelCol: str | Sequence[str] | None = None, predictionCol: str | None = None,
                 batchSize: int | None = None):
        super().__init__()
        self.keras_model = keras_model
        self._predictor: ModelPredictor | None = None
        self._set_given(featuresCol=featuresCol, labelCol=labelCol,
                        predictionCol=predictionCol, batchSize=batchSize)

    def predictor(self) -> ModelPredictor:
        """The ModelPredictor for the current params (kept, so the model ships once).

        Returns:
            A `ModelPredictor`, the same one as long as the model and params are unchanged.

        Raises:
            ValueError: There is no `keras_model`.
        """
        if self.keras_model is None:
            raise ValueError("KerasModel has no keras_model")
        key = (self.keras_model, str(self.getFeaturesCol()), self.getPredictionCol(),
               self.getBatchSize())
        current = self._predictor
        if current is None or (current.keras_model, str(current.features_col),
                               current.output_col, current.batch_size) != key:
            self._predictor = ModelPredictor(self.keras_model, self.getFeaturesCol(),
                                             self.getPredictionCol(), self.getBatchSize())
        return self._predictor

    def _transform(self, dataset):
        return self.predictor().predict(dataset)

    def write(self) -> MLWriter:
        """The writer behind `save`: `path/metadata` and `path/model.keras`."""
        return _KerasModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        """The reader behind `load`; it checks the model file's SHA-256 digest."""
        return _KerasModelReader(cls)


# ---- persistence ------------------------------------------------------------------------------
def _hadoop_path(spark, path: str):
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    return jpath, jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def _write_bytes(spark, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through Hadoop's FileSystem (local, HDFS, S3, ...)."""
    jpath, fs = _hadoop_path(spark, path)
    stream = fs.create(jpath, False)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def _read_bytes(spark, path: str) -> bytes:
    jpath, fs = _hadoop_path(spark, path)
    if not fs.exists(jpath):
        raise FileNotFoundError(f"{path} not found: not a saved KerasModel?")
    stream = fs.open(jpath)
    try:
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


class _KerasModelWriter(MLWriter):
    """``path/metadata`` (Spark ML JSON) and ``path/model.keras``."""

    def __init__(self, instance: KerasModel):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        if self.instance.keras_model is None:
            raise ValueError("KerasModel has no keras_model to save")
        data = model_to_bytes(self.instance.keras_model)
        extra = {"kerasFile": KERAS_FILE, "kerasVersion": keras.__version__,
                 "kerasSha256": hashlib.sha256(data).hexdigest()}
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession,
                                         extraMetadata=extra)
        _write_bytes(self.sparkSession, posixpath.join(path, KERAS_FILE), data)


class _KerasModelReader(MLReader):
    def __init__(self, cls: type[KerasModel]):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> KerasModel:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        data = _read_bytes(self.sparkSession,
                           posixpath.join(path, metadata.get("kerasFile", KERAS_FILE)))
        expected = metadata.get("kerasSha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(f"{path}: {KERAS_FILE} does not match the digest in its metadata")
        instance = self.cls(model_from_bytes(data))
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance
