"""From DataFrame columns to numpy batches, and the checks that run before any training.

A column holds a Spark ML Vector, an array of numbers, or one number (a class index or a
scalar target). :class:`ColumnPlan` records, per model input/output, which column feeds it,
the width found in the data and how a worker turns it into the model's tensor shape.

Workers get their partition as Arrow record batches (``DataFrame.mapInArrow``): Vector
columns become ``array<double>`` in the JVM (``vector_to_array``), and each Arrow list column
becomes one numpy array without touching a Python object per row. Users who hold an RDD of
``(features, label)`` pairs keep a row path (:meth:`ColumnPlan.rows_to_numpy`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError  # noqa: F401 - also importable from here

VECTOR, ARRAY, SCALAR = "vector", "array", "scalar"


@dataclass(frozen=True)
class Column:
    name: str
    width: int  # numbers per row in the column (1 for a scalar column)
    scalar: bool  # the column holds one number per row, not a vector/array
    shape: tuple[int, ...]  # per-sample tensor shape the model expects
    one_hot: int = 0  # > 0: scalar class index to expand into this many classes
    vector: bool = False  # a Spark ML Vector column (converted to an array in the JVM)
    classes: int = 0  # > 0: a scalar class-index label for a model with this many outputs

    def _finish(self, flat: np.ndarray, n: int) -> np.ndarray:
        if self.scalar:
            flat = flat.reshape(n)
            if self.one_hot:
                return np.eye(self.one_hot, dtype=np.float32)[flat.astype(np.int64)]
        return flat.reshape((n, *self.shape))

    def finish(self, flat: np.ndarray) -> np.ndarray:
        """Stored rows ``(n, width)`` -> the model's tensor ``(n, *shape)`` (a class index
        one-hot encoded here, so that stored rows stay ``width`` numbers wide)."""
        return self._finish(flat, len(flat))

    def flat_rows(self, values: Sequence) -> np.ndarray:
        """Row objects of this column (the RDD path) -> float32 array (rows, width)."""
        array = np.empty((len(values), self.width), dtype=np.float32)
        if self.scalar:
            array[:, 0] = np.asarray(values, dtype=np.float32)
            return array
        for i, value in enumerate(values):
            array[i] = value.toArray() if hasattr(value, "toArray") else value
        return array

    def rows_to_numpy(self, values: Sequence) -> np.ndarray:
        """Row objects of this column (the RDD path) -> float32 array (rows, *shape)."""
        return self.finish(self.flat_rows(values))

    def flat_arrow(self, chunk) -> np.ndarray:
        """One Arrow array of this column -> float32 array (rows, width), without a copy
        where the values already are float32."""
        import pyarrow as pa

        if isinstance(chunk, pa.ChunkedArray):
            chunk = chunk.combine_chunks()
        values = chunk.flatten() if not self.scalar else chunk
        if not self.scalar and len(values) != len(chunk) * self.width:
            sizes = np.diff(np.asarray(chunk.offsets))
            bad = sizes[sizes != self.width]
            raise DataError(f"column '{self.name}': every row must hold {self.width} "
                            f"values, found a row with {bad[0] if bad.size else '?'}")
        flat = values.to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(len(chunk), self.width)

    def arrow_to_numpy(self, chunks: list) -> np.ndarray:
        """Arrow arrays of this column (one per record batch) -> float32 array (rows, *shape)."""
        n = sum(len(c) for c in chunks)
        out = np.empty((n, self.width), dtype=np.float32)
        offset = 0
        for chunk in chunks:
            out[offset:offset + len(chunk)] = self.flat_arrow(chunk)
            offset += len(chunk)
        return self.finish(out)


@dataclass(frozen=True)
class ColumnPlan:
    features: tuple[Column, ...]
    labels: tuple[Column, ...]

    @property
    def columns(self) -> tuple[Column, ...]:
        return self.features + self.labels

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def _split(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        k = len(self.features)
        return arrays[:k], arrays[k:]

    @property
    def row_bytes(self) -> int:
        """Bytes one row takes as a worker stores it: every column as float32, ``width``
        numbers (class indices are one-hot encoded per batch, not stored wide)."""
        return 4 * sum(c.width for c in self.columns)

    def arrow_chunks(self, batches: Iterable) -> Iterator[list[np.ndarray]]:
        """Arrow record batches -> per batch, one float32 ``(rows, width)`` array a column."""
        for batch in batches:
            chunk = [c.flat_arrow(batch.column(c.name)) for c in self.columns]
            del batch  # views of it live on in the chunk while the consumer needs them
            yield chunk
            del chunk  # not held while the next batch is read

    def row_chunks(self, rows: Iterable, size: int = 4096) -> Iterator[list[np.ndarray]]:
        """Row objects (in ``names`` order) -> per ``size`` rows, one float32
        ``(rows, width)`` array a column; never more than ``size`` rows as Python objects."""
        rows = iter(rows)
        while True:
            chunk = list(itertools.islice(rows, size))
            if not chunk:
                return
            yield [c.flat_rows(v) for c, v in zip(self.columns, zip(*chunk))]

    def finish(self, flats: Sequence[np.ndarray]):
        """Stored rows of each column -> ``(x, y)`` as ``train_on_batch`` takes them: one
        array for a single input (output), a list for several."""
        x, y = self._split([c.finish(f) for c, f in zip(self.columns, flats)])
        return x[0] if len(x) == 1 else x, y[0] if len(y) == 1 else y

    def rows_to_numpy(self, rows: Iterable) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """A partition's rows (in ``names`` order) -> (feature arrays, label arrays)."""
        rows = list(rows)
        columns = list(zip(*rows)) if rows else [[] for _ in self.names]
        return self._split([c.rows_to_numpy(v) for c, v in zip(self.columns, columns)])

    def arrow_to_numpy(self, batches: Iterator) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """A partition's Arrow record batches -> (feature arrays, label arrays).

        Each batch is converted and released as it arrives, so a worker holds its partition
        once as numpy (plus one record batch), never as Python row objects.
        """
        chunks: list[list] = [[] for _ in self.columns]
        for batch in batches:
            for i, column in enumerate(self.columns):
                chunks[i].append(batch.column(column.name))
        return self._split([c.arrow_to_numpy(ch) for c, ch in zip(self.columns, chunks)])

    def arrow_frame(self, dataframe):
        """The DataFrame workers read: only the plan's columns (:func:`worker_frame`)."""
        return worker_frame(dataframe, [c.name for c in self.columns])


def worker_frame(dataframe, names: Sequence[str]):
    """Columns ``names`` of ``dataframe`` as workers read them: Vectors as float arrays,
    decimals as doubles (Arrow would hand them to numpy as Python ``Decimal`` objects)."""
    types = {f.name: f.dataType for f in dataframe.schema.fields}
    return dataframe.select(*[_worker_column(name, types[name]) for name in names])


def _worker_column(name: str, dtype):
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if isinstance(dtype, VectorUDT):
        return as_array(F.col(name), VECTOR, "float").alias(name)
    if isinstance(dtype, T.DecimalType):
        return F.col(name).cast("double").alias(name)
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.DecimalType):
        return as_array(F.col(name), ARRAY).alias(name)
    return F.col(name)


def _as_list(columns: str | Sequence[str]) -> list[str]:
    return [columns] if isinstance(columns, str) else list(columns)


def _per_sample_shapes(tensors) -> list[tuple[int, ...]]:
    shapes = []
    for tensor in tensors:
        shape = tuple(tensor.shape)[1:]
        if any(d is None for d in shape):
            raise DataError(f"model tensor {getattr(tensor, 'name', '?')} has an unknown "
                            f"dimension {tuple(tensor.shape)}: distkeras needs fixed shapes")
        shapes.append(tuple(int(d) for d in shape))
    return shapes


def column_kind(name: str, dtype, who: str = "") -> str:
    """'vector', 'array' or 'scalar' for a column of Spark type ``dtype``; DataError else.

    A scalar is one number per row: any Spark numeric type, decimals included, or a boolean
    (0/1). An array holds numbers (not booleans); a vector is a Spark ML Vector. ``who``
    (a transformer's name, say) starts the error message.
    """
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    if isinstance(dtype, VectorUDT):
        return VECTOR
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType):
        return ARRAY
    if isinstance(dtype, (T.NumericType, T.BooleanType)):
        return SCALAR
    raise DataError(f"{who + ': ' if who else ''}column '{name}' has type "
                    f"{dtype.simpleString()}, which is not numeric; expected a Spark ML "
                    f"Vector, an array of numbers or a number")


def column_kinds(dataframe, names: Sequence[str], who: str = "") -> dict[str, str]:
    """:func:`column_kind` of each of ``names``; DataError naming any that are missing."""
    missing = [c for c in names if c not in dataframe.columns]
    if missing:
        what = f"column '{missing[0]}' is" if len(missing) == 1 else f"columns {missing} are"
        raise DataError(f"{who + ': ' if who else ''}{what} not in the DataFrame; it has "
                        f"{dataframe.columns}")
    types = {f.name: f.dataType for f in dataframe.schema.fields}
    return {name: column_kind(name, types[name], who) for name in names}


def as_array(column, kind: str, precision: str = "double"):
    """A column of ``kind`` as an ``array<double>`` (``precision="float"``: ``array<float>``)
    expression, computed in the JVM: a vector converted, an array cast, a number wrapped in a
    one-element array. A null row stays null (``vector_to_array`` alone fails on a null)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    if kind == VECTOR:
        numbers = "float32" if precision == "float" else "float64"
        return F.when(column.isNotNull(), vector_to_array(column, numbers))
    if kind == ARRAY:
        return column.cast(f"array<{precision}>")
    return F.when(column.isNotNull(), F.array(column.cast(precision)))


def is_sparse_loss(loss: Any) -> bool:
    """True for a loss that takes class indices, not one-hot rows (Keras'
    ``sparse_categorical_crossentropy`` and its kin), given as a name, a ``keras.losses.Loss``
    (a subclass counts), a serialized config dict (``keras.losses.serialize``) or a function.
    A list of losses (or a dict of them by output name) is sparse if any of them is."""
    if loss is None:
        return False
    if isinstance(loss, str):
        return "sparse" in loss.lower()
    if isinstance(loss, dict):
        if "class_name" not in loss:  # one loss per output name
            return any(is_sparse_loss(item) for item in loss.values())
        config = loss.get("config")
        if loss["class_name"] == "function":  # a function is serialized by its name
            return is_sparse_loss(config if isinstance(config, str) else None)
        return is_sparse_loss(loss["class_name"]) or (
            isinstance(config, dict) and is_sparse_loss(config.get("fn")))
    if isinstance(loss, (list, tuple)):
        return any(is_sparse_loss(item) for item in loss)
    if isinstance(loss, functools.partial):
        return is_sparse_loss(loss.func)
    classes = loss.__mro__ if isinstance(loss, type) else type(loss).__mro__
    if any("sparse" in c.__name__.lower() for c in classes):  # a Loss class or instance
        return True
    fn = getattr(loss, "fn", None)  # keras' LossFunctionWrapper around a function
    if fn is not None and fn is not loss and is_sparse_loss(fn):
        return True
    return "sparse" in str(getattr(loss, "__name__", "")).lower()  # a function


def _output_losses(loss: Any, model, count: int) -> list:
    """The loss of each of the model's ``count`` outputs, paired as ``compile()`` pairs them:
    a list by position, a dict by output name, anything else for every output."""
    if isinstance(loss, (list, tuple)) and len(loss) == count:
        return list(loss)
    if isinstance(loss, dict) and "class_name" not in loss:
        names = list(getattr(model, "output_names", None) or [])
        if len(names) == count and all(name in loss for name in names):
            return [loss[name] for name in names]
    return [loss] * count


def _width(name: str, kind: str, value) -> int:
    if value is None:
        raise DataError(f"column '{name}' has a null in its first row")
    if kind == VECTOR:
        return int(value.size)
    if kind == ARRAY:
        return len(value)
    return 1


def plan_columns(dataframe, features_col, label_col, model, loss=None) -> ColumnPlan:
    """Check the DataFrame against the model and decide how each column feeds it."""
    features, labels = _as_list(features_col), _as_list(label_col)
    kinds = column_kinds(dataframe, features + labels)
    in_shapes = _per_sample_shapes(model.inputs)
    out_shapes = _per_sample_shapes(model.outputs)
    if len(features) != len(in_shapes):
        raise DataError(f"features_col names {len(features)} column(s) {features} but the "
                        f"model has {len(in_shapes)} input(s)")
    if len(labels) != len(out_shapes):
        raise DataError(f"label_col names {len(labels)} column(s) {labels} but the model "
                        f"has {len(out_shapes)} output(s)")
    first = dataframe.select(*features, *labels).first()
    if first is None:
        raise DataError(f"the DataFrame is empty: no rows in columns {features + labels}")
    sparse_losses = [is_sparse_loss(item)
                     for item in _output_losses(loss, model, len(out_shapes))]
    plan_f, plan_l = [], []
    for name, shape in zip(features, in_shapes):
        width = _width(name, kinds[name], first[name])
        expected = int(np.prod(shape))
        if width != expected:
            raise DataError(f"column '{name}': the model input expects {expected} values per "
                            f"row (shape {shape}), the data has {width}")
        plan_f.append(Column(name, width, kinds[name] == SCALAR, shape,
                             vector=kinds[name] == VECTOR))
    for name, shape, sparse_loss in zip(labels, out_shapes, sparse_losses):
        width = _width(name, kinds[name], first[name])
        scalar = kinds[name] == SCALAR
        expected = int(np.prod(shape))
        one_hot = expected if scalar and expected > 1 and not sparse_loss else 0
        if not scalar and width != expected:
            raise DataError(f"column '{name}': the model output has {expected} values per row "
                            f"(shape {shape}), the label has {width}")
        classes = expected if scalar and expected > 1 else 0
        if scalar and sparse_loss:
            shape = ()
        plan_l.append(Column(name, width, scalar, shape, one_hot,
                             vector=kinds[name] == VECTOR, classes=classes))
    return ColumnPlan(tuple(plan_f), tuple(plan_l))


def plan_rdd_columns(rdd, model, loss=None) -> ColumnPlan:
    """The plan for an RDD of ``(features, label)`` pairs (the row path)."""
    first = rdd.first() if not rdd.isEmpty() else None
    if first is None:
        raise DataError("the RDD is empty: no (features, label) pairs")
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        raise DataError(f"the RDD must hold (features, label) pairs, its first element is "
                        f"{type(first).__name__}")
    (in_shape,), (out_shape,) = _per_sample_shapes(model.inputs), _per_sample_shapes(
        model.outputs)
    widths = []
    for value in first:
        scalar = np.ndim(value.toArray() if hasattr(value, "toArray") else value) == 0
        width = 1 if scalar else int(value.size if hasattr(value, "toArray") else len(value))
        widths.append((width, scalar))
    (fw, fs), (lw, ls) = widths
    if fw != int(np.prod(in_shape)):
        raise DataError(f"RDD features: the model input expects {int(np.prod(in_shape))} "
                        f"values per row (shape {in_shape}), the data has {fw}")
    expected = int(np.prod(out_shape))
    sparse_loss = is_sparse_loss(loss)
    if not ls and lw != expected:
        raise DataError(f"RDD label: the model output has {expected} values per row "
                        f"(shape {out_shape}), the label has {lw}")
    one_hot = expected if ls and expected > 1 and not sparse_loss else 0
    return ColumnPlan((Column("features", fw, fs, in_shape),),
                      (Column("label", lw, ls, () if ls and sparse_loss else out_shape,
                              one_hot, classes=expected if ls and expected > 1 else 0),))


def _shower(dtype):
    """How to print one value of a column of this Spark type in an error message."""
    from pyspark.sql import types as T

    if isinstance(dtype, T.FloatType):  # the shortest text that is this float32: 2.7
        return lambda value: str(np.float32(value))
    return str


CHECK_FAILED = "distkeras: a row failed the checks of column"


def _problems(c: Column, values) -> dict[str, Any]:
    """Each way a row of column ``c`` can be bad, as a boolean expression over ``values``
    (the column as :meth:`ColumnPlan.arrow_frame` reads it); a null row is checked apart."""
    from pyspark.sql import functions as F

    if c.scalar:
        number = values.cast("double")
        problems = {"nonfinite": F.isnan(number) | number.isin(float("inf"), float("-inf"))}
        if c.classes:
            problems["outside"] = (number < 0) | (number >= c.classes)
            problems["fraction"] = number % 1 != 0  # no floor(): it returns a long (overflow)
        return problems
    problems = {"width": F.size(values) != c.width}
    if not c.vector:  # a Spark ML Vector cannot hold a null number; an array can
        # a null element: array_max/min skip nulls, so the NaN/inf check misses it
        problems["nullelement"] = F.exists(values, lambda x: x.isNull())
    # built-in array functions, not a lambda per number (about a third faster): Spark orders
    # NaN above every number, so a NaN is the array's max, as +inf is
    high, low = F.array_max(values), F.array_min(values)
    problems["nonfinite"] = F.isnan(high) | (high == float("inf")) | (low == float("-inf"))
    return problems


def checked(frame, plan: ColumnPlan):
    """``frame`` (:meth:`ColumnPlan.arrow_frame`'s) with each row passed on unchanged, or
    its Spark task failed.

    :func:`validate`'s checks, folded into a stage the rows pass through anyway: put before
    the shuffle that spreads the rows over the workers, every row is checked before the first
    worker's task starts, without a job of its own. The failure says only which column; the
    trainer then runs :func:`validate` for the full message (:data:`CHECK_FAILED` marks it).
    """
    from pyspark.sql import functions as F

    columns = []
    for c in plan.columns:
        values = F.col(c.name)
        bad = functools.reduce(lambda a, b: a | b, _problems(c, values).values())
        # a null anywhere in ``ok`` (a null row, an array of nulls) fails too: when() wants true
        ok = values.isNotNull() & ~bad
        columns.append(F.when(ok, values)
                       .otherwise(F.raise_error(F.lit(f"{CHECK_FAILED} '{c.name}'")))
                       .alias(c.name))
    return frame.select(*columns)


def validate(dataframe, plan: ColumnPlan) -> int:
    """One Spark job over the data: row widths, NaN/inf, nulls, whole class indices in range.

    Returns the number of rows; raises :class:`DataError` naming the column, the expected and
    the actual values, before a single worker starts.
    """
    from pyspark.sql import functions as F

    frame = plan.arrow_frame(dataframe)
    checks = [F.count(F.lit(1)).alias("rows")]
    for c in plan.columns:
        col = F.col(c.name)
        checks.append(F.sum(col.isNull().cast("long")).alias(f"{c.name}|null"))
        for key, bad in _problems(c, col).items():
            checks.append(F.sum(bad.cast("long")).alias(f"{c.name}|{key}"))
            if key in ("outside", "fraction"):
                checks.append(F.first(F.when(bad, col), ignorenulls=True)
                              .alias(f"{c.name}|{key}_example"))
        if c.classes:
            checks.append(F.min(col).alias(f"{c.name}|min"))
            checks.append(F.max(col).alias(f"{c.name}|max"))
        if not c.scalar:
            checks.append(F.min(F.size(col)).alias(f"{c.name}|minwidth"))
            checks.append(F.max(F.size(col)).alias(f"{c.name}|maxwidth"))
    row = frame.agg(*checks).first().asDict()
    types = {f.name: f.dataType for f in frame.schema.fields}
    for c in plan.columns:
        nulls = row.get(f"{c.name}|null") or 0
        if nulls:
            raise DataError(f"column '{c.name}': {nulls} row(s) are null")
        if row.get(f"{c.name}|width"):
            raise DataError(f"column '{c.name}': expected {c.width} values in every row, found "
                            f"rows with {row[f'{c.name}|minwidth']} to "
                            f"{row[f'{c.name}|maxwidth']} ({row[f'{c.name}|width']} rows differ)")
        if row.get(f"{c.name}|nullelement"):
            raise DataError(f"column '{c.name}': expected {c.width} numbers in every row, "
                            f"{row[f'{c.name}|nullelement']} row(s) hold a null among them")
        if row.get(f"{c.name}|nonfinite"):
            raise DataError(f"column '{c.name}': {row[f'{c.name}|nonfinite']} row(s) hold NaN "
                            f"or inf")
        if c.classes:
            expected = (f"column '{c.name}': class indices must be integers in "
                        f"[0, {c.classes}) for a model with {c.classes} outputs")
            show = _shower(types[c.name])
            if row[f"{c.name}|outside"]:
                raise DataError(f"{expected}; {row[f'{c.name}|outside']} row(s) are outside it "
                                f"(values from {show(row[f'{c.name}|min'])} to "
                                f"{show(row[f'{c.name}|max'])}), found "
                                f"{show(row[f'{c.name}|outside_example'])}")
            if row[f"{c.name}|fraction"]:
                raise DataError(f"{expected}; {row[f'{c.name}|fraction']} row(s) are not "
                                f"whole numbers, found {show(row[f'{c.name}|fraction_example'])}")
    return int(row["rows"])
