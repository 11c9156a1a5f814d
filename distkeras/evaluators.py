"""Scoring predictions in Spark: one aggregate per evaluation, no rows collected.

:class:`AccuracyEvaluator` is a ``pyspark.ml.evaluation.Evaluator``, so it also plugs into
``CrossValidator`` / ``TrainValidationSplit``. :func:`class_index` is the column expression it
uses to turn a prediction vector into a class index; use it to feed pyspark's own evaluators
(see docs/prediction.md).
"""

from __future__ import annotations

from pyspark.ml.evaluation import Evaluator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from .data import SCALAR, DataError, as_array, column_kinds

__all__ = ["AccuracyEvaluator", "class_index"]


def _as_array(dataframe, name: str):
    """``name`` as an ``array<double>`` expression, or None when it holds a plain number."""
    from pyspark.sql import functions as F

    kind = column_kinds(dataframe, [name])[name]
    return None if kind == SCALAR else as_array(F.col(name), kind)


def class_index(dataframe, name: str, threshold: float = 0.5):
    """A Column: the class index (a double) held by column ``name`` of ``dataframe``.

    Vector/array of two or more values: the position of the largest (the first on ties, as
    ``numpy.argmax``); one value: 1.0 if it is above ``threshold`` else 0.0 (a sigmoid output);
    a number: itself. Null in, null out.

    Args:
        dataframe: The DataFrame holding the column (its type decides the expression).
        name: The column: a Vector, an array or a number.
        threshold: The cut of a single-value row. Defaults to `0.5`.

    Returns:
        A `pyspark.sql.Column` of doubles.

    Raises:
        DataError: `name` is missing from `dataframe` or not numeric.
    """
    from pyspark.sql import functions as F

    values = _as_array(dataframe, name)
    if values is None:
        return F.col(name).cast("double")
    argmax = (F.array_position(values, F.array_max(values)) - 1).cast("double")
    return (F.when(F.size(values) == 1, (values[0] > threshold).cast("double"))
            .otherwise(argmax))


class AccuracyEvaluator(Evaluator, DefaultParamsReadable, DefaultParamsWritable):
    """Fraction of rows whose predicted class equals the label, computed by one Spark aggregate.

    ``evaluate(df)`` returns the accuracy as a float. Rows where either column is null are
    left out.

    Args:
        prediction_col: A probability/score vector or array (argmax taken; a single value is
            a sigmoid output, thresholded at 0.5) or a class index. Defaults to
            `"prediction"`.
        label_col: A class index or a one-hot vector/array. Defaults to `"label"`.

    Raises:
        DataError: At `evaluate()`: a column is missing or not numeric, or no row has
            both columns set.

    Example:

    ```python
    scored = ModelPredictor(trained).predict(test_df)
    accuracy = AccuracyEvaluator(prediction_col="prediction", label_col="label")
    print(accuracy.evaluate(scored))
    ```
    """

    predictionCol = Param(Params._dummy(), "predictionCol", "prediction column: a vector, "
                          "an array or a class index", typeConverter=TypeConverters.toString)
    labelCol = Param(Params._dummy(), "labelCol", "label column: a class index or a one-hot "
                     "vector/array", typeConverter=TypeConverters.toString)

    def __init__(self, prediction_col: str = "prediction", label_col: str = "label"):
        super().__init__()
        self._setDefault(predictionCol="prediction", labelCol="label")
        self._set(predictionCol=prediction_col, labelCol=label_col)

    @property
    def prediction_col(self) -> str:
        """The prediction column's name."""
        return self.getOrDefault(self.predictionCol)

    @property
    def label_col(self) -> str:
        """The label column's name."""
        return self.getOrDefault(self.labelCol)

    def _evaluate(self, dataset) -> float:
        from pyspark.sql import functions as F

        predicted = class_index(dataset, self.prediction_col)
        actual = class_index(dataset, self.label_col)
        row = dataset.select(F.avg((predicted == actual).cast("double")).alias("acc"),
                             F.count(F.when(predicted.isNotNull() & actual.isNotNull(), 1))
                             .alias("n")).first()
        if not row["n"]:
            raise DataError(f"no rows with both '{self.prediction_col}' and "
                            f"'{self.label_col}' to evaluate")
        return float(row["acc"])

    def isLargerBetter(self) -> bool:
        """True: a larger accuracy is better (what `CrossValidator` asks)."""
        return True
