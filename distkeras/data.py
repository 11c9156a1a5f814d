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

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """The data does not fit the model; raised before any training starts."""


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

    def rows_to_numpy(self, values: Sequence) -> np.ndarray:
        """Row objects of this column (the RDD path) -> float32 array (rows, *shape)."""
        n = len(values)
        if self.scalar:
            return self._finish(np.asarray(values, dtype=np.float32), n)
        array = np.empty((n, self.width), dtype=np.float32)
        for i, value in enumerate(values):
            array[i] = value.toArray() if hasattr(value, "toArray") else value
        return self._finish(array, n)

    def arrow_to_numpy(self, chunks: list) -> np.ndarray:
        """Arrow arrays of this column (one per record batch) -> float32 array (rows, *shape)."""
        import pyarrow as pa

        n = sum(len(c) for c in chunks)
        out = np.empty(n * self.width, dtype=np.float32)
        offset = 0
        for chunk in chunks:
            if isinstance(chunk, pa.ChunkedArray):
                chunk = chunk.combine_chunks()
            values = chunk.flatten() if not self.scalar else chunk
            if not self.scalar and len(values) != len(chunk) * self.width:
                sizes = np.diff(np.asarray(chunk.offsets))
                bad = sizes[sizes != self.width]
                raise DataError(f"column '{self.name}': every row must hold {self.width} "
                                f"values, found a row with {bad[0] if bad.size else '?'}")
            size = len(values)
            out[offset:offset + size] = values.to_numpy(zero_copy_only=False)
            offset += size
        return self._finish(out, n)


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
        """The DataFrame workers read: only the plan's columns, Vectors as arrays."""
        from pyspark.ml.functions import vector_to_array
        from pyspark.sql import functions as F

        return dataframe.select(*[
            vector_to_array(F.col(c.name), "float32").alias(c.name) if c.vector
            else F.col(c.name) for c in self.columns])


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


def _kind(name: str, dtype) -> str:
    """'vector', 'array' or 'scalar' from the Spark type; DataError for anything else."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    if isinstance(dtype, VectorUDT):
        return "vector"
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType):
        return "array"
    if isinstance(dtype, T.NumericType) and not isinstance(dtype, T.DecimalType):
        return "scalar"
    if isinstance(dtype, T.BooleanType):
        return "scalar"
    raise DataError(f"column '{name}' is not numeric: its type is {dtype.simpleString()}; "
                    f"expected a Vector, an array of numbers or a number")


def _width(name: str, kind: str, value) -> int:
    if value is None:
        raise DataError(f"column '{name}' has a null in its first row")
    if kind == "vector":
        return int(value.size)
    if kind == "array":
        return len(value)
    return 1


def plan_columns(dataframe, features_col, label_col, model, loss=None) -> ColumnPlan:
    """Check the DataFrame against the model and decide how each column feeds it."""
    features, labels = _as_list(features_col), _as_list(label_col)
    missing = [c for c in features + labels if c not in dataframe.columns]
    if missing:
        raise DataError(f"column(s) {missing} not in the DataFrame; it has {dataframe.columns}")
    in_shapes = _per_sample_shapes(model.inputs)
    out_shapes = _per_sample_shapes(model.outputs)
    if len(features) != len(in_shapes):
        raise DataError(f"features_col names {len(features)} column(s) {features} but the "
                        f"model has {len(in_shapes)} input(s)")
    if len(labels) != len(out_shapes):
        raise DataError(f"label_col names {len(labels)} column(s) {labels} but the model "
                        f"has {len(out_shapes)} output(s)")
    types = {f.name: f.dataType for f in dataframe.schema.fields}
    kinds = {name: _kind(name, types[name]) for name in features + labels}
    first = dataframe.select(*features, *labels).first()
    if first is None:
        raise DataError(f"the DataFrame is empty: no rows in columns {features + labels}")
    sparse_loss = "sparse" in str(loss).lower()
    plan_f, plan_l = [], []
    for name, shape in zip(features, in_shapes):
        width = _width(name, kinds[name], first[name])
        expected = int(np.prod(shape))
        if width != expected:
            raise DataError(f"column '{name}': the model input expects {expected} values per "
                            f"row (shape {shape}), the data has {width}")
        plan_f.append(Column(name, width, kinds[name] == "scalar", shape,
                             vector=kinds[name] == "vector"))
    for name, shape in zip(labels, out_shapes):
        width = _width(name, kinds[name], first[name])
        scalar = kinds[name] == "scalar"
        expected = int(np.prod(shape))
        one_hot = expected if scalar and expected > 1 and not sparse_loss else 0
        if not scalar and width != expected:
            raise DataError(f"column '{name}': the model output has {expected} values per row "
                            f"(shape {shape}), the label has {width}")
        classes = expected if scalar and expected > 1 else 0
        if scalar and sparse_loss:
            shape = ()
        plan_l.append(Column(name, width, scalar, shape, one_hot,
                             vector=kinds[name] == "vector", classes=classes))
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
    sparse_loss = "sparse" in str(loss).lower()
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
        if c.scalar:
            checks.append(F.sum((F.isnan(col.cast("double")) |
                                 F.col(c.name).cast("double").isin(float("inf"), float("-inf")))
                                .cast("long")).alias(f"{c.name}|nonfinite"))
            if c.classes:
                value = col.cast("double")
                outside = (value < 0) | (value >= c.classes)
                fraction = value % 1 != 0  # no floor(): it returns a long, which overflows
                checks.append(F.min(col).alias(f"{c.name}|min"))
                checks.append(F.max(col).alias(f"{c.name}|max"))
                for key, bad in (("outside", outside), ("fraction", fraction)):
                    checks.append(F.sum(bad.cast("long")).alias(f"{c.name}|{key}"))
                    checks.append(F.first(F.when(bad, col), ignorenulls=True)
                                  .alias(f"{c.name}|{key}_example"))
        else:
            checks.append(F.sum((F.size(col) != c.width).cast("long")).alias(f"{c.name}|width"))
            checks.append(F.min(F.size(col)).alias(f"{c.name}|minwidth"))
            checks.append(F.max(F.size(col)).alias(f"{c.name}|maxwidth"))
            # a null element: isnan(null) is false, so the NaN/inf check below misses it
            null_element = F.exists(col, lambda x: x.isNull())
            checks.append(F.sum(null_element.cast("long")).alias(f"{c.name}|nullelement"))
            nonfinite = F.exists(col, lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
            checks.append(F.sum(nonfinite.cast("long")).alias(f"{c.name}|nonfinite"))
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
