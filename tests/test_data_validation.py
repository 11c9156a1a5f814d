"""The validation job (``distkeras.data.validate``) refuses bad rows before any training.

Small DataFrames and a tiny model: each case must raise :class:`DataError` naming the column
and an offending value. Most call ``plan_columns`` + ``validate``; the last ones go through
``train()``, which checks every row in the stage before the shuffle (``distkeras.data.checked``)
and words a failure as ``validate`` does, before any worker starts.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import server_threads

import distkeras
from distkeras import DataError
from distkeras.data import CHECK_FAILED, checked, plan_columns, validate

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
    assert not server_threads()


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


# ---- what a column may hold: one rule (distkeras.data.column_kind) for trainers, transformers,
# ---- predictors and evaluators
def test_boolean_and_decimal_columns_are_numbers_end_to_end(spark):
    """Booleans are 0/1 and decimals numbers, as scalars (a decimal array too); the columns
    workers read reach numpy as float32 (decimals cast to double in the JVM first)."""
    from decimal import Decimal

    import keras
    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("d", T.DecimalType(10, 3)), T.StructField("b", T.BooleanType()),
        T.StructField("da", T.ArrayType(T.DecimalType(10, 2))),
        T.StructField("label", T.DecimalType(5, 0)), T.StructField("flag", T.BooleanType())])
    rows = [(Decimal(f"{i}.250"), i % 2 == 1, [Decimal("0.50"), Decimal(f"-{i}.25")],
             Decimal(i % 3), i % 3 == 0) for i in range(6)]
    df = spark.createDataFrame(rows, schema)
    inputs = [keras.Input((1,)), keras.Input((1,)), keras.Input((2,))]
    hidden = keras.layers.Concatenate()(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(3, activation="softmax")(hidden),
                                 keras.layers.Dense(1, activation="sigmoid")(hidden)])
    plan = plan_columns(df, ["d", "b", "da"], ["label", "flag"], model,
                        ["categorical_crossentropy", "binary_crossentropy"])
    assert [c.scalar for c in plan.columns] == [True, True, False, True, True]
    assert validate(df, plan) == 6
    table = plan.arrow_frame(df).toArrow()
    assert str(table.schema.field("d").type) == "double"
    (d, b, da), (label, flag) = plan.arrow_to_numpy(iter(table.to_batches()))
    assert all(a.dtype == np.float32 for a in (d, b, da, label, flag))
    np.testing.assert_array_equal(d[:, 0], np.arange(6) + 0.25)
    np.testing.assert_array_equal(b[:, 0], np.arange(6) % 2)
    np.testing.assert_array_equal(da[:, 1], -(np.arange(6) + 0.25))
    np.testing.assert_array_equal(label, np.eye(3)[np.arange(6) % 3])  # one-hot from decimals
    np.testing.assert_array_equal(flag[:, 0], np.arange(6) % 3 == 0)
    # a decimal class index is checked like any other
    bad = spark.createDataFrame([(Decimal("1.000"), True, [Decimal(0), Decimal(1)],
                                  Decimal(7), False)] + rows, schema)
    with pytest.raises(DataError, match=r"column 'label': class indices.*\[0, 3\).*found 7"):
        validate(bad, plan_columns(bad, ["d", "b", "da"], ["label", "flag"], model,
                                   ["categorical_crossentropy", "binary_crossentropy"]))


def test_non_numeric_columns_are_refused_naming_column_and_type(spark):
    from pyspark.sql import types as T

    df = frame(spark, [([True] * WIDTH, 1)], array_of(T.BooleanType), T.LongType())
    with pytest.raises(DataError, match=r"column 'features' has type array<boolean>, which is "
                                        r"not numeric; expected a Spark ML Vector"):
        plan_columns(df, "features", "label", tiny_model())
    with pytest.raises(DataError, match=r"column 'nope' is not in the DataFrame"):
        plan_columns(df, "features", "nope", tiny_model())


def test_a_null_vector_row_is_named_not_a_spark_udf_failure(spark):
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    rows = [(Vectors.dense([0.5] * WIDTH), 1)] * 3 + [(None, 2)]
    df = frame(spark, rows, VectorUDT(), T.LongType())
    assert_refused(df, r"column 'features': 1 row\(s\) are null")


# ---- which losses take class indices: distkeras.data.is_sparse_loss ------------------------
@pytest.mark.parametrize("form", ["name", "instance", "config", "function"])
def test_sparse_loss_is_recognised_in_every_form(form):
    import keras

    from distkeras.data import is_sparse_loss

    forms = {
        "name": lambda sparse: f"{sparse}categorical_crossentropy",
        "instance": lambda sparse: (keras.losses.SparseCategoricalCrossentropy() if sparse
                                    else keras.losses.CategoricalCrossentropy()),
        "config": lambda sparse: keras.losses.serialize(forms["instance"](sparse)),
        "function": lambda sparse: (keras.losses.sparse_categorical_crossentropy if sparse
                                    else keras.losses.categorical_crossentropy),
    }
    assert is_sparse_loss(forms[form]("sparse_"))
    assert not is_sparse_loss(forms[form](""))


def test_sparse_loss_is_decided_by_the_loss_not_its_display_name():
    """The two old copies disagreed here: one read ``str(loss)``, the other ``loss.name``."""
    import keras

    from distkeras.data import is_sparse_loss

    assert is_sparse_loss(keras.losses.SparseCategoricalCrossentropy(name="xent"))
    assert not is_sparse_loss(keras.losses.CategoricalCrossentropy(name="sparse_looking"))

    class Smoothed(keras.losses.SparseCategoricalCrossentropy):
        pass

    assert is_sparse_loss(Smoothed())
    assert is_sparse_loss("SparseCategoricalCrossentropy")
    assert is_sparse_loss(keras.losses.serialize(keras.losses.sparse_categorical_crossentropy))
    model = tiny_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy())  # as train() reads it
    assert is_sparse_loss(model._compile_config.config["loss"])
    assert not is_sparse_loss(None) and not is_sparse_loss("mse")
    assert is_sparse_loss(["mse", "sparse_categorical_crossentropy"])  # any of them


def test_each_output_gets_its_own_loss_when_planning_labels(spark):
    """A list (or dict by output name) of losses decides per output: only the sparse output's
    integer label stays an index; the other output's label keeps the output's shape."""
    import keras
    from pyspark.sql import types as T

    inputs = keras.Input((WIDTH,))
    model = keras.Model(inputs, [keras.layers.Dense(CLASSES, name="digit")(inputs),
                                 keras.layers.Dense(1, name="size")(inputs)])
    schema = T.StructType([T.StructField("features", array_of(T.DoubleType)),
                           T.StructField("label", T.LongType()),
                           T.StructField("size", T.DoubleType())])
    df = spark.createDataFrame([([0.5] * WIDTH, 3, 1.5)], schema)
    for loss in (["sparse_categorical_crossentropy", "mse"],
                 {"size": "mse", "digit": keras.losses.SparseCategoricalCrossentropy()}):
        plan = plan_columns(df, "features", ["label", "size"], model, loss)
        assert [(c.shape, c.one_hot) for c in plan.labels] == [((), 0), ((1,), 0)]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("kind", ["vector", "array"])
def test_infinite_features_are_refused_naming_the_column(spark, kind, value):
    """+inf, -inf and NaN, each in the middle of a row (the check reads an array's max and
    min: a NaN must count as its max, -inf as its min)."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    rows = [[0.5] * WIDTH for _ in range(7)] + [[0.5, value, 0.5, 0.5]]
    if kind == "vector":
        df = frame(spark, [(Vectors.dense(r), 1) for r in rows], VectorUDT(), T.LongType())
    else:
        df = frame(spark, [(r, 1) for r in rows], array_of(T.DoubleType), T.LongType())
    assert_refused(df, r"'features'.*1 row.*(NaN|inf)")


@pytest.mark.parametrize("kind", ["vector", "array"])
def test_one_hot_label_columns_train_and_a_wrong_width_is_named(spark, kind):
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, WIDTH))
    classes = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0).astype(int)

    def label(c, width=CLASSES):
        one_hot = np.eye(width)[c].tolist()
        return Vectors.dense(one_hot) if kind == "vector" else one_hot

    label_type = VectorUDT() if kind == "vector" else array_of(T.DoubleType)
    df = frame(spark, [(r.tolist(), label(c)) for r, c in zip(x, classes)],
               array_of(T.DoubleType), label_type)
    trainer = make_trainer()
    trainer.train(df)  # one-hot labels go to the categorical loss as they are
    assert trainer.history.samples_applied == 64
    narrow = frame(spark, [(r.tolist(), label(c, 4)) for r, c in zip(x, classes)],
                   array_of(T.DoubleType), label_type)
    with pytest.raises(DataError, match=r"'label'.*10.*4"):
        make_trainer().train(narrow)
    assert not server_threads()


# ---- the same checks inside the training job: distkeras.data.checked ------------------------
def _bad_frames(spark):
    """One DataFrame per kind of bad row, the bad row last among clean ones."""
    from pyspark.sql import types as T

    clean = [([0.5] * WIDTH, 1.0)] * 15
    double_array = array_of(T.DoubleType)
    return {
        "null row": frame(spark, clean + [(None, 1.0)], double_array, T.DoubleType()),
        "width": frame(spark, clean + [([0.5] * 3, 1.0)], double_array, T.DoubleType()),
        "null element": frame(spark, clean + [([0.5, None, 0.5, 0.5], 1.0)], double_array,
                              T.DoubleType()),
        "nan": frame(spark, clean + [([0.5, float("nan"), 0.5, 0.5], 1.0)], double_array,
                     T.DoubleType()),
        "outside": frame(spark, clean + [([0.5] * WIDTH, 10.0)], double_array,
                         T.DoubleType()),
        "fraction": frame(spark, clean + [([0.5] * WIDTH, 2.5)], double_array,
                          T.DoubleType()),
    }


@pytest.mark.parametrize("case", ["null row", "width", "null element", "nan", "outside",
                                  "fraction"])
def test_train_refuses_a_bad_row_before_any_worker_starts(spark, case):
    """The rows are checked in the stage before the shuffle: the error is validate()'s, and
    no worker ever reached the parameter server."""
    loss = "sparse_categorical_crossentropy"
    df = _bad_frames(spark)[case]
    with pytest.raises(DataError) as expected:
        validate(df, plan_columns(df, "features", "label", tiny_model(), loss))
    trainer = make_trainer(loss)
    with pytest.raises(DataError) as raised:
        trainer.train(df)
    assert str(raised.value) == str(expected.value)
    assert raised.value.__cause__ is None  # not chained to Spark's stack trace
    assert trainer.history.connections == [] and trainer.history.samples_applied == 0
    assert not server_threads()


def test_checked_rows_are_unchanged_and_go_to_the_same_workers(spark):
    """The checks pass every value on as it was, so the shuffle deals each row to the same
    partition as without them (simulation.spark_partitions relies on that)."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    rng = np.random.default_rng(5)
    rows = [(Vectors.dense(rng.normal(size=WIDTH)), int(c)) for c in rng.integers(0, 10, 40)]
    # cached, as a training set usually is (an uncached DataFrame ending in repartition() has
    # that step merged into the trainer's repartition without the checks, kept with them)
    df = frame(spark, rows, VectorUDT(), T.LongType()).repartition(3).cache()
    plan = plan_columns(df, "features", "label", tiny_model(),
                        "sparse_categorical_crossentropy")

    def dealt(source):
        return source.repartition(2).rdd.glom().map(
            lambda part: [(list(r.features), r.label) for r in part]).collect()

    try:
        converted = plan.arrow_frame(df)
        assert dealt(checked(converted, plan)) == dealt(converted)
    finally:
        df.unpersist()


def test_a_failed_check_that_a_second_pass_does_not_find_still_names_the_column(spark):
    """If the data change between reads, validate() may find nothing: the error still says
    which column failed, as a DataError."""
    from pyspark.sql import types as T

    from distkeras.jobs import SparkJob

    df = frame(spark, [([0.5] * WIDTH, 1)] * 4, array_of(T.DoubleType), T.LongType())
    plan = plan_columns(df, "features", "label", tiny_model(), "categorical_crossentropy")

    error = RuntimeError(f"[USER_RAISED_EXCEPTION] {CHECK_FAILED} 'label'\nJVM stacktrace: ...")
    found = distkeras.Trainer._failure(None, error, SparkJob(df, 2, False, False), plan)
    assert isinstance(found, DataError)
    assert str(found).startswith(f"{CHECK_FAILED} 'label', but a second pass found no bad row")
