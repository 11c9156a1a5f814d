"""Every notebook in notebooks/ runs top to bottom in a fresh python3 kernel, and leaves no
Spark session or JVM behind. The stored notebooks carry no outputs."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from helpers import running

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds for one cell (a training run)

# Appended to the executed copy only: the notebook must have stopped its session; report the
# JVMs this kernel started so the test can check that they end with the kernel.
CHECK = """
import json, os
from pyspark import SparkContext
children = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                java = b"java" in f.read().split(b"\\0")[0]
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and java and fields[0] != "Z":
            children.append(int(entry))
print("CHECK " + json.dumps({"active": SparkContext._active_spark_context is not None,
                             "jvms": children}))
"""


def _getting_started(shown: str) -> list[tuple[str, float]]:
    found = re.findall(r"held-out accuracy: (\d\.\d+)", shown)
    assert len(found) == 1, shown[-3000:]
    return [("ADAG", float(found[0]))]


def _choosing_an_algorithm(shown: str) -> list[tuple[str, float]]:
    # the comparison table: one row per candidate, its held-out accuracy after the name
    rows = re.findall(r"^(DOWNPOUR|ADAG|AEASGD|AveragingTrainer)\s+(\d\.\d+)", shown,
                      re.MULTILINE)
    first = {}  # the accuracy column comes first; later blocks of the table hold others
    for name, value in rows:
        first.setdefault(name, float(value))
    assert sorted(first) == ["ADAG", "AEASGD", "AveragingTrainer", "DOWNPOUR"], shown[-3000:]
    return list(first.items())


#: per notebook: the accuracies its outputs show, each of which must reach the bar
KEY_OUTPUTS = {"getting_started": _getting_started,
               "choosing_an_algorithm": _choosing_an_algorithm}


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"getting_started.ipynb", "choosing_an_algorithm.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.source)
    assert nb.cells[-1].cell_type == "code" and "spark.stop()" in nb.cells[-1].source


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "MPLBACKEND",
                        "DISTKERAS_SPARK_MASTER", "DISTKERAS_DRIVER_HOST")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)  # raises CellExecutionError naming the failing cell

    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    check = json.loads(text.split("CHECK ", 1)[1])
    assert not check["active"], "the notebook left its SparkSession running"
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert images, "no figure was displayed"
    shown = "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                      for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "4000 training rows; 1000 held out" in shown
    for name, accuracy in KEY_OUTPUTS[path.stem](shown):  # what the notebook is there to show
        assert accuracy >= 0.8, (path.name, name, accuracy, shown[-3000:])
    # the kernel is gone now; the JVM it started follows it within seconds
    deadline = time.monotonic() + 60
    while any(running(pid) for pid in check["jvms"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in check["jvms"] if running(pid)], "a JVM outlived the kernel"
