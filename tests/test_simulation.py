"""The cluster simulator (distkeras.simulation): its mechanics, and its agreement with Spark.

The first part needs no Spark: determinism, staleness under equal and uneven speeds,
synchronous rounds, every sample applied once, per-worker optimizer state, replay of a trace.
The second part compares the simulator with real runs on the suite's local[2] SparkSession.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import rounds_of

from distkeras import algorithms
from distkeras.simulation import Speeds, Trace, shards, simulate, simulate_trainer
from distkeras.workers import WorkerError

pytestmark = pytest.mark.timeout(600)


def tiny_model(seed=3, classes=4, width=8):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((width,)), keras.layers.Dense(classes,
                                                                       activation="softmax")])


@pytest.fixture(scope="module")
def blobs():
    """Four separable Gaussian blobs: 600 rows of 8 features, integer labels."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    centres = rng.normal(0, 3, (4, 8))
    x = (centres[y] + rng.normal(0, 1, (600, 8))).astype(np.float32)
    return x, y


def run(blobs, algorithm, n, **kwargs):
    x, y = blobs
    kwargs.setdefault("loss", "categorical_crossentropy")
    kwargs.setdefault("batch_size", 16)
    return simulate(algorithm, tiny_model(), x, y, n, **kwargs)


def records(result):
    return [(r.worker, r.clock, r.staleness, r.samples) for r in result.history.commits]


# ---- mechanics -------------------------------------------------------------------------------
def test_same_seed_same_run_and_other_seed_other_timing(blobs):
    a = run(blobs, algorithms.DOWNPOUR(), 4, seed=5, num_epoch=2, speeds=Speeds(jitter=0.3))
    b = run(blobs, algorithms.DOWNPOUR(), 4, seed=5, num_epoch=2, speeds=Speeds(jitter=0.3))
    c = run(blobs, algorithms.DOWNPOUR(), 4, seed=6, num_epoch=2, speeds=Speeds(jitter=0.3))
    assert records(a) == records(b)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.virtual_time == b.virtual_time
    assert records(a) != records(c)


def test_equal_speeds_give_staleness_n_minus_1(blobs):
    n = 8
    result = run(blobs, algorithms.DOWNPOUR(), n, num_epoch=4, window=1,
                 speeds=Speeds(spread=0.0, jitter=0.0))
    stale = result.staleness
    # first round: everyone pulled the initial centre, so commit k has seen k others;
    # from then on, between a worker's pull and its commit every other worker committed once
    assert list(stale[:n]) == list(range(n))
    assert set(stale[n:]) == {n - 1}
    # with noisy speeds the mean stays close to n - 1
    noisy = run(blobs, algorithms.ADAG(), n, num_epoch=4, window=1,
                speeds=Speeds(spread=0.1, jitter=0.2))
    assert abs(noisy.mean_staleness - (n - 1)) <= 0.15 * (n - 1)


def test_stragglers_raise_max_staleness(blobs):
    n = 8
    even = run(blobs, algorithms.DOWNPOUR(), n, num_epoch=3, window=1)
    slow = run(blobs, algorithms.DOWNPOUR(), n, num_epoch=3, window=1,
               speeds=Speeds(stragglers=0.25, slowdown=4.0))
    assert even.max_staleness < 2 * (n - 1)
    assert slow.max_staleness >= 2.5 * (n - 1)
    # the two stragglers are the workers with ~4x the step time
    assert np.sum(slow.step_times > 2.5 * np.median(slow.step_times)) == 2


@pytest.mark.parametrize("algorithm", [algorithms.EASGD(), algorithms.ModelAveraging()],
                         ids=["EASGD", "ModelAveraging"])
def test_synchronous_rounds_are_ordered_and_wait_for_the_slowest(blobs, algorithm):
    n = 4
    fast = run(blobs, algorithm, n, num_epoch=2, window=3, speeds=Speeds(jitter=0.0))
    slow = run(blobs, algorithm, n, num_epoch=2, window=3,
               speeds=Speeds(jitter=0.0, stragglers=0.25, slowdown=5.0))
    for result in (fast, slow):
        clocks = [r.clock for r in result.history.commits]
        assert clocks == list(range(1, len(clocks) + 1))
        # rounds: every worker once per round, and no commit of a round arrived (virtual
        # time) before the previous round was complete: what makes staleness 0 true
        rounds = rounds_of(result.history.commits)
        assert [sorted(r.worker for r in members) for members in rounds] == \
            [list(range(n))] * len(rounds)
    # a round ends when its slowest member arrives: one straggler slows everybody down
    assert slow.virtual_time > 3.5 * fast.virtual_time


def test_synchronous_rounds_finish_with_unequal_partitions(blobs):
    x, _ = blobs
    parts = [np.arange(0, 100), np.arange(100, 400), np.arange(400, 600)]  # 7, 19, 13 batches
    result = run(blobs, algorithms.EASGD(), 3, num_epoch=2, window=2, partitions=parts)
    assert result.history.samples_applied == 2 * len(x)
    assert set(result.history.finished) == {0, 1, 2}


@pytest.mark.parametrize("name", ["Replace", "DOWNPOUR", "AGN", "ADAG", "DynSGD", "AEASGD",
                                  "EAMSGD", "ModelAveraging", "EASGD"])
def test_every_sample_is_applied_once(blobs, name):
    x, _ = blobs
    algorithm = getattr(algorithms, name)()
    n = 1 if name == "Replace" else 3
    window = math.inf if name in ("Replace", "ModelAveraging") else 4
    result = run(blobs, algorithm, n, num_epoch=3, window=window, batch_size=32,
                 exchange_each_epoch=name == "ModelAveraging",
                 speeds=Speeds(stragglers=0.34, slowdown=3.0))
    assert result.history.samples_applied == 3 * len(x)
    assert result.rows_per_worker == [len(p) for p in shards(len(x), n, 0)]
    assert sum(result.rows_per_worker) == len(x)
    assert np.isfinite(result.weights).all()


def test_each_worker_keeps_its_own_optimizer_state(blobs):
    """Model averaging of two workers, one exchange at the very end: the centre must be the
    sample-weighted mean of two independently trained replicas, each with a fresh Adam."""
    import keras

    from distkeras.workers import batch_order

    x, y = blobs
    parts = [np.arange(0, 200), np.arange(200, 600)]
    result = run(blobs, algorithms.ModelAveraging(), 2, num_epoch=2, window=math.inf,
                 partitions=parts, optimizer="adam", seed=9)
    replicas = []
    for k, part in enumerate(parts):
        model = tiny_model()
        model.compile(keras.optimizers.Adam(), "categorical_crossentropy")
        onehot = np.eye(4, dtype=np.float32)[y[part]]
        spec = type("Spec", (), {"seed": 9, "shuffle": True})
        for epoch in range(2):
            order = batch_order(spec, k, epoch, len(part))
            for b in range(math.ceil(len(part) / 16)):
                index = order[b * 16:(b + 1) * 16]
                model.train_on_batch(x[part][index], onehot[index])
        replicas.append(np.concatenate([w.ravel() for w in model.get_weights()]))
    expected = (200 * replicas[0] + 400 * replicas[1]) / 600
    np.testing.assert_allclose(result.weights, expected, rtol=1e-5, atol=1e-6)


def test_replaying_a_trace_reproduces_the_run(blobs):
    first = run(blobs, algorithms.DynSGD(), 5, num_epoch=2, window=3,
                speeds=Speeds(spread=0.5, jitter=0.5, stragglers=0.2))
    again = run(blobs, algorithms.DynSGD(), 5, num_epoch=2, window=3,
                trace=Trace.from_history(first.history))
    assert records(again) == records(first)
    np.testing.assert_array_equal(again.weights, first.weights)


def test_measured_speeds_drive_the_timing(blobs):
    # 150 rows per worker in batches of 15: samples / batch size is the number of steps
    first = run(blobs, algorithms.DOWNPOUR(), 4, num_epoch=2, window=2, batch_size=15,
                speeds=Speeds(stragglers=0.25, slowdown=3.0, start_spread=5.0, jitter=0.0))
    speeds = Speeds.from_history(first.history, batch_size=15, jitter=0.0)
    assert len(speeds.measured_steps) == 4
    np.testing.assert_allclose(np.sort(speeds.measured_steps), np.sort(first.step_times),
                               rtol=0.05)
    again = run(blobs, algorithms.DOWNPOUR(), 4, num_epoch=2, window=2, batch_size=15,
                speeds=speeds)
    assert abs(again.mean_staleness - first.mean_staleness) <= 0.1 * first.mean_staleness


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow while checking
def test_divergence_fails_like_a_real_worker(blobs):
    with pytest.raises(WorkerError, match="NaN|non-finite|inf"):
        run(blobs, algorithms.DOWNPOUR(), 2, num_epoch=2, window=2,
            optimizer={"class_name": "SGD", "config": {"learning_rate": 1e38}})


def test_easgd_diverges_past_its_stability_bound(blobs):
    """Why the EASGD trainer refuses (n + 1) alpha >= 2: a round scales the gap between the
    centre and the workers' mean by 1 - (n + 1) alpha. With 8 workers, alpha = 0.2 (factor
    -0.8) trains; alpha = 0.3 (factor -1.7) sends the centre off, whatever the gradients do."""
    x, y = blobs

    def centre_norm(alpha):
        result = run(blobs, algorithms.EASGD(rho=alpha / 0.1, learning_rate=0.1), 8,
                     num_epoch=8, window=2,
                     optimizer={"class_name": "SGD", "config": {"learning_rate": 0.1}})
        return float(np.abs(result.weights).max()), result.accuracy(x, y)

    stable_norm, stable_accuracy = centre_norm(0.2)
    unstable_norm, unstable_accuracy = centre_norm(0.3)
    assert stable_accuracy > 0.9
    assert unstable_norm > 100 * stable_norm and unstable_accuracy < 0.5


def test_easgd_trainer_rejects_an_unstable_elastic_rate():
    import distkeras

    with pytest.raises(ValueError, match=r"num_workers=64.*\(num_workers \+ 1\) \* alpha < 2"):
        distkeras.EASGD(tiny_model(), loss="categorical_crossentropy", num_workers=64, rho=5.0)
    distkeras.EASGD(tiny_model(), loss="categorical_crossentropy", num_workers=32,
                    rho=5.0)  # (n + 1) alpha = 1.65: ok
    distkeras.EASGD(tiny_model(), loss="categorical_crossentropy", num_workers=64,
                    rho=0.9 / (64 * 0.01))
    distkeras.EASGD(tiny_model(), loss="categorical_crossentropy", num_workers=64)  # rho=None


def test_bad_speeds_are_rejected():
    with pytest.raises(ValueError, match="stragglers"):
        Speeds(stragglers=1.5)
    with pytest.raises(ValueError, match="slowdown"):
        Speeds(slowdown=0.5)
    with pytest.raises(ValueError, match="step_time"):
        Speeds(step_time=0)


# ---- agreement with real Spark runs ----------------------------------------------------------
EPOCHS = 5
ACCURACY_POINTS = 0.02  # the bar: simulated accuracy within 2 points of the real one
STALENESS_SHARE = 0.20  # and mean staleness within 20 %


def mlp(seed=1):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def make(name, n, epochs=EPOCHS, seed=7):
    import distkeras

    return getattr(distkeras, name)(mlp(), worker_optimizer="adam",
                                    loss="categorical_crossentropy", metrics=[],
                                    num_workers=n, batch_size=32, num_epoch=epochs,
                                    communication_window=5, verbose=0, seed=seed)


def flat(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0, batch_size=500).argmax(axis=1) == y).mean())


SEEDS = (7, 8)  # the agreement is judged on the mean of two runs: one run is too noisy
RUNS = [("SingleTrainer", 1, 2, (7,)), ("EASGD", 2, 2, (7,)), ("DOWNPOUR", 2, EPOCHS, SEEDS),
        ("ADAG", 2, EPOCHS, SEEDS), ("DOWNPOUR", 4, EPOCHS, SEEDS), ("ADAG", 4, EPOCHS, SEEDS)]


@pytest.fixture(scope="module")
def real_runs(digits_df, digits):
    """Real runs on the suite's local[2] session, and the shards their workers trained on:
    {(trainer, n, seed): (trainer, model, shards, held-out accuracy, epochs)}."""
    from distkeras.simulation import spark_partitions

    x, y, xt, yt = digits
    out = {}
    for name, n, epochs, seeds in RUNS:
        parts = spark_partitions(digits_df, x, n, single_worker=name == "SingleTrainer")
        for seed in seeds:
            trainer = make(name, n, epochs, seed)
            model = trainer.train(digits_df)
            out[(name, n, seed)] = (trainer, model, parts, accuracy(model, xt, yt), epochs)
    return out


def test_one_worker_simulation_is_the_real_run(real_runs, digits):
    """n = 1: no timing at all, so the simulator must reproduce the real run bit for bit
    (same shard order, batch order, Keras model, optimizer and exchanges)."""
    x, y, _, _ = digits
    _, model, parts, _, epochs = real_runs[("SingleTrainer", 1, 7)]
    result = simulate_trainer(make("SingleTrainer", 1, epochs), x, y, partitions=parts)
    np.testing.assert_array_equal(result.weights, flat(model))


@pytest.mark.parametrize("name,n", [("DOWNPOUR", 2), ("ADAG", 2), ("EASGD", 2),
                                    ("DOWNPOUR", 4), ("ADAG", 4)])
def test_replay_of_a_real_run_is_exact(real_runs, digits, name, n):
    """In the real commit order (read from the server's history), on the same shards, the
    simulator's server half, clock and staleness must give the real centre variable exactly;
    n = 4 runs 2 tasks at a time on local[2], which the replay follows as well."""
    x, y, _, _ = digits
    trainer, model, parts, _, epochs = real_runs[(name, n, 7)]
    result = simulate_trainer(make(name, n, epochs), x, y, partitions=parts,
                              trace=Trace.from_history(trainer.history))
    real = sorted(((r.worker, r.clock, r.staleness, r.samples)
                   for r in trainer.history.commits), key=lambda r: r[1])
    assert records(result) == real
    np.testing.assert_array_equal(result.weights, flat(model))


def compare(real_runs, digits, name, n, measured):
    """Mean over SEEDS of (real accuracy, simulated accuracy, real staleness, simulated
    staleness); the simulation runs with the real run's seed and shards, and with the
    workers' measured speeds or the uniform model used for extrapolation."""
    x, y, xt, yt = digits
    rows = []
    for seed in SEEDS:
        trainer, _, parts, real_accuracy, epochs = real_runs[(name, n, seed)]
        speeds = Speeds.from_history(trainer.history, 32) if measured else Speeds()
        result = simulate_trainer(make(name, n, epochs, seed), x, y, partitions=parts,
                                  speeds=speeds)
        rows.append((real_accuracy, result.accuracy(xt, yt),
                     np.mean([r.staleness for r in trainer.history.commits]),
                     result.mean_staleness))
    return np.mean(rows, axis=0)


@pytest.mark.parametrize("name", ["DOWNPOUR", "ADAG"])
def test_simulator_agrees_with_spark_at_two_workers(real_runs, digits, name):
    """The issue's check at n = 2, where local[2] runs both workers at once. The simulator
    configured with the speeds and start times the real workers had (measured from the
    server's history): accuracy within 2 points and mean staleness within 20 % of the real
    runs'. The uniform-speed model used for extrapolation: accuracy within 2 points (its
    staleness follows from equal machines, the real one from how this machine schedules two
    processes)."""
    real_acc, sim_acc, real_stale, sim_stale = compare(real_runs, digits, name, 2, True)
    assert abs(sim_acc - real_acc) <= ACCURACY_POINTS, (real_acc, sim_acc)
    assert abs(sim_stale - real_stale) <= STALENESS_SHARE * real_stale, (real_stale, sim_stale)
    real_acc, sim_acc, _, _ = compare(real_runs, digits, name, 2, False)
    assert abs(sim_acc - real_acc) <= ACCURACY_POINTS, (real_acc, sim_acc)


@pytest.mark.parametrize("name", ["DOWNPOUR", "ADAG"])
def test_simulator_accuracy_agrees_with_spark_at_four_workers(real_runs, digits, name):
    """n = 4 on local[2]: the 4 tasks run 2 at a time. The simulator configured with the
    speeds and start times the real workers had (the later pair starts when the first
    ends) must reach the real accuracy within 2 points. The uniform model (4 equal machines
    at once) is a different run: its accuracy was 1.7 points off here for DOWNPOUR, too
    close to the bar to be a test, so it is not compared."""
    real_acc, sim_acc, _, _ = compare(real_runs, digits, name, 4, True)
    assert abs(sim_acc - real_acc) <= ACCURACY_POINTS, (real_acc, sim_acc)
