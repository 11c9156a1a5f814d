"""bench/gpu.py in its smoke mode: tiny sizes, a fake GPU "0" declared by the discovery
script, two distkeras workers sharing it through half a GPU each, on CPU. The figures mean
nothing; the point is that the bench runs end to end and reports what it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(400)
def test_gpu_bench_smoke_run(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_HOME",
                        "CUDA_VISIBLE_DEVICES")}
    out = tmp_path / "gpu.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke",
                           "--out", str(out)], env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=360, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines == [json.loads(line) for line in out.read_text().splitlines()]
    fit, one, two = lines
    assert [r["run"] for r in lines] == ["model.fit", "distkeras", "distkeras"]
    assert [r["num_workers"] for r in lines] == [1, 1, 2]
    for record in lines:
        assert record["smoke"] and record["bench"] == "gpu"
        assert record["samples_per_s"] > 0 and 0.0 <= record["accuracy"] <= 1.0, record
        assert record["params"] == fit["params"] and record["task_gpu_amount"] == 0.5
    # both workers were given the fake GPU "0" (half each) and trained where it is: on this
    # CPU-only host the CPU, on a host whose GPU 0 exists that GPU
    assert two["gpu_addresses"] == [["0"], ["0"]] and one["gpu_addresses"] == [["0"]]
    expected = fit["devices"][0] if fit["gpu_name"] is None else ["GPU:0"]
    assert two["devices"] == [expected, expected]
    assert two["samples_trained"] == fit["samples_trained"] == fit["rows"]
    assert two["ratio_to_fit"] > 0 and two["target_ratio"] == 0.8
    assert isinstance(two["meets_target"], bool)
