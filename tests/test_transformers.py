"""distkeras.transformers: values against numpy, Pipeline persistence, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.errors import SparkRuntimeException
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.linalg import DenseVector, Vectors, VectorUDT
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from distkeras.data import DataError
from distkeras.transformers import (
    DenseTransformer,
    LabelIndexTransformer,
    MinMaxTransformer,
    OneHotTransformer,
    ReshapeTransformer,
    StandardTransformer,
)

pytestmark = pytest.mark.timeout(300)

ROWS, WIDTH, CLASSES = 12, 6, 3


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(7)
    x = rng.uniform(0.0, 255.0, size=(ROWS, WIDTH)).round(3)
    probs = rng.dirichlet(np.ones(CLASSES), size=ROWS)
    probs[0] = [0.2, 0.4, 0.4]  # a tie: the first index wins, as in numpy.argmax
    probs[1] = [0.34, 0.33, 0.33]  # low confidence: below a 0.5 threshold
    y = rng.integers(0, CLASSES, size=ROWS)
    return x, probs, y


@pytest.fixture(scope="module")
def frame(spark, arrays):
    """Vector, sparse vector, array, float array, int, long and double columns."""
    x, probs, y = arrays
    schema = StructType([
        StructField("id", IntegerType()), StructField("v", VectorUDT()),
        StructField("sparse", VectorUDT()), StructField("a", ArrayType(DoubleType())),
        StructField("f", ArrayType(FloatType())), StructField("p", VectorUDT()),
        StructField("pa", ArrayType(DoubleType())), StructField("y", IntegerType()),
        StructField("yl", LongType()), StructField("yd", DoubleType()),
        StructField("s", DoubleType()), StructField("name", StringType()),
    ])
    rows = []
    for i in range(ROWS):
        nonzero = {j: float(x[i, j]) for j in range(0, WIDTH, 2)}
        rows.append((i, Vectors.dense(x[i]), Vectors.sparse(WIDTH, nonzero), x[i].tolist(),
                     x[i].astype(np.float32).tolist(), Vectors.dense(probs[i]),
                     probs[i].tolist(), int(y[i]), int(y[i]), float(y[i]), float(x[i, 0]),
                     f"row{i}"))
    df = spark.createDataFrame(rows, schema).coalesce(1).cache()
    df.count()
    yield df
    df.unpersist()


def column(df, name):
    """A column's values in id order: vectors and arrays as one numpy array."""
    values = [r[name] for r in df.orderBy("id").select(name).collect()]
    if values and isinstance(values[0], DenseVector):
        return np.array([v.toArray() for v in values])
    return np.array(values, dtype=float)


def fails(df, *patterns):
    """Computing ``df`` fails the Spark job with a message holding every pattern."""
    with pytest.raises(SparkRuntimeException) as info:
        df.collect()
    for pattern in patterns:
        assert pattern in str(info.value), str(info.value)


def assert_no_python(df):
    plan = df._jdf.queryExecution().executedPlan().toString()
    assert "Python" not in plan and "Arrow" not in plan, plan


# ---------------------------------------------------------------------------- OneHotTransformer

@pytest.mark.parametrize("source", ["y", "yl", "yd"])
def test_one_hot_matches_numpy_eye(frame, arrays, source):
    out = OneHotTransformer(output_dim=CLASSES, input_col=source, output_col="oh").transform(frame)
    assert isinstance(out.schema["oh"].dataType, VectorUDT)
    np.testing.assert_array_equal(column(out, "oh"), np.eye(CLASSES)[arrays[2]])
    assert_no_python(out)


@pytest.mark.parametrize("value, shown", [(-1.0, "found -1.0"), (3.0, "found 3.0"),
                                          (1.5, "found 1.5"), (None, "found null"),
                                          (math.nan, "found NaN")])
def test_one_hot_bad_index_fails_when_computed(spark, value, shown):
    df = spark.createDataFrame([(0.0,), (value,)], "label double")
    out = OneHotTransformer(output_dim=3, input_col="label", output_col="oh").transform(df)
    fails(out, "OneHotTransformer", "column 'label'", "[0, 3)", shown)


def test_one_hot_rejects_a_vector_column(frame):
    with pytest.raises(DataError, match="column 'v' holds a vector"):
        OneHotTransformer(output_dim=3, input_col="v", output_col="o").transform(frame)


# ------------------------------------------------------------------------ LabelIndexTransformer

@pytest.mark.parametrize("source", ["p", "pa"])
@pytest.mark.parametrize("threshold, default", [(0.0, 0), (0.5, -1), (-math.inf, 2)])
def test_label_index_is_argmax_or_default(frame, arrays, source, threshold, default):
    probs = arrays[1]
    expected = np.where(probs.max(axis=1) < threshold, default, probs.argmax(axis=1))
    transformer = LabelIndexTransformer(output_dim=CLASSES, input_col=source, output_col="idx",
                                        activation_threshold=threshold, default_index=default)
    out = transformer.transform(frame)
    assert out.schema["idx"].dataType == DoubleType()
    np.testing.assert_array_equal(column(out, "idx"), expected)
    assert expected[0] == (default if threshold > 0.4 else 1)  # the tie 0.2/0.4/0.4
    assert_no_python(out)


def test_label_index_checks_width_null_and_nan(spark, frame):
    wide = LabelIndexTransformer(output_dim=4, input_col="p", output_col="i").transform(frame)
    fails(wide, "LabelIndexTransformer", "column 'p'", "4 activations", "found 3")
    df = spark.createDataFrame([([0.1, 0.9],), (None,)], "p array<double>")
    t = LabelIndexTransformer(output_dim=2, input_col="p", output_col="i")
    fails(t.transform(df), "column 'p' holds a null row")
    nan = spark.createDataFrame([([0.1, math.nan],)], "p array<double>")
    fails(t.transform(nan), "column 'p' holds a NaN activation")
    with pytest.raises(DataError, match="column 'yd' holds one number"):
        LabelIndexTransformer(output_dim=3, input_col="yd", output_col="i").transform(frame)


# --------------------------------------------------------------- MinMax / Standard / Dense

@pytest.mark.parametrize("source", ["v", "sparse", "a", "f", "s"])
def test_min_max_keeps_the_kind_and_rescales(frame, arrays, source):
    x = arrays[0]
    expected = {"v": x, "a": x, "f": x.astype(np.float32).astype(float), "s": x[:, 0],
                "sparse": np.where(np.arange(WIDTH) % 2 == 0, x, 0.0)}[source]
    t = MinMaxTransformer(n_min=0, n_max=255, o_min=-1.0, o_max=1.0, input_col=source,
                          output_col="mm")
    out = t.transform(frame)
    kind = {"v": VectorUDT(), "sparse": VectorUDT(), "a": ArrayType(DoubleType()),
            "f": ArrayType(DoubleType()), "s": DoubleType()}[source]
    assert type(out.schema["mm"].dataType) is type(kind)
    np.testing.assert_allclose(column(out, "mm"), expected / 255.0 * 2.0 - 1.0, rtol=1e-12,
                               atol=1e-12)
    assert_no_python(out)


def test_min_max_default_output_range_and_nulls(spark):
    df = spark.createDataFrame([(0, 10.0), (1, 15.0), (2, 20.0), (3, None), (4, 30.0)],
                               "id int, s double")
    out = MinMaxTransformer(n_min=10, n_max=20, input_col="s", output_col="s").transform(df)
    assert out.columns == ["id", "s"]  # output_col == input_col replaces the column
    assert [r.s for r in out.orderBy("id").collect()] == [0.0, 0.5, 1.0, None, 2.0]


def test_standard_scalar_and_per_feature(frame, arrays):
    x = arrays[0]
    mean, std = x.mean(axis=0), x.std(axis=0)
    per_feature = StandardTransformer(mean=mean, std=std.tolist(), input_col="v",
                                      output_col="z")
    out = per_feature.transform(frame)
    z = column(out, "z")
    np.testing.assert_allclose(z, (x - mean) / std, rtol=1e-12)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-9)
    assert_no_python(out)
    scalar = StandardTransformer(mean=100.0, std=50.0, input_col="a", output_col="z")
    np.testing.assert_allclose(column(scalar.transform(frame), "z"), (x - 100.0) / 50.0)
    mixed = StandardTransformer(mean=mean.tolist(), std=2.0, input_col="a", output_col="z")
    np.testing.assert_allclose(column(mixed.transform(frame), "z"), (x - mean) / 2.0)


def test_standard_checks_the_width(frame):
    t = StandardTransformer(mean=[0.0] * 4, std=[1.0] * 4, input_col="a", output_col="z")
    fails(t.transform(frame), "StandardTransformer", "column 'a'", "4 values per row",
          f"found {WIDTH}")
    with pytest.raises(DataError, match="column 's' holds one number"):
        t.setParams(input_col="s").transform(frame)


def test_dense_from_sparse_and_array(frame, arrays):
    x = arrays[0]
    for source, expected in (("sparse", np.where(np.arange(WIDTH) % 2 == 0, x, 0.0)),
                             ("a", x)):
        out = DenseTransformer(input_col=source, output_col="d").transform(frame)
        values = [r.d for r in out.orderBy("id").collect()]
        assert all(isinstance(v, DenseVector) for v in values)
        np.testing.assert_array_equal(np.array([v.toArray() for v in values]), expected)
        assert_no_python(out)


# --------------------------------------------------------------------------- ReshapeTransformer

@pytest.mark.parametrize("shape", [(2, 3), (3, 2, 1), (1, 2, 3), (6,)])
def test_reshape_matches_numpy(frame, arrays, shape):
    out = ReshapeTransformer(input_col="v", output_col="t", shape=shape).transform(frame)
    dtype = out.schema["t"].dataType
    for _ in shape:
        assert isinstance(dtype, ArrayType)
        dtype = dtype.elementType
    assert dtype == DoubleType()
    got = np.array([r.t for r in out.orderBy("id").collect()])
    np.testing.assert_array_equal(got, arrays[0].reshape((ROWS, *shape)))
    assert_no_python(out)


def test_reshape_mnist_shape_and_bad_width(spark):
    pixels = np.arange(2 * 784, dtype=float).reshape(2, 784)
    df = spark.createDataFrame([(Vectors.dense(p),) for p in pixels] + [(None,)], ["x"])
    out = ReshapeTransformer(input_col="x", output_col="img", shape=[28, 28, 1]).transform(df)
    assert out.schema["img"].dataType.simpleString() == "array<array<array<double>>>"
    rows = [r.img for r in out.collect()]
    np.testing.assert_array_equal(np.array(rows[:2]), pixels.reshape(2, 28, 28, 1))
    assert rows[2] is None
    bad = ReshapeTransformer(input_col="x", output_col="img", shape=[28, 27])
    fails(bad.transform(df), "ReshapeTransformer", "column 'x'", "756 values per row",
          "(28, 27)", "found 784")


# ---------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("make, error, message", [
    (lambda: OneHotTransformer(output_dim=0, input_col="y", output_col="o"), ValueError,
     "output_dim must be >= 1"),
    (lambda: OneHotTransformer(output_dim=2.5, input_col="y", output_col="o"), TypeError,
     "integer"),
    (lambda: OneHotTransformer(output_dim=True, input_col="y", output_col="o"), TypeError,
     "integer"),
    (lambda: OneHotTransformer(input_col="y", output_col="o"), ValueError,
     "missing required argument(s) output_dim"),
    (lambda: OneHotTransformer(3, input_col="y", output_col="o"), TypeError, "keyword"),
    (lambda: LabelIndexTransformer(output_dim=3, input_col="p", output_col="i",
                                   activation_threshold=math.nan), ValueError, "NaN"),
    (lambda: MinMaxTransformer(n_min=1, n_max=1, input_col="s", output_col="o"), ValueError,
     "n_min must be < n_max"),
    (lambda: MinMaxTransformer(n_min=0, n_max=1, o_min=2, input_col="s", output_col="o"),
     ValueError, "o_min must be < o_max"),
    (lambda: MinMaxTransformer(n_min=0, n_max=math.inf, input_col="s", output_col="o"),
     ValueError, "n_max must be finite"),
    (lambda: StandardTransformer(mean=0, std=0, input_col="a", output_col="z"), ValueError,
     "std must be finite and > 0, got 0.0"),
    (lambda: StandardTransformer(mean=0, std=[1, -2], input_col="a", output_col="z"),
     ValueError, "got -2.0 (at index 1)"),
    (lambda: StandardTransformer(mean=[0, 1, 2], std=[1, 2], input_col="a", output_col="z"),
     ValueError, "mean has 3 values and std 2"),
    (lambda: StandardTransformer(mean=[], std=1, input_col="a", output_col="z"), ValueError,
     "empty"),
    (lambda: StandardTransformer(mean="0", std=1, input_col="a", output_col="z"), TypeError,
     "number"),
    (lambda: ReshapeTransformer(input_col="v", output_col="t", shape=[]), ValueError,
     "non-empty"),
    (lambda: ReshapeTransformer(input_col="v", output_col="t", shape=[0, 6]), ValueError,
     "positive"),
    (lambda: DenseTransformer(output_col="d"), ValueError, "input_col"),
])
def test_bad_arguments_fail_at_once(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)


def test_set_params_checks_and_rolls_back():
    t = StandardTransformer(mean=1.0, std=2.0, input_col="a", output_col="z")
    with pytest.raises(ValueError, match="std must be"):
        t.setParams(std=-1.0)
    assert t.getStd() == [2.0]
    assert t.setParams(std=[3, 4]).getStd() == [3.0, 4.0]
    assert OneHotTransformer(output_dim=np.int32(4), input_col="y",
                             output_col="o").getOutputDim() == 4
    defaults = LabelIndexTransformer(output_dim=10)  # reads what ModelPredictor writes
    assert (defaults.getInputCol(), defaults.getOutputCol()) == ("prediction", "prediction_index")
    assert (defaults.getActivationThreshold(), defaults.getDefaultIndex()) == (0.0, 0)


def test_bad_columns_fail_at_transform(frame):
    t = DenseTransformer(input_col="nope", output_col="d")
    with pytest.raises(DataError, match="column 'nope' is not in the DataFrame"):
        t.transform(frame)
    with pytest.raises(DataError, match="column 'name' has type string"):
        t.setInputCol("name").transform(frame)
    unset = OneHotTransformer()  # what the persistence reader builds, then fills in
    with pytest.raises(ValueError, match="missing required argument"):
        unset.transform(frame)


# ------------------------------------------------------------------------------ persistence

def test_pipeline_and_model_round_trip(frame, tmp_path):
    stages = [
        OneHotTransformer(output_dim=CLASSES, input_col="y", output_col="oh"),
        LabelIndexTransformer(output_dim=CLASSES, input_col="oh", output_col="back",
                              activation_threshold=0.5, default_index=-1),
        DenseTransformer(input_col="sparse", output_col="dense"),
        MinMaxTransformer(n_min=0, n_max=255, input_col="dense", output_col="mm"),
        StandardTransformer(mean=[0.5] * WIDTH, std=[0.25] * WIDTH, input_col="mm",
                            output_col="z"),
        ReshapeTransformer(input_col="z", output_col="t", shape=[3, 2]),
    ]
    pipeline = Pipeline(stages=stages)
    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = Pipeline.load(str(tmp_path / "pipeline"))
    for old, new in zip(stages, loaded.getStages()):
        assert type(new) is type(old) and new.uid == old.uid
        assert {p.name: v for p, v in new.extractParamMap().items()} == \
               {p.name: v for p, v in old.extractParamMap().items()}
    assert loaded.getStages()[1].getDefaultIndex() == -1
    assert loaded.getStages()[-1].getShape() == (3, 2)

    model = pipeline.fit(frame)
    model.write().overwrite().save(str(tmp_path / "model"))
    reloaded = PipelineModel.load(str(tmp_path / "model"))
    columns = ["id", "oh", "back", "dense", "mm", "z", "t"]
    expected = model.transform(frame).orderBy("id").select(columns).collect()
    assert reloaded.transform(frame).orderBy("id").select(columns).collect() == expected
    assert loaded.fit(frame).transform(frame).orderBy("id").select(columns).collect() == \
           expected
    assert [r.back for r in expected] == [float(r.y) for r in frame.orderBy("id").collect()]


def test_boolean_and_decimal_columns_are_numbers(spark):
    """The column rule the trainers use (distkeras.data.column_kind): a boolean is a 0/1
    number and a decimal a number, so they transform like any numeric column."""
    from decimal import Decimal

    from pyspark.sql.types import BooleanType, DecimalType

    schema = StructType([StructField("id", IntegerType()), StructField("b", BooleanType()),
                         StructField("d", DecimalType(6, 2)),
                         StructField("da", ArrayType(DecimalType(6, 2)))])
    df = spark.createDataFrame(
        [(i, i % 2 == 1, Decimal(f"{i}.50"), [Decimal(i), Decimal("0.25")]) for i in range(4)],
        schema)
    out = OneHotTransformer(output_dim=2, input_col="b", output_col="b1").transform(df)
    out = MinMaxTransformer(n_min=0, n_max=10, input_col="d", output_col="d1").transform(out)
    out = StandardTransformer(mean=[1.0, 0.0], std=[2.0, 0.5], input_col="da",
                              output_col="da1").transform(out)
    assert_no_python(out)
    np.testing.assert_array_equal(column(out, "b1"), np.eye(2)[np.arange(4) % 2])
    np.testing.assert_allclose(column(out, "d1"), (np.arange(4) + 0.5) / 10)
    np.testing.assert_allclose(column(out, "da1"),
                               [[(i - 1.0) / 2.0, 0.5] for i in range(4)])
    with pytest.raises(DataError, match="DenseTransformer: column 'b' holds one number"):
        DenseTransformer(input_col="b", output_col="x").transform(df)
