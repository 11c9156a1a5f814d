"""The validation job (``distkeras.data.validate``) refuses bad rows before any training.

Small DataFrames and a tiny model: each case must raise :class:`DataError` naming the column
and an offending value. Most call ``plan_columns`` + ``validate`` as ``train()`` does; one goes
through ``train()`` itself to show that the error comes before a worker or server starts.
"""

from __future__ import annotations

import threading

import pytest

import distkeras
from distkeras import DataError
from distkeras.data import plan_columns, validate

pytestmark = pytest.mark.timeout(300)

WIDTH = 4
CLASSES = 10


def tiny_model():
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((WIDTH,)),
                             keras.layers.Dense(CLASSES, activation="softmax")])


def make_trainer(loss="categorical_crossentropy"):
    return distkeras.DOWNPOUR(tiny_model(), loss=loss, num_workers=2, num_epoch=1,
                              batch_size=4, verbose=0)


def frame(spark, rows, features_type, label_type):
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("features", features_type),
                           T.StructField("label", label_type)])
    return spark.createDataFrame(rows, schema)


def assert_refused(df, pattern, loss="categorical_crossentropy"):
    plan = plan_columns(df, "features", "label", tiny_model(), loss)
    with pytest.raises(DataError, match=pattern):
        validate(df, plan)


def array_of(element):
    from pyspark.sql import types as T

    return T.ArrayType(element(), containsNull=True)


def test_float_label_between_integer_min_and_max_is_refused(spark):
    from pyspark.sql import types as T

    # min 0 and max 9 are integers; 2.7 in between used to be trained as class 2
    rows = [([0.5] * WIDTH, label) for label in (0.0, 9.0, 2.7, 1.0, 3.0, 4.0, 5.0, 6.0)]
    df = frame(spark, rows, array_of(T.DoubleType), T.FloatType())
    with pytest.raises(DataError, match=r"column 'label': class indices must be integers "
                                         r"in \[0, 10\).*found 2\.7\b"):
        make_trainer().train(df)
    assert not [t for t in threading.enumerate() if t.name.startswith("distkeras-ps")]


def test_double_label_in_range_non_integer_is_refused(spark):
    from pyspark.sql import types as T

    rows = [([0.5] * WIDTH, label) for label in (0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 0.0, 1.0)]
    df = frame(spark, rows, array_of(T.DoubleType), T.DoubleType())
    assert_refused(df, r"column 'label': class indices must be integers in \[0, 10\).*"
                       r"found 0\.5\b", loss="sparse_categorical_crossentropy")


def test_out_of_range_label_gives_an_example_value(spark):
    from pyspark.sql import types as T

    rows = [([0.5] * WIDTH, label) for label in (0, 1, 2, 3, 4, 5, -3, 6)]
    df = frame(spark, rows, array_of(T.DoubleType), T.LongType())
    assert_refused(df, r"column 'label': class indices must be integers in \[0, 10\).*1 row.*"
                       r"found -3\b")


@pytest.mark.parametrize("element", ["double", "float"])
def test_null_inside_an_array_column_is_refused(spark, element):
    from pyspark.sql import types as T

    element_type = {"double": T.DoubleType, "float": T.FloatType}[element]
    rows = [([0.5] * WIDTH, 1)] * 7 + [([0.5, None, 0.5, 0.5], 1)]
    df = frame(spark, rows, array_of(element_type), T.LongType())
    assert_refused(df, r"column 'features': expected 4 numbers.*1 row\(s\) hold a null")


def test_clean_data_with_integer_valued_double_labels_passes(spark):
    from pyspark.sql import types as T

    rows = [([0.5] * WIDTH, float(label)) for label in (0, 9, 3, 1, 2, 4, 5, 6)]
    df = frame(spark, rows, array_of(T.FloatType), T.DoubleType())
    plan = plan_columns(df, "features", "label", tiny_model(), "categorical_crossentropy")
    assert validate(df, plan) == 8
