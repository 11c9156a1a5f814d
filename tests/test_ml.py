"""KerasEstimator / KerasModel: Spark ML stages around a real distkeras trainer (local[2])."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from helpers import mlp

pytestmark = pytest.mark.timeout(300)

TRAIN_ROWS = 2000
EPOCHS = 3
TEST_ROWS = 300


@pytest.fixture(scope="module")
def frames(spark, digits):
    """(train, test, x_test, y_test): Spark ML vectors and integer labels, with a row id."""
    from pyspark.ml.linalg import Vectors

    x, y, xt, yt = digits
    train = spark.createDataFrame([(Vectors.dense(r), int(v)) for r, v in
                                   zip(x[:TRAIN_ROWS], y[:TRAIN_ROWS])], ["features", "label"])
    xt, yt = xt[:TEST_ROWS], yt[:TEST_ROWS]
    test = spark.createDataFrame([(i, Vectors.dense(r), int(v)) for i, (r, v) in
                                  enumerate(zip(xt, yt))], ["id", "features", "label"])
    train, test = train.cache(), test.cache()
    train.count(), test.count()
    yield train, test, xt, yt
    train.unpersist(), test.unpersist()


@pytest.fixture(scope="module")
def fitted(frames):
    """A KerasEstimator around a DOWNPOUR instance, fitted once."""
    from distkeras.ml import KerasEstimator
    from distkeras.trainers import DOWNPOUR

    # 3 epochs: DOWNPOUR's centre takes each worker's change / n, and one epoch of 2,000 rows
    # left it at exactly the bar below (0.700); 3 epochs reached 0.837
    trainer = DOWNPOUR(mlp(hidden=32), loss="categorical_crossentropy", num_workers=2,
                       num_epoch=EPOCHS, verbose=0, seed=3)
    estimator = KerasEstimator(trainer=trainer, predictionCol="scores")
    return estimator, estimator.fit(frames[0])


def predictions(df, column):
    rows = df.select("id", column).orderBy("id").collect()
    return np.array([row[column].toArray() for row in rows])


def test_fit_returns_a_model_whose_transform_adds_the_prediction(fitted, frames):
    from distkeras.evaluators import AccuracyEvaluator
    from distkeras.ml import KerasModel

    estimator, model = fitted
    _, test, xt, yt = frames
    assert isinstance(model, KerasModel)
    assert model.getPredictionCol() == "scores" and model.getFeaturesCol() == "features"
    assert estimator.getTrainer().history.samples_applied == TRAIN_ROWS * EPOCHS
    out = model.transform(test)
    assert out.columns == test.columns + ["scores"]
    got = predictions(out, "scores")
    np.testing.assert_allclose(got, model.keras_model.predict(xt, verbose=0), atol=1e-5)
    assert AccuracyEvaluator("scores", "label").evaluate(out) > 0.7


def test_keras_model_save_and_load_round_trips_without_pickle(fitted, frames, tmp_path):
    from distkeras.ml import KerasModel

    _, model = fitted
    _, test, _, _ = frames
    path = str(tmp_path / "keras_model")
    model.save(path)
    names = sorted(n for n in os.listdir(path) if not n.startswith("."))  # .crc files
    assert names == ["metadata", "model.keras"]
    with zipfile.ZipFile(os.path.join(path, "model.keras")) as archive:
        assert not [n for n in archive.namelist() if n.endswith((".pkl", ".pickle"))]
    parts = [p for p in os.listdir(os.path.join(path, "metadata")) if p.startswith("part-")]
    metadata = json.loads(open(os.path.join(path, "metadata", parts[0])).read())
    assert metadata["class"] == "distkeras.ml.KerasModel"
    assert metadata["paramMap"]["predictionCol"] == "scores"

    loaded = KerasModel.load(path)
    assert loaded.uid == model.uid
    assert loaded.getPredictionCol() == "scores"
    np.testing.assert_array_equal(predictions(loaded.transform(test), "scores"),
                                  predictions(model.transform(test), "scores"))
    with pytest.raises(Exception, match="already exists"):
        model.save(path)
    model.write().overwrite().save(path)  # overwrite replaces it
    assert KerasModel.load(path).uid == model.uid


def test_estimator_in_a_pipeline_and_pipeline_model_persistence(frames, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import VectorAssembler

    from distkeras.ml import KerasEstimator, KerasModel

    train, test, xt, _ = frames
    # the trainer by class name and keyword arguments; a Java stage in front of it
    estimator = KerasEstimator(trainer="DOWNPOUR", keras_model=mlp(2, hidden=32),
                               loss="categorical_crossentropy", num_workers=2, num_epoch=1,
                               verbose=0, featuresCol="assembled")
    assembler = VectorAssembler(inputCols=["features"], outputCol="assembled")
    pipeline_model = Pipeline(stages=[assembler, estimator]).fit(train)
    stage = pipeline_model.stages[-1]
    assert isinstance(stage, KerasModel) and stage.getFeaturesCol() == "assembled"
    assert estimator.getTrainer().features_col == "assembled"
    out = pipeline_model.transform(test)
    assert {"assembled", "prediction"} <= set(out.columns)
    before = predictions(out, "prediction")
    np.testing.assert_allclose(before, stage.keras_model.predict(xt, verbose=0), atol=1e-5)

    path = str(tmp_path / "pipeline_model")
    pipeline_model.save(path)
    loaded = PipelineModel.load(path)
    assert [type(s).__name__ for s in loaded.stages] == ["VectorAssembler", "KerasModel"]
    np.testing.assert_array_equal(predictions(loaded.transform(test), "prediction"), before)


def test_an_unfitted_pipeline_saves_the_estimator_params_only(tmp_path):
    from pyspark.ml import Pipeline

    from distkeras.ml import KerasEstimator
    from distkeras.trainers import ADAG

    estimator = KerasEstimator(ADAG(mlp(hidden=32), loss="categorical_crossentropy", verbose=0,
                                    features_col="pixels"), labelCol="digit", batchSize=64)
    assert estimator.getFeaturesCol() == "pixels"  # the trainer's column is the default
    path = str(tmp_path / "pipeline")
    Pipeline(stages=[estimator]).save(path)
    loaded = Pipeline.load(path).getStages()[0]
    assert isinstance(loaded, KerasEstimator) and loaded.uid == estimator.uid
    assert (loaded.getFeaturesCol(), loaded.getLabelCol(), loaded.getBatchSize()) == \
        ("pixels", "digit", 64)
    assert loaded.getTrainer() is None
    with pytest.raises(ValueError, match="setTrainer"):
        loaded.fit(None)


def test_model_from_a_plain_keras_model_and_constructor_checks(frames):
    from distkeras.ml import KerasEstimator, KerasModel

    _, test, xt, _ = frames
    model = mlp(4, hidden=32)
    stage = KerasModel(model, predictionCol="p", batchSize=50)
    np.testing.assert_allclose(predictions(stage.transform(test), "p"),
                               model.predict(xt, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="Trainer"):
        KerasEstimator(trainer="NoSuchTrainer", keras_model=model)
    with pytest.raises(TypeError, match="keras_model"):
        KerasEstimator(trainer="ADAG")
    with pytest.raises(TypeError, match="only accepted"):
        from distkeras.trainers import ADAG

        KerasEstimator(ADAG(model, loss="mse"), num_workers=2)
