"""ModelPredictor and AccuracyEvaluator on real Spark (local[2]) against plain Keras/numpy."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import mlp, shift_layer

from distkeras import DataError

pytestmark = pytest.mark.timeout(300)

ROWS = 600  # held-out digits used for prediction


@pytest.fixture(scope="module")
def trained(digits):
    """A small MLP, trained for one epoch on the 4,000 training digits with model.fit."""
    x, y, _, _ = digits
    model = mlp(5, hidden=32)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def held_out(spark, digits):
    """Held-out digits: a Vector, an array, an index label and a one-hot label per row."""
    from pyspark.ml.linalg import Vectors

    _, _, xt, yt = digits
    xt, yt = xt[:ROWS], yt[:ROWS]
    rows = [(i, Vectors.dense(r), r.tolist(), int(v), Vectors.dense(np.eye(10)[v]))
            for i, (r, v) in enumerate(zip(xt, yt))]
    df = spark.createDataFrame(rows, ["id", "features", "pixels", "label", "onehot"])
    df = df.repartition(3).cache()  # several partitions, rows out of order
    df.count()
    yield df, xt, yt
    df.unpersist()


def by_id(df, *cols):
    """Columns of ``df`` as numpy arrays in ``id`` order (vectors -> 2-D arrays)."""
    rows = df.select("id", *cols).orderBy("id").collect()
    out = []
    for col in cols:
        values = [row[col] for row in rows]
        out.append(np.array([v.toArray() if hasattr(v, "toArray") else v for v in values]))
    return out


def test_predictions_equal_model_predict_for_vector_and_array_columns(trained, held_out):
    from distkeras.predictors import ModelPredictor

    df, xt, _ = held_out
    expected = trained.predict(xt, verbose=0)
    for column in ("features", "pixels"):
        predictor = ModelPredictor(trained, features_col=column, output_col="prediction",
                                   batch_size=64)  # 64 does not divide the partitions
        out = predictor.predict(df)
        assert out.columns == df.columns + ["prediction"]
        (got,) = by_id(out, "prediction")
        assert got.shape == (ROWS, 10)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_flat_rows_are_reshaped_to_the_model_input_shape_custom_layer_included(spark, held_out):
    import keras

    from distkeras.predictors import ModelPredictor

    Shift = shift_layer("distkeras_test_predictors")  # shipped to the workers by value
    df, xt, _ = held_out
    keras.utils.set_random_seed(2)
    conv = keras.Sequential([keras.Input((28, 28, 1)), Shift(0.5), keras.layers.Conv2D(4, 3),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    (got,) = by_id(ModelPredictor(conv, "features", "scores", 100).predict(df), "scores")
    np.testing.assert_allclose(got, conv.predict(xt.reshape(-1, 28, 28, 1), verbose=0),
                               atol=1e-5)


def test_multi_input_and_multi_output_model(spark, held_out):
    import keras

    from distkeras.predictors import ModelPredictor

    df, xt, yt = held_out
    df = df.withColumn("digit", df["label"].cast("double"))
    keras.utils.set_random_seed(3)
    image, digit = keras.Input((784,)), keras.Input((1,))
    hidden = keras.layers.Concatenate()([keras.layers.Dense(8, activation="relu")(image), digit])
    classes = keras.layers.Dense(10, activation="softmax")(hidden)
    score = keras.layers.Dense(1)(hidden)
    grid = keras.layers.Reshape((2, 3))(keras.layers.Dense(6)(hidden))
    model = keras.Model([image, digit], [classes, score, grid])

    predictor = ModelPredictor(model, ["features", "digit"], "out", batch_size=128)
    assert predictor.output_cols == ["out_0", "out_1", "out_2"]
    out = predictor.predict(df)
    assert out.columns == df.columns + ["out_0", "out_1", "out_2"]
    got = by_id(out, "out_0", "out_1", "out_2")
    expected = model.predict([xt, yt.reshape(-1, 1).astype(np.float32)], verbose=0)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.reshape(len(e), -1), atol=1e-5)


def test_model_is_cached_by_digest_in_the_worker_process(trained):
    from distkeras import predictors

    a = predictors.ModelPredictor(trained)
    b = predictors.ModelPredictor(trained, output_col="other")
    assert a.digest == b.digest  # same bytes, same cache entry on the workers
    shipped = predictors._Shipped(a.digest, a.keras_bytes, a._custom_objects)
    first = predictors._cached_model(shipped)
    assert predictors._cached_model(shipped) is first
    np.testing.assert_allclose(first.predict(np.zeros((2, 784), np.float32), verbose=0),
                               trained.predict(np.zeros((2, 784), np.float32), verbose=0),
                               atol=1e-6)


def test_bad_input_names_the_column_and_the_shapes(spark, trained, held_out):
    from distkeras.predictors import ModelPredictor

    df, _, _ = held_out
    with pytest.raises(DataError, match="'pixelz'"):
        ModelPredictor(trained, "pixelz").predict(df)
    narrow = df.selectExpr("id", "slice(pixels, 1, 64) AS small")
    with pytest.raises(DataError, match=r"column 'small'.*784 values.*\(784,\).*has 64"):
        ModelPredictor(trained, "small").predict(narrow)
    with pytest.raises(DataError, match="column 'name' has type string"):
        ModelPredictor(trained, "name").predict(df.selectExpr("'x' AS name"))
    with pytest.raises(DataError, match="2 column.*1 input"):
        ModelPredictor(trained, ["features", "pixels"])
    with pytest.raises(DataError, match="already exist"):
        ModelPredictor(trained, output_col="label").predict(df)
    with pytest.raises(ValueError, match="batch_size"):
        ModelPredictor(trained, batch_size=0)
    # a later row of the wrong width fails the Spark job with the same kind of message
    ragged = spark.createDataFrame([([0.5] * 784,), ([0.5] * 700,)], ["pixels"]).coalesce(1)
    with pytest.raises(Exception, match=r"column 'pixels'.*784 values.*has 700"):
        ModelPredictor(trained, "pixels").predict(ragged).collect()


def test_accuracy_evaluator_equals_numpy_accuracy(trained, held_out):
    from pyspark.sql import functions as F

    from distkeras.evaluators import AccuracyEvaluator
    from distkeras.predictors import ModelPredictor

    df, xt, yt = held_out
    expected = float((trained.predict(xt, verbose=0).argmax(axis=1) == yt).mean())
    out = ModelPredictor(trained).predict(df).cache()
    try:
        assert AccuracyEvaluator().evaluate(out) == pytest.approx(expected, abs=1e-12)
        # one-hot labels, array predictions, and a class index as the prediction
        assert AccuracyEvaluator("prediction", "onehot").evaluate(out) == \
            pytest.approx(expected, abs=1e-12)
        from pyspark.ml.functions import vector_to_array

        arrays = out.withColumn("probs", vector_to_array("prediction"))
        assert AccuracyEvaluator("probs", "label").evaluate(arrays) == \
            pytest.approx(expected, abs=1e-12)
        indexed = out.withColumn("guess", F.lit(3))
        assert AccuracyEvaluator("guess", "label").evaluate(indexed) == \
            pytest.approx(float((yt == 3).mean()), abs=1e-12)
        with pytest.raises(DataError, match="'nope'"):
            AccuracyEvaluator("nope").evaluate(out)
    finally:
        out.unpersist()


def test_pyspark_evaluators_on_model_predictor_output(trained, held_out):
    """The recipe of docs/prediction.md: pyspark.ml's own evaluators on our output."""
    from pyspark.ml.evaluation import (
        BinaryClassificationEvaluator,
        MulticlassClassificationEvaluator,
    )
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F
    from sklearn.metrics import f1_score, roc_auc_score

    from distkeras.evaluators import class_index
    from distkeras.predictors import ModelPredictor

    df, xt, yt = held_out
    probs = trained.predict(xt, verbose=0)
    predictions = ModelPredictor(trained).predict(df)

    # multiclass: a class-index column, from plain Spark SQL functions or class_index()
    arr = vector_to_array("prediction")
    scored = (predictions
              .withColumn("predicted", (F.array_position(arr, F.array_max(arr)) - 1)
                          .cast("double"))
              .withColumn("predicted2", class_index(predictions, "prediction"))
              .withColumn("label_d", F.col("label").cast("double"))).cache()
    accuracy = MulticlassClassificationEvaluator(predictionCol="predicted", labelCol="label_d",
                                                 metricName="accuracy").evaluate(scored)
    assert accuracy == pytest.approx(float((probs.argmax(1) == yt).mean()), abs=1e-12)
    f1 = MulticlassClassificationEvaluator(predictionCol="predicted2", labelCol="label_d",
                                           metricName="f1").evaluate(scored)
    assert f1 == pytest.approx(f1_score(yt, probs.argmax(1), average="weighted"), abs=1e-9)

    # binary ("is it a zero?"): one probability as a double rawPrediction column
    binary = scored.withColumn("is_zero", (F.col("label") == 0).cast("double")) \
        .withColumn("p_zero", F.element_at(arr, 1))
    auc = BinaryClassificationEvaluator(rawPredictionCol="p_zero", labelCol="is_zero",
                                        metricName="areaUnderROC").evaluate(binary)
    assert auc == pytest.approx(roc_auc_score(yt == 0, probs[:, 0]), abs=1e-3)
    scored.unpersist()


def test_boolean_and_decimal_features_and_labels_and_null_predictions(spark):
    """The column rule the trainers use: booleans are 0/1 and decimals numbers, for features
    and labels alike; a null prediction vector is left out of the accuracy, not a crash."""
    from decimal import Decimal

    import keras
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    from distkeras.evaluators import AccuracyEvaluator
    from distkeras.predictors import ModelPredictor

    schema = T.StructType([T.StructField("id", T.IntegerType()),
                           T.StructField("b", T.BooleanType()),
                           T.StructField("d", T.DecimalType(6, 2)),
                           T.StructField("scores", VectorUDT())])
    df = spark.createDataFrame([(0, True, Decimal("1.50"), Vectors.dense([0.2, 0.8])),
                                (1, False, Decimal("-2.25"), Vectors.dense([0.1, 0.9])),
                                (2, True, Decimal("0.00"), None)], schema)
    keras.utils.set_random_seed(1)
    inputs = [keras.Input((1,)), keras.Input((1,))]
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Concatenate()(inputs)))
    (got,) = by_id(ModelPredictor(model, ["b", "d"], "p").predict(df), "p")
    x = [np.array([[1.0], [0.0], [1.0]], np.float32), np.array([[1.5], [-2.25], [0.0]],
                                                                np.float32)]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
    # boolean labels are class indices 0/1: one hit, one miss, the row without scores left out
    assert AccuracyEvaluator("scores", "b").evaluate(df) == 0.5
