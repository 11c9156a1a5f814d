"""The Docker Compose topology, as far as a machine without Docker can check it: the compose
file parses and describes the services docker/README.md promises (a master, two workers, a
Jupyter driver, wired to each other by name), and the image's Python and Java are the ones
setup.py and the README ask for. tests/test_standalone_cluster.py runs the same topology
(spark-class master and workers, a separate driver) without Docker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_the_services_the_readme_describes_and_how_they_find_each_other(compose):
    services = compose["services"]
    assert set(services) == {"master", "worker-1", "worker-2", "jupyter"}
    readme = (DOCKER / "README.md").read_text()
    for name in services:
        assert f"`{name}`" in readme, f"docker/README.md does not describe {name}"
    for name, service in services.items():  # one image, built from the repository root
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile",
                                    "args": {"USER_ID": "${USER_ID:-1000}"}}, name
        assert service["hostname"] == name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)  # nothing on other interfaces
    master = services["master"]["command"].split()
    assert master[:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    assert master[master.index("--port") + 1] == "7077"
    for worker in ("worker-1", "worker-2"):
        command = services[worker]["command"].split()
        assert command[:3] == ["spark-class", "org.apache.spark.deploy.worker.Worker",
                               "spark://master:7077"]
        assert services[worker]["depends_on"] == ["master"]
    jupyter = services["jupyter"]
    assert jupyter["environment"]["DISTKERAS_SPARK_MASTER"] == "spark://master:7077"
    # executors reach the driver, and so the parameter server, by the container's name
    assert jupyter["environment"]["DISTKERAS_DRIVER_HOST"] == jupyter["hostname"]
    assert "../notebooks:/home/app/notebooks" in jupyter["volumes"]


def test_the_notebooks_read_the_settings_compose_gives_them(compose):
    environment = compose["services"]["jupyter"]["environment"]
    for notebook in ("getting_started.ipynb", "choosing_an_algorithm.ipynb"):
        cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        for name in ("DISTKERAS_SPARK_MASTER", "DISTKERAS_DRIVER_HOST"):
            assert name in environment and name in code, (notebook, name)


def test_the_image_runs_the_python_and_java_the_project_asks_for():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    python = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, re.M)
    assert python, "the image is not built FROM an official python image"
    image = (int(python.group(1)), int(python.group(2)))
    setup = (ROOT / "setup.py").read_text()
    required = re.search(r'python_requires=">=(\d+)\.(\d+)"', setup)
    assert image >= (int(required.group(1)), int(required.group(2)))
    readme = (ROOT / "README.md").read_text()
    assert f"Python {image[0]}.{image[1]}" in readme  # the version the README's commands use
    assert "openjdk-17-jre-headless" in dockerfile and "Java 17" in readme
    # the package is installed from the repository, with what the notebooks import
    assert re.search(r'pip install "\.\[demo,plots\]"', dockerfile)
    assert "COPY distkeras ./distkeras" in dockerfile
