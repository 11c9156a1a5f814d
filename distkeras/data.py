"""From DataFrame columns to numpy batches, and the checks that run before any training.

A column holds a Spark ML Vector, an array of numbers, or one number (a class index or a
scalar target). :class:`ColumnPlan` records, per model input/output, which column feeds it,
the width found in the data and how a worker turns it into the model's tensor shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

    def to_numpy(self, values: Sequence) -> np.ndarray:
        """Rows of this column -> one float32 array of shape (rows, *shape)."""
        n = len(values)
        if self.scalar:
            array = np.asarray(values, dtype=np.float32).reshape(n)
            if self.one_hot:
                return np.eye(self.one_hot, dtype=np.float32)[array.astype(np.int64)]
            return array.reshape((n, *self.shape))
        array = np.empty((n, self.width), dtype=np.float32)
        for i, value in enumerate(values):
            array[i] = value.toArray() if hasattr(value, "toArray") else value
        return array.reshape((n, *self.shape))


@dataclass(frozen=True)
class ColumnPlan:
    features: tuple[Column, ...]
    labels: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.features + self.labels]

    def to_numpy(self, rows: Iterable) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """A partition's rows (in ``names`` order) -> (feature arrays, label arrays)."""
        rows = list(rows)
        columns = list(zip(*rows)) if rows else [[] for _ in self.names]
        arrays = [col.to_numpy(values) for col, values in
                  zip(self.features + self.labels, columns)]
        k = len(self.features)
        return arrays[:k], arrays[k:]


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


def _width_of(name: str, value) -> tuple[int, bool]:
    if value is None:
        raise DataError(f"column '{name}' has a null in its first row")
    if hasattr(value, "toArray"):
        return int(value.size), False
    if isinstance(value, (list, tuple, np.ndarray)):
        return len(value), False
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return 1, True
    raise DataError(f"column '{name}' is not numeric: first row holds a "
                    f"{type(value).__name__} ({value!r:.40})")


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
    first = dataframe.select(*features, *labels).first()
    if first is None:
        raise DataError(f"the DataFrame is empty: no rows in columns {features + labels}")
    sparse_loss = "sparse" in str(loss).lower()
    plan_f, plan_l = [], []
    for name, shape in zip(features, in_shapes):
        width, scalar = _width_of(name, first[name])
        expected = int(np.prod(shape))
        if width != expected:
            raise DataError(f"column '{name}': the model input expects {expected} values per "
                            f"row (shape {shape}), the data has {width}")
        plan_f.append(Column(name, width, scalar, shape))
    for name, shape in zip(labels, out_shapes):
        width, scalar = _width_of(name, first[name])
        expected = int(np.prod(shape))
        one_hot = expected if scalar and expected > 1 and not sparse_loss else 0
        if not scalar and width != expected:
            raise DataError(f"column '{name}': the model output has {expected} values per row "
                            f"(shape {shape}), the label has {width}")
        if scalar and sparse_loss:
            shape = ()
        plan_l.append(Column(name, width, scalar, shape, one_hot))
    return ColumnPlan(tuple(plan_f), tuple(plan_l))
