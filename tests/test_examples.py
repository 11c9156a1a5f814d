"""The examples run end to end as users run them: ``python examples/...`` and spark-submit.

Each run is a separate process with its own JVM and Spark session (tiny settings).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = re.compile(r"^(\w+): test accuracy (\d\.\d+) on ([\d,]+) held-out", re.MULTILINE)

pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYSPARK_GATEWAY_PORT", None)  # never attach to the test session's JVM
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run(command: list[str], timeout: float) -> tuple[str, float]:
    """Run ``command`` from the repository root; return (stdout, accuracy) or fail loudly."""
    done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True,
                          text=True, timeout=timeout)
    tail = f"\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"exit code {done.returncode}{tail}"
    found = ACCURACY.search(done.stdout)
    assert found, f"no accuracy line{tail}"
    assert "samples/s" in done.stdout
    return done.stdout, float(found.group(2))


@pytest.mark.timeout(360)
def test_higgs_example():
    out, accuracy = run([sys.executable, "examples/higgs.py", "--rows", "20000", "--epochs",
                         "1", "--workers", "2", "--trainer", "DOWNPOUR"], timeout=330)
    assert "2,000 held-out rows" in out
    # the majority class is about 0.55 and a logistic regression on these features about
    # 0.74; one epoch of DOWNPOUR over 18,000 rows reached 0.734 when this bar was set
    majority = float(re.search(r"majority class (\d\.\d+)", out).group(1))
    assert majority < 0.6 and accuracy >= 0.70, out


@pytest.mark.timeout(360)
def test_mnist_example():
    out, accuracy = run([sys.executable, "examples/mnist.py", "--epochs", "1", "--workers",
                         "2"], timeout=330)
    assert "1000 held-out digits" in out
    assert accuracy >= 0.75, out  # one epoch of ADAG over 4,000 digits reached 0.844


@pytest.mark.timeout(360)
def test_higgs_example_under_spark_submit():
    import pyspark

    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    out, accuracy = run([str(submit), "--master", "local[2]", "--conf",
                         "spark.ui.enabled=false", "examples/higgs.py", "--rows", "10000",
                         "--epochs", "3", "--workers", "2", "--trainer", "AveragingTrainer",
                         "--test-rows", "1000"], timeout=330)
    assert "AveragingTrainer: test accuracy" in out and "1,000 held-out rows" in out
    # the run learned: four runs gave 0.732 to 0.743 (majority class 0.557). One epoch over
    # 4,500 rows, as this test ran before, gave 0.622 to 0.726 and failed CI once at 0.62.
    assert accuracy >= 0.70, out
