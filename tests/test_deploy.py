"""Deploying to a cluster the way Spark documents it for Python: a ``venv-pack`` archive with
distkeras in it, shipped with ``spark-submit --archives env.tar.gz#environment`` and run by
the executors as ``./environment/bin/python`` (``spark.pyspark.python``), while the driver
runs this checkout's virtual environment.

The archive is made here from scratch: a wheel of this checkout, installed into a fresh
``python -m venv``, packed by ``venv-pack``. Its third-party dependencies (TensorFlow, JAX,
pyspark: about 1.5 GB) are not in it: the job puts this test environment's site-packages on
the executors' ``PYTHONPATH`` (``spark.executorEnv.PYTHONPATH``), which the test hosts can
read because they share this machine's file system. Packing them would add minutes to the
suite and prove nothing more about the mechanism: the executors still run the archive's
interpreter and import distkeras from the archive (checked below: that site-packages holds
no importable distkeras, only the dist-info of an editable install).

The cluster is its own (tests/hosts.py, two hosts): the module-scoped driver of
tests/test_hosts.py holds every core of its cluster while it lives.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import hosts
import pytest

REASON = hosts.unavailable()
ROOT = Path(__file__).resolve().parents[1]
DEPENDENCIES = sysconfig.get_path("purelib")  # TensorFlow, pyspark...: see the docstring
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              *([pytest.mark.skip(reason=REASON)] if REASON else [])]


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, (f"{command[:4]}... exit {done.returncode}\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """env.tar.gz: a venv with a wheel of this checkout, packed by venv-pack."""
    work = tmp_path_factory.mktemp("packed")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(work / "dist"), str(ROOT)], timeout=300)
    wheel = next((work / "dist").glob("distkeras-*.whl"))
    env = work / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)], timeout=120)
    python = env / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)], timeout=300)
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    timeout=60).stdout.strip())
    # the archive's interpreter with the executors' PYTHONPATH imports the archive's distkeras
    found = run([str(python), "-c", "import distkeras; print(distkeras.__file__)"],
                timeout=60, cwd=work, env=dict(os.environ, PYTHONPATH=DEPENDENCIES)).stdout
    assert found.strip().startswith(str(site)), (found, site)
    archive = work / "env.tar.gz"
    run([sys.executable, "-m", "venv_pack", "-p", str(env), "-o", str(archive)], timeout=300)
    return archive


def test_mnist_example_runs_under_spark_submit_with_a_packed_environment(packed, tmp_path):
    import pyspark

    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    with hosts.HostCluster(tmp_path / "cluster", hosts=2) as cluster:
        env = cluster.driver_env()
        env.pop("PYSPARK_PYTHON")  # the executors' Python comes from the job's settings only
        command = [str(submit), "--master", cluster.url,
                   "--archives", f"{packed}#environment",
                   "--conf", "spark.pyspark.python=./environment/bin/python",
                   "--conf", f"spark.executorEnv.PYTHONPATH={DEPENDENCIES}",
                   "--conf", f"spark.pyspark.driver.python={sys.executable}",
                   "--conf", f"spark.driver.host={cluster.driver_host}",
                   "--conf", f"spark.driver.bindAddress={cluster.driver_host}",
                   "--conf", "spark.executor.memory=1g", "--conf", "spark.executor.cores=1",
                   "--conf", "spark.ui.enabled=false",
                   "examples/mnist.py", "--epochs", "1", "--workers", "2"]
        done = run(command, timeout=480, cwd=ROOT, env=env)
        work = [h.directory / "work" for h in cluster.hosts]
    out = done.stdout
    found = re.search(r"test accuracy (\d\.\d+) on 1000 held-out digits", out)
    assert found and float(found.group(1)) >= 0.75, out[-3000:]
    # the summary names the executors' interpreter when it is not the driver's: the
    # archive's, unpacked in each executor's working directory on the test hosts
    python = re.search(r"their Python: (\S+)", out)
    assert python, out[-3000:]
    path = python.group(1)
    assert path.endswith(os.path.join("environment", "bin", "python")), path
    assert any(path.startswith(str(w)) for w in work), (path, work)
    assert not path.startswith(sys.prefix)
