"""pyspark.ml Transformers that prepare DataFrame columns for distkeras and read its output.

Every transformer here is a ``pyspark.ml.Transformer`` built from Spark SQL column
expressions (``vector_to_array``/``array_to_vector`` and the higher-order functions
``transform``, ``array_max``, ``array_position`` ...), so the work runs in the JVM, vectorised,
with no Python function called per row. They fit in a ``pyspark.ml.Pipeline`` and are saved and
loaded with it (``DefaultParamsWritable``/``DefaultParamsReadable``).

Arguments are checked when they are given (a bad one raises ``ValueError``/``TypeError`` at
once); the input column's type is checked when :meth:`transform` is called (``DataError``); a
bad *value* in the data (an index out of range, a vector of the wrong width) can only be seen
when Spark computes the rows, so it fails the Spark job that computes them with a
``pyspark.errors.SparkRuntimeException`` ``[USER_RAISED_EXCEPTION]`` whose message names the
transformer, the column, what was expected and what was found.

Where pyspark.ml already has the tool (``VectorAssembler``, ``StandardScaler``,
``MinMaxScaler``, ``OneHotEncoder``), prefer it: see docs/transformers.md.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import Vector
from pyspark.ml.param import Param, Params
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .data import SCALAR, VECTOR, DataError, as_array, column_kinds

__all__ = [
    "DenseTransformer", "LabelIndexTransformer", "MinMaxTransformer", "OneHotTransformer",
    "ReshapeTransformer", "StandardTransformer",
]


# ----------------------------------------------------------------------------------------------
# Type converters for the Params. pyspark's own reject numpy integers and accept bools as ints
# in some places; these accept any real number type and reject bools and non-finite values.

def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")
    if not float(value).is_integer():
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError("expected a number, got NaN")
    return value


def _to_float_list(value: Any) -> list[float]:
    """A number or a sequence of numbers -> a list of floats (a number becomes ``[x]``)."""
    if isinstance(value, Vector):
        value = value.toArray()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [_to_float(value)]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"expected a number or a list of numbers, got {type(value).__name__}")
    values = [_to_float(v) for v in value]
    if not values:
        raise ValueError("expected a number or a non-empty list of numbers, got an empty list")
    return values


def _to_int_list(value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"expected a sequence of integers, got {type(value).__name__}")
    return [_to_int(v) for v in value]


# ----------------------------------------------------------------------------------------------
# Column helpers: everything below builds JVM expressions.

def _quote(name: str) -> Column:
    """The top-level column ``name``, even when it holds dots or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def _fail(*parts: str | Column) -> Column:
    """An expression that fails the Spark task with a message built from ``parts``."""
    return F.raise_error(F.concat(*[F.lit(p) if isinstance(p, str) else p for p in parts]))


def _shown(column: Column) -> Column:
    """A value as text for an error message ('null' for a null)."""
    return F.coalesce(column.cast("string"), F.lit("null"))


def _map_values(column: Column, kind: str, fn: Callable[[Column, Column], Column],
                who: str, name: str, width: int | None = None) -> Column:
    """Apply ``fn(value, index)`` to every number; the output has the input's kind.

    A vector comes back as a dense vector, an array as array<double>, a number as a double;
    a null row stays null. With ``width``, a row of another width fails the job.
    """
    if kind == SCALAR:
        return fn(column.cast("double"), F.lit(0))
    values = as_array(column, kind)
    mapped = F.transform(values, fn)
    if kind == VECTOR:
        mapped = array_to_vector(mapped)
    result = F.when(values.isNull(), F.lit(None))
    if width is not None:
        result = result.when(F.size(values) != width, _fail(
            f"{who}: column '{name}' must hold {width} values per row, found ",
            F.size(values).cast("string")))
    return result.otherwise(mapped)


# ----------------------------------------------------------------------------------------------

class _ColumnTransformer(Transformer, HasInputCol, HasOutputCol,
                         DefaultParamsReadable, DefaultParamsWritable):
    """Base: one input column -> one output column through a JVM expression.

    Subclasses declare their Params, ``_names`` (constructor argument -> Param name),
    ``_required`` (Param names without a default), ``_check`` (argument checks) and
    ``_expression`` (the column expression). ``output_col`` defaults, as everywhere in
    pyspark.ml, to ``<uid>__output``; ``output_col == input_col`` replaces the column.
    """

    _names: dict[str, str] = {"input_col": "inputCol", "output_col": "outputCol"}
    _required: tuple[str, ...] = ("inputCol",)

    def _apply(self, kwargs: dict[str, Any], constructing: bool = False) -> _ColumnTransformer:
        """Set the given arguments and check them; on error the object is left unchanged.

        A constructor call with arguments must give every required one; a bare constructor
        call (what the persistence reader does) may not, and is checked at transform time.
        """
        unknown = sorted(set(kwargs) - set(self._names))
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown argument(s) {unknown}")
        previous = dict(self._paramMap)
        try:
            self._set(**{self._names[k]: v for k, v in kwargs.items() if v is not None})
            self._validate(require=constructing and bool(kwargs))
        except Exception:
            self._paramMap = previous
            raise
        return self

    def _validate(self, require: bool) -> None:
        if require:
            snake = {param: arg for arg, param in self._names.items()}
            missing = [snake[p] for p in self._required if not self.isDefined(self.getParam(p))]
            if missing:
                raise ValueError(f"{type(self).__name__}: missing required argument(s) "
                                 f"{', '.join(missing)}")
        self._check()

    def _check(self) -> None:
        """Raise ValueError for a bad combination of the Params that are set."""

    def _value(self, name: str) -> Any:
        param = self.getParam(name)
        return self.getOrDefault(param) if self.isDefined(param) else None

    def setInputCol(self, value: str) -> _ColumnTransformer:
        """Set `input_col`, the column read; returns this transformer."""
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> _ColumnTransformer:
        """Set `output_col`, the column written; returns this transformer."""
        return self._set(outputCol=value)

    def _expression(self, column: Column, kind: str, name: str) -> Column:
        raise NotImplementedError

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._validate(require=True)
        name = self.getInputCol()
        kind = column_kinds(dataset, [name], type(self).__name__)[name]
        return dataset.withColumn(self.getOutputCol(),
                                  self._expression(_quote(name), kind, name))


def _param(name: str, doc: str, converter: Callable[[Any], Any]) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class OneHotTransformer(_ColumnTransformer):
    """Class index -> one-hot dense vector of width ``output_dim``.

    Keras' categorical losses want one-hot targets; distkeras expands integer labels itself, so
    use this when another stage (or the saved data) needs the vector. The input column holds
    integers, or doubles with integral values (what ``StringIndexer`` writes). A null, a
    fraction, or an index outside ``[0, output_dim)`` fails the Spark job when the rows are
    computed (not at ``transform()``), with a message naming the column, the range and the
    value found. (``pyspark.ml.feature.OneHotEncoder`` writes *sparse* vectors and drops the
    last category by default, which is why this exists.)

    Args:
        output_dim: The number of classes, >= 1: the width of the one-hot vector.
            Required.
        input_col: The column of class indices. Required.
        output_col: The column written (a dense Vector). Defaults to `None`:
            `<uid>__output`. `output_col=input_col` replaces the input column.

    Raises:
        ValueError: A required argument is missing or `output_dim` < 1.
        TypeError: `output_dim` is not an integer.
        DataError: At `transform()`: `input_col` is missing or does not hold one number
            per row.

    Example:

    ```python
    one_hot = OneHotTransformer(output_dim=10, input_col="label", output_col="label_1h")
    df = one_hot.transform(df)
    ```
    """

    outputDim = _param("outputDim", "number of classes: the width of the one-hot vector",
                       _to_int)
    _names = {**_ColumnTransformer._names, "output_dim": "outputDim"}
    _required = ("outputDim", "inputCol")

    @keyword_only
    def __init__(self, *, output_dim: int | None = None, input_col: str | None = None,
                 output_col: str | None = None) -> None:
        super().__init__()
        self._apply(self._input_kwargs, constructing=True)

    @keyword_only
    def setParams(self, *, output_dim: int | None = None, input_col: str | None = None,
                  output_col: str | None = None) -> OneHotTransformer:
        """Set the given arguments (those of the constructor; `None` leaves one as it is).

        Returns:
            This transformer.

        Raises:
            ValueError: A value is out of range; nothing is changed.
            TypeError: A value has the wrong type; nothing is changed.
        """
        return self._apply(self._input_kwargs)

    def getOutputDim(self) -> int:
        """The number of classes (`output_dim`)."""
        return self.getOrDefault(self.outputDim)

    def _check(self) -> None:
        dim = self._value("outputDim")
        if dim is not None and dim < 1:
            raise ValueError(f"OneHotTransformer: output_dim must be >= 1, got {dim}")

    def _expression(self, column: Column, kind: str, name: str) -> Column:
        if kind != SCALAR:
            raise DataError(f"OneHotTransformer: column '{name}' holds a {kind}; expected one "
                            f"class index per row (LabelIndexTransformer turns predictions "
                            f"into indices)")
        dim = self.getOutputDim()
        index = column.cast("double")
        bad = (column.isNull() | F.isnan(index) | (index < 0) | (index >= dim)
               | (index != F.floor(index)))
        one_hot = F.transform(F.sequence(F.lit(0), F.lit(dim - 1)),
                              lambda i: F.when(i == index, 1.0).otherwise(0.0))
        return F.when(bad, _fail(
            f"OneHotTransformer: column '{name}' must hold integer class indices in "
            f"[0, {dim}), found ", _shown(column))).otherwise(array_to_vector(one_hot))


class LabelIndexTransformer(_ColumnTransformer):
    """Prediction vector/array -> class index (a double), the argmax of the activations.

    When the largest activation is below ``activation_threshold`` the row gets
    ``default_index`` instead (so -1, say, can mark "not confident"). The default threshold
    0.0 suits probabilities; for raw logits pass ``float('-inf')``. Ties go to the first
    index, as in ``numpy.argmax``. The columns default to ``prediction`` (what
    ``ModelPredictor`` writes) and ``prediction_index``. A row whose width is not
    ``output_dim``, a null row, or a NaN activation fails the Spark job when the rows are
    computed, naming the column.

    ```python
    index = argmax(row) if max(row) >= activation_threshold else default_index
    ```

    Args:
        output_dim: The number of classes, >= 1: the width of every row. Required.
        input_col: The column of prediction vectors or arrays. Defaults to
            `"prediction"`.
        output_col: The column written (a double). Defaults to `"prediction_index"`.
        activation_threshold: Below this largest activation the row gets
            `default_index`. Defaults to `0.0`.
        default_index: The index of a row below the threshold. Defaults to `0`.

    Raises:
        ValueError: `output_dim` is missing or < 1, or `activation_threshold` is NaN.
        TypeError: `output_dim` or `default_index` is not an integer, or
            `activation_threshold` not a number.
        DataError: At `transform()`: `input_col` is missing or holds one number per row.

    Example:

    ```python
    df = LabelIndexTransformer(output_dim=10).transform(predicted)  # "prediction_index"
    ```
    """

    outputDim = _param("outputDim", "number of classes: the width of the prediction vector",
                       _to_int)
    activationThreshold = _param("activationThreshold", "below this maximum activation the "
                                 "default index is used", _to_float)
    defaultIndex = _param("defaultIndex", "index given when no activation reaches the "
                          "threshold", _to_int)
    _names = {**_ColumnTransformer._names, "output_dim": "outputDim",
              "activation_threshold": "activationThreshold", "default_index": "defaultIndex"}
    _required = ("outputDim",)

    @keyword_only
    def __init__(self, *, output_dim: int | None = None, input_col: str = "prediction",
                 output_col: str = "prediction_index", activation_threshold: float = 0.0,
                 default_index: int = 0) -> None:
        super().__init__()
        self._setDefault(inputCol="prediction", outputCol="prediction_index",
                         activationThreshold=0.0, defaultIndex=0)
        self._apply(self._input_kwargs, constructing=True)

    @keyword_only
    def setParams(self, *, output_dim: int | None = None, input_col: str | None = None,
                  output_col: str | None = None, activation_threshold: float | None = None,
                  default_index: int | None = None) -> LabelIndexTransformer:
        """Set the given arguments (those of the constructor; `None` leaves one as it is).

        Returns:
            This transformer.

        Raises:
            ValueError: A value is out of range; nothing is changed.
            TypeError: A value has the wrong type; nothing is changed.
        """
        return self._apply(self._input_kwargs)

    def getOutputDim(self) -> int:
        """The number of classes (`output_dim`)."""
        return self.getOrDefault(self.outputDim)

    def getActivationThreshold(self) -> float:
        """The `activation_threshold`."""
        return self.getOrDefault(self.activationThreshold)

    def getDefaultIndex(self) -> int:
        """The `default_index`."""
        return self.getOrDefault(self.defaultIndex)

    def _check(self) -> None:
        dim = self._value("outputDim")
        if dim is not None and dim < 1:
            raise ValueError(f"LabelIndexTransformer: output_dim must be >= 1, got {dim}")

    def _expression(self, column: Column, kind: str, name: str) -> Column:
        if kind == SCALAR:
            raise DataError(f"LabelIndexTransformer: column '{name}' holds one number per "
                            f"row; expected a prediction vector or array")
        dim, who = self.getOutputDim(), "LabelIndexTransformer"
        values = as_array(column, kind)
        top = F.array_max(values)  # Spark orders NaN above every number
        argmax = (F.array_position(values, top) - 1).cast("double")
        return (F.when(values.isNull(), _fail(f"{who}: column '{name}' holds a null row"))
                .when(F.size(values) != dim, _fail(
                    f"{who}: column '{name}' must hold {dim} activations per row "
                    f"(output_dim), found ", F.size(values).cast("string")))
                .when(F.isnan(top), _fail(f"{who}: column '{name}' holds a NaN activation"))
                .when(top < self.getActivationThreshold(),
                      F.lit(float(self.getDefaultIndex())))
                .otherwise(argmax))


class MinMaxTransformer(_ColumnTransformer):
    """Rescale every value linearly from ``[n_min, n_max]`` to ``[o_min, o_max]``.

    For data whose range is known up front (pixels in [0, 255] -> [0, 1]) this needs no pass
    over the data, unlike ``pyspark.ml.feature.MinMaxScaler`` (which fits per-feature ranges
    and takes vectors only). Works on a vector (-> dense vector), an array (-> array<double>)
    or a number (-> double); values outside ``[n_min, n_max]`` map outside the output range
    (no clipping); nulls stay null.

    ```python
    y = (x - n_min) * (o_max - o_min) / (n_max - n_min) + o_min
    ```

    Args:
        n_min: The lower end of the input range, finite. Required.
        n_max: The upper end of the input range, finite, > `n_min`. Required.
        o_min: The lower end of the output range. Defaults to `0.0`.
        o_max: The upper end of the output range, > `o_min`. Defaults to `1.0`.
        input_col: The column to rescale. Required.
        output_col: The column written. Defaults to `None`: `<uid>__output`.
            `output_col=input_col` replaces the input column.

    Raises:
        ValueError: A required argument is missing, a bound is not finite, or a range
            is empty (`min >= max`).
        TypeError: A bound is not a number.
        DataError: At `transform()`: `input_col` is missing or not numeric.

    Example:

    ```python
    pixels = MinMaxTransformer(n_min=0, n_max=255, input_col="pixels", output_col="features")
    df = pixels.transform(df)
    ```
    """

    nMin = _param("nMin", "lower end of the input range", _to_float)
    nMax = _param("nMax", "upper end of the input range", _to_float)
    oMin = _param("oMin", "lower end of the output range", _to_float)
    oMax = _param("oMax", "upper end of the output range", _to_float)
    _names = {**_ColumnTransformer._names, "n_min": "nMin", "n_max": "nMax",
              "o_min": "oMin", "o_max": "oMax"}
    _required = ("nMin", "nMax", "inputCol")

    @keyword_only
    def __init__(self, *, n_min: float | None = None, n_max: float | None = None,
                 o_min: float = 0.0, o_max: float = 1.0, input_col: str | None = None,
                 output_col: str | None = None) -> None:
        super().__init__()
        self._setDefault(oMin=0.0, oMax=1.0)
        self._apply(self._input_kwargs, constructing=True)

    @keyword_only
    def setParams(self, *, n_min: float | None = None, n_max: float | None = None,
                  o_min: float | None = None, o_max: float | None = None,
                  input_col: str | None = None,
                  output_col: str | None = None) -> MinMaxTransformer:
        """Set the given arguments (those of the constructor; `None` leaves one as it is).

        Returns:
            This transformer.

        Raises:
            ValueError: A value is out of range; nothing is changed.
            TypeError: A value has the wrong type; nothing is changed.
        """
        return self._apply(self._input_kwargs)

    def getNMin(self) -> float:
        """The lower end of the input range (`n_min`)."""
        return self.getOrDefault(self.nMin)

    def getNMax(self) -> float:
        """The upper end of the input range (`n_max`)."""
        return self.getOrDefault(self.nMax)

    def getOMin(self) -> float:
        """The lower end of the output range (`o_min`)."""
        return self.getOrDefault(self.oMin)

    def getOMax(self) -> float:
        """The upper end of the output range (`o_max`)."""
        return self.getOrDefault(self.oMax)

    def _check(self) -> None:
        for lo, hi, label in (("nMin", "nMax", "n"), ("oMin", "oMax", "o")):
            low, high = self._value(lo), self._value(hi)
            for arg, value in ((f"{label}_min", low), (f"{label}_max", high)):
                if value is not None and math.isinf(value):
                    raise ValueError(f"MinMaxTransformer: {arg} must be finite, got {value}")
            if low is not None and high is not None and not low < high:
                raise ValueError(f"MinMaxTransformer: {label}_min must be < {label}_max, got "
                                 f"{label}_min={low}, {label}_max={high}")

    def _expression(self, column: Column, kind: str, name: str) -> Column:
        n_min, o_min = self.getNMin(), self.getOMin()
        scale = (self.getOMax() - o_min) / (self.getNMax() - n_min)
        return _map_values(column, kind, lambda x, i: (x - n_min) * scale + o_min,
                           "MinMaxTransformer", name)


class StandardTransformer(_ColumnTransformer):
    """Standardise with known statistics: ``(x - mean) / std``.

    ``mean`` and ``std`` are numbers (the same for every value) or per-feature lists; a list
    fixes the row width, and a row of another width fails the Spark job naming the column.
    ``std`` must be > 0. Use this when the statistics are known (e.g. MNIST's 0.1307/0.3081,
    or computed once on the training set and reused for the test set); to *fit* them use
    ``pyspark.ml.feature.StandardScaler`` (which takes vectors only and defaults to
    ``withMean=False``). Vector -> dense vector, array -> array<double>, number -> double.

    Args:
        mean: The value(s) subtracted: one number, or a list with one per feature.
            Required.
        std: The value(s) divided by, finite and > 0: one number, or a list with one per
            feature. Required.
        input_col: The column to standardise. Required.
        output_col: The column written. Defaults to `None`: `<uid>__output`.
            `output_col=input_col` replaces the input column.

    Raises:
        ValueError: A required argument is missing, `std` is not finite and > 0, `mean`
            is not finite, or `mean` and `std` have different lengths and neither is one
            number.
        TypeError: `mean` or `std` is not a number or a list of numbers.
        DataError: At `transform()`: `input_col` is missing or not numeric, or holds one
            number per row while `mean`/`std` are per-feature lists.

    Example:

    ```python
    df = StandardTransformer(mean=0.1307, std=0.3081, input_col="features",
                             output_col="features").transform(df)
    ```
    """

    mean = _param("mean", "value(s) subtracted: one number or one per feature", _to_float_list)
    std = _param("std", "value(s) divided by, > 0: one number or one per feature",
                 _to_float_list)
    _names = {**_ColumnTransformer._names, "mean": "mean", "std": "std"}
    _required = ("mean", "std", "inputCol")

    @keyword_only
    def __init__(self, *, mean: float | Sequence[float] | None = None,
                 std: float | Sequence[float] | None = None, input_col: str | None = None,
                 output_col: str | None = None) -> None:
        super().__init__()
        self._apply(self._input_kwargs, constructing=True)

    @keyword_only
    def setParams(self, *, mean: float | Sequence[float] | None = None,
                  std: float | Sequence[float] | None = None, input_col: str | None = None,
                  output_col: str | None = None) -> StandardTransformer:
        """Set the given arguments (those of the constructor; `None` leaves one as it is).

        Returns:
            This transformer.

        Raises:
            ValueError: A value is out of range; nothing is changed.
            TypeError: A value has the wrong type; nothing is changed.
        """
        return self._apply(self._input_kwargs)

    def getMean(self) -> list[float]:
        """The `mean`, as a list (one number becomes a list of one)."""
        return self.getOrDefault(self.mean)

    def getStd(self) -> list[float]:
        """The `std`, as a list (one number becomes a list of one)."""
        return self.getOrDefault(self.std)

    def _check(self) -> None:
        mean, std = self._value("mean"), self._value("std")
        if std is not None:
            bad = [(i, s) for i, s in enumerate(std) if not (0 < s < math.inf)]
            if bad:
                raise ValueError(f"StandardTransformer: std must be finite and > 0, got "
                                 f"{bad[0][1]} (at index {bad[0][0]})")
        if mean is not None and any(math.isinf(m) for m in mean):
            raise ValueError("StandardTransformer: mean must be finite")
        if mean and std and len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise ValueError(f"StandardTransformer: mean has {len(mean)} values and std "
                             f"{len(std)}; give the same number, or one number for all")

    def _expression(self, column: Column, kind: str, name: str) -> Column:
        mean, std = self.getMean(), self.getStd()
        width = max(len(mean), len(std))
        if width == 1:
            m, s = mean[0], std[0]
            return _map_values(column, kind, lambda x, i: (x - m) / s,
                               "StandardTransformer", name)
        if kind == SCALAR:
            raise DataError(f"StandardTransformer: column '{name}' holds one number per row "
                            f"but mean/std give {width} per-feature values")
        means = F.array(*[F.lit(v) for v in (mean * width if len(mean) == 1 else mean)])
        stds = F.array(*[F.lit(v) for v in (std * width if len(std) == 1 else std)])
        return _map_values(
            column, kind,
            lambda x, i: (x - F.element_at(means, i + 1)) / F.element_at(stds, i + 1),
            "StandardTransformer", name, width=width)


class DenseTransformer(_ColumnTransformer):
    """Sparse (or dense) vector, or numeric array -> dense Spark ML vector.

    Some consumers want every row dense (and ``toArray()`` on a sparse row per batch is slow
    in Python); this does the conversion in the JVM. Nulls stay null.

    Args:
        input_col: The vector or array column. Required.
        output_col: The column written. Defaults to `None`: `<uid>__output`.
            `output_col=input_col` replaces the input column.

    Raises:
        ValueError: `input_col` is missing.
        DataError: At `transform()`: `input_col` is missing from the DataFrame or holds
            one number per row.
    """

    @keyword_only
    def __init__(self, *, input_col: str | None = None, output_col: str | None = None) -> None:
        super().__init__()
        self._apply(self._input_kwargs, constructing=True)

    @keyword_only
    def setParams(self, *, input_col: str | None = None,
                  output_col: str | None = None) -> DenseTransformer:
        """Set the given arguments (those of the constructor; `None` leaves one as it is).

        Returns:
            This transformer.

        Raises:
            ValueError: A value is out of range; nothing is changed.
            TypeError: A value has the wrong type; nothing is changed.
        """
        return self._apply(self._input_kwargs)

    def _expression(self, column: Column, kind: str, name: str) -> Column:
        if kind == SCALAR:
            raise DataError(f"DenseTransformer: column '{name}' holds one number per row; "
                            f"expected a vector or an array (VectorAssembler builds vectors)")
        values = as_array(column, kind)
        return F.when(values.isNull(), F.lit(None)).otherwise(array_to_vector(values))


class ReshapeTransformer(_ColumnTransformer):
    """Flat vector/array -> nested arrays holding a tensor of ``shape`` (row-major).

    ``shape=(28, 28, 1)`` gives ``array<array<array<double>>>``; ``shape=(784,)`` a flat
    ``array<double>``. Useful for consumers that want the tensor layout in the DataFrame
    (Parquet, TFRecord, other libraries). distkeras' trainers do NOT need it: they reshape a
    flat column to the model's input shape themselves. A row whose width is not the product
    of ``shape`` fails the Spark job, naming the column, the expected and the actual width.

    Args:
        input_col: The flat vector or array column. Required.
        output_col: The column written. Defaults to `None`: `<uid>__output`.
            `output_col=input_col` replaces the input column.
        shape: The per-row tensor shape, a non-empty sequence of positive integers.
            Required.

    Raises:
        ValueError: A required argument is missing or `shape` is empty or holds a size
            < 1.
        TypeError: `shape` is not a sequence of integers.
        DataError: At `transform()`: `input_col` is missing or holds one number per row.

    Example:

    ```python
    df = ReshapeTransformer(input_col="features", output_col="image",
                            shape=(28, 28, 1)).transform(df)
    ```
    """

    shape = _param("shape", "the per-row tensor shape, e.g. [28, 28, 1]", _to_int_list)
    _names = {**_ColumnTransformer._names, "shape": "shape"}
    _required = ("shape", "inputCol")

    @keyword_only
    def __init__(self, *, input_col: str | None = None, output_col: str | None = None,
                 shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self._apply(self._input_kwargs, constructing=True)

    @keyword_only
    def setParams(self, *, input_col: str | None = None, output_col: str | None = None,
                  shape: Sequence[int] | None = None) -> ReshapeTransformer:
        """Set the given arguments (those of the constructor; `None` leaves one as it is).

        Returns:
            This transformer.

        Raises:
            ValueError: A value is out of range; nothing is changed.
            TypeError: A value has the wrong type; nothing is changed.
        """
        return self._apply(self._input_kwargs)

    def getShape(self) -> tuple[int, ...]:
        """The per-row tensor `shape`, as a tuple."""
        return tuple(self.getOrDefault(self.shape))

    def _check(self) -> None:
        shape = self._value("shape")
        if shape is not None and (not shape or any(d < 1 for d in shape)):
            raise ValueError(f"ReshapeTransformer: shape must be a non-empty list of "
                             f"positive sizes, got {tuple(shape)}")

    def _expression(self, column: Column, kind: str, name: str) -> Column:
        if kind == SCALAR:
            raise DataError(f"ReshapeTransformer: column '{name}' holds one number per row; "
                            f"expected a flat vector or array")
        shape = self.getShape()
        size = math.prod(shape)
        values = as_array(column, kind)

        def nest(flat: Column, start: Column | int, dims: tuple[int, ...]) -> Column:
            # the block of prod(dims) values of ``flat`` that begins at 0-based ``start``
            if len(dims) == 1:
                return F.slice(flat, start + 1, dims[0])
            step = math.prod(dims[1:])
            return F.transform(F.sequence(F.lit(0), F.lit(dims[0] - 1)),
                               lambda i: nest(flat, i * step + start, dims[1:]))

        # ``values`` is bound once to a lambda variable: referenced inside the inner lambdas
        # directly, Spark would convert the whole vector again for every slice
        tensor = values if len(shape) == 1 else F.element_at(
            F.transform(F.array(values), lambda flat: nest(flat, 0, shape)), 1)
        return (F.when(values.isNull(), F.lit(None))
                .when(F.size(values) != size, _fail(
                    f"ReshapeTransformer: column '{name}' must hold {size} values per row "
                    f"for shape {shape}, found ", F.size(values).cast("string")))
                .otherwise(tensor))
