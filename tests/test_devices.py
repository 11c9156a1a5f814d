"""Device placement (distkeras/devices.py) and mixed precision (distkeras/precision.py).

CUDA fixes the GPUs a process sees when the process first initialises it, so each placement
case runs in a fresh Python process with the environment a Spark executor would give it
(``CUDA_VISIBLE_DEVICES`` naming GPUs that this host need not have: the placement logic
never initialises CUDA). The fake-GPU Spark cluster is in test_gpu_cluster.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import mlp

import distkeras
from distkeras.devices import visible_gpus
from distkeras.models import blueprint
from distkeras.monitor import where_workers_ran
from distkeras.precision import check_policy

PROBE = r'''
import json, os, sys
calls, build_first, build = json.loads(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"

def model():
    import keras
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

built = model() if build_first else None  # the backend initialised before any placement
from distkeras.devices import cuda_initialised, place
out = {"initialised_before": cuda_initialised(), "placements": []}
for partition in calls:
    p = place(partition)
    m = None
    if build:  # the scope asks the backend for its GPUs: imports and initialises it
        with p.scope():
            m = model()
    out["placements"].append({
        "gpu_addresses": list(p.gpu_addresses), "source": p.source, "visible": list(p.visible),
        "index": p.index, "pinned": p.pinned, "note": p.note,
        "devices": p.devices(m) if build else None,
        "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE")}})
from distkeras.devices import backend_gpu_count
out["backend_gpus"] = backend_gpu_count() if build else None
print("RESULT " + json.dumps(out))
'''


def probe(partitions: list[int], env: dict[str, str], build_first: bool = False,
          build: bool = True) -> dict:
    """Place ``partitions`` one after the other in one fresh process (a reused Spark Python
    worker) with ``env`` added to a clean environment; ``build``: build a model on each
    placement (imports the backend), ``build_first``: also before any placement."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                          "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(partitions),
                           "1" if build_first else "0", "1" if build else "0"], env={**clean, **env,
                                                              "TF_CPP_MIN_LOG_LEVEL": "3"},
                          capture_output=True, text=True, timeout=120)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert done.returncode == 0 and line, done.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def keras_own_growth() -> str | None:
    """TF_FORCE_GPU_ALLOW_GROWTH as Keras' own import leaves it: its JAX backend sets it to
    "true" (so that TensorFlow, if loaded for data, does not take the GPU), others leave it."""
    import keras

    return "true" if keras.backend.backend() == "jax" else None


def on(address: str, result: dict) -> list[str]:
    """Where a replica on ``address`` lives: that GPU when the backend has one, else CPU."""
    return [f"GPU:{address}"] if result["backend_gpus"] else ["CPU"]


@pytest.mark.timeout(300)
def test_without_spark_resources_each_partition_gets_one_gpu_by_the_rule():
    # a host (or container) whose CUDA shows GPUs 3 and 5: partition p takes GPU p % 2
    for partition, gpu in ((0, "3"), (1, "5"), (2, "3"), (7, "5")):
        result = probe([partition], {"CUDA_VISIBLE_DEVICES": "3,5"}, build=False)
        first = result["placements"][0]
        assert first["source"] == "rule" and first["gpu_addresses"] == [gpu], first
        assert first["pinned"] and first["visible"] == [gpu] and first["index"] == 0
        assert first["env"] == {"CUDA_VISIBLE_DEVICES": gpu, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                "TF_FORCE_GPU_ALLOW_GROWTH": "true",
                                "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, first
        assert first["note"] is None


@pytest.mark.timeout(300)
def test_a_reused_worker_keeps_the_gpu_it_was_pinned_to():
    # the second task in the same process (spark.python.worker.reuse) cannot widen it again
    result = probe([0, 1], {"CUDA_VISIBLE_DEVICES": "0,1", "TF_FORCE_GPU_ALLOW_GROWTH": "false"},
                   build=False)
    first, second = result["placements"]
    assert first["pinned"] and first["gpu_addresses"] == ["0"]
    assert not second["pinned"] and second["visible"] == ["0"] and second["index"] == 0
    assert second["gpu_addresses"] == ["0"] and second["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    # a value the executor's environment set wins over distkeras' default
    assert second["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"


@pytest.mark.timeout(300)
def test_once_cuda_is_initialised_the_task_gpu_is_chosen_by_index_not_by_environment():
    # the backend was initialised before distkeras ran (the process sees GPUs 0 and 1): the
    # environment no longer applies, so it is left alone and the rule picks an index
    result = probe([1], {"CUDA_VISIBLE_DEVICES": "0,1"}, build_first=True)
    assert result["initialised_before"]
    placement = result["placements"][0]
    assert not placement["pinned"] and placement["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert placement["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] == keras_own_growth()
    assert placement["visible"] == ["0", "1"] and placement["index"] == 1
    assert placement["gpu_addresses"] == ["1"] and placement["devices"] == on("1", result)


@pytest.mark.timeout(300)
def test_no_gpu_means_the_cpu_and_an_untouched_environment():
    result = probe([0], {"CUDA_VISIBLE_DEVICES": "-1"})
    placement = result["placements"][0]
    assert placement["source"] == "none" and placement["gpu_addresses"] == []
    assert placement["index"] is None and not placement["pinned"]
    assert placement["env"] == {"CUDA_VISIBLE_DEVICES": "-1", "CUDA_DEVICE_ORDER": None,
                                "TF_FORCE_GPU_ALLOW_GROWTH": keras_own_growth(),
                                "XLA_PYTHON_CLIENT_PREALLOCATE": None}
    assert placement["devices"] == ["CPU"]


def test_the_summary_line_names_each_device_and_policy():
    reports = [{"worker": 1, "host": "a", "devices": ["GPU:0"], "dtype_policy": "mixed_float16"},
               {"worker": 0, "host": "a", "devices": ["GPU:0"], "dtype_policy": "mixed_float16"},
               {"worker": 2, "host": "a", "devices": ["GPU:1"], "dtype_policy": "mixed_float16"}]
    assert where_workers_ran(reports) == "workers ran on GPU:0 (2), GPU:1 (1), mixed_float16"
    reports = [{"worker": 0, "host": "a", "devices": ["CPU"], "dtype_policy": "float32"},
               {"worker": 1, "host": "b", "devices": ["GPU:0"], "dtype_policy": "float32"}]
    assert where_workers_ran(reports) == "workers ran on a CPU (1), b GPU:0 (1)"


# ---- mixed precision ------------------------------------------------------------------------
def test_dtype_policy_is_checked_when_the_trainer_is_made():
    import keras

    assert check_policy(None) is None and check_policy("float32") is None
    assert check_policy(keras.DTypePolicy("mixed_bfloat16")) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="mixed_float16, mixed_bfloat16.*stay float32"):
        distkeras.ADAG(mlp(), loss="categorical_crossentropy", dtype_policy="float16")


@pytest.mark.parametrize("policy, compute", [("mixed_bfloat16", "bfloat16"),
                                             ("mixed_float16", "float16")])
def test_a_replica_loaded_from_keras_bytes_computes_in_the_policy(policy, compute):
    import keras

    inputs = keras.Input((784,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    bp = blueprint(model, "adam", "sparse_categorical_crossentropy")
    plain = bp.build()
    assert {layer.compute_dtype for layer in plain.layers[1:]} == {"float32"}  # as saved
    replica = bp.build(dtype_policy=policy)
    assert {layer.compute_dtype for layer in replica.layers[1:]} == {compute}
    assert {w.dtype for w in replica.weights} == {"float32"}  # variables stay float32
    x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    assert keras.backend.standardize_dtype(replica(x).dtype) == compute
    assert keras.backend.standardize_dtype(replica.layers[1](x).dtype) == compute
    # loss scaling where float16 needs it (Keras wraps the optimizer at compile)
    scaled = isinstance(replica.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    loss = replica.train_on_batch(x, np.arange(64) % 10)
    assert np.isfinite(loss)
    # the weights keep the centre variable's layout and dtype
    assert [w.shape for w in replica.get_weights()] == [w.shape for w in model.get_weights()]
    assert {w.dtype for w in replica.get_weights()} == {np.dtype(np.float32)}


@pytest.mark.timeout(600)
def test_workers_train_in_mixed_float16_and_the_centre_stays_float32(digits_df, digits, capsys):
    import keras

    _, _, xt, yt = digits
    trainer = distkeras.DOWNPOUR(mlp(), worker_optimizer="adam",
                                 loss="categorical_crossentropy", num_workers=2,
                                 batch_size=64, num_epoch=3, verbose=1, seed=3,
                                 dtype_policy="mixed_float16")
    model = trainer.train(digits_df)
    reports = sorted(trainer.worker_reports, key=lambda r: r["worker"])
    assert [r["dtype_policy"] for r in reports] == ["mixed_float16"] * 2
    for report in reports:  # local mode has no Spark GPU resource: the rule decides
        if visible_gpus():
            assert len(report["gpu_addresses"]) == 1, report
        else:
            assert report["gpu_addresses"] == [] and report["devices"] == ["CPU"], report
    assert trainer.history.samples_applied == 3 * 4000
    # what comes back is the float32 centre variable in the user's float32 model
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    assert {w.dtype for w in model.get_weights()} == {np.dtype(np.float32)}
    accuracy = float((model.predict(xt, verbose=0).argmax(axis=1) == yt).mean())
    assert accuracy > 0.8, accuracy  # 3 epochs: 0.888 twice; 1 epoch gave 0.773 in a full run
    assert keras.config.dtype_policy().name == "float32"  # the driver's global is untouched
    out = capsys.readouterr().out
    assert "workers ran on" in out and "mixed_float16" in out, out[-500:]
