"""Spark plumbing: a working local session, and where the driver can be reached."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading

from . import forkserver
from .backends import configured_backend, preload_for
from .daemon import PRELOAD_ENV
from .errors import JavaMissingError  # noqa: F401 - also importable from here

log = logging.getLogger(__name__)


def check_java() -> str:
    """Path of the ``java`` that Spark will use; a one-line error when there is none."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise JavaMissingError("Spark needs Java 17 or newer: install a JDK (e.g. "
                               "'apt-get install openjdk-17-jre-headless') or set JAVA_HOME")
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        raise JavaMissingError(f"'{java} -version' failed ({error}); Spark needs Java 17 or "
                               f"newer: install a JDK or fix JAVA_HOME") from None
    return java


def worker_environment() -> None:
    """Environment the Python workers inherit: this interpreter, quiet TensorFlow."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def default_driver_memory(physical_bytes: int | None = None) -> str:
    """The heap a local session's JVM gets unless told otherwise, as a
    ``spark.driver.memory`` value: 2 GiB, or a quarter of a smaller machine's memory (at
    least Spark's own 1 GiB).

    Why: in local mode the executors live in the driver's JVM, so its heap holds the cached
    DataFrame, the shuffle before training and every task. With Spark's 1 GiB,
    bench/first_run.py (100,000 cached 784-wide rows) died in 2 of 4 runs
    (``OutOfMemoryError`` in the repartition, then py4j's "Connection refused"). Larger
    heaps made its first ``train()`` slower on the 2-core build machine: 12.5-13.4 s at
    2 GiB, 14.4-14.6 s at 4 GiB, 14.9-15.5 s at 6 GiB. More data wants
    ``spark_driver_memory`` (or a cluster).
    """
    if physical_bytes is None:
        try:
            physical_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            physical_bytes = 0
    mib = min(max(1024, int(physical_bytes) // 4 // 2**20), 2048)
    return f"{mib}m"


def local_session(num_workers: int = 2, app_name: str = "distkeras", task_retries: int = 0,
                  preload: bool = True, **conf: str):
    """A local SparkSession with ``num_workers`` task slots, ready for distkeras.

    Workers run the interpreter that runs this function (``PYSPARK_PYTHON``), the web UI is
    off, logs are quiet and the driver listens on loopback so nothing needs a resolvable
    hostname. Spark's ``getOrCreate`` returns a session that is already running as it is
    (its master does not change).

    Args:
        num_workers: Task slots (``local[num_workers]``): the most workers a synchronous
            trainer can use. Defaults to `2`.
        app_name: The Spark application name. Defaults to `"distkeras"`.
        task_retries: How many times Spark retries a failed task (local mode does not
            retry by default). Defaults to `0`.
        preload: Whether the Python workers come from a daemon that imported the Keras
            backend's library (TensorFlow, JAX or PyTorch) once (`distkeras.daemon`), in a
            process started before the JVM (`distkeras.forkserver`): the first `train()`
            then does not wait while each worker imports it. Defaults to `True`.
        **conf: Extra Spark settings, dots written as ``_``
            (``spark_executor_memory="2g"`` sets ``spark.executor.memory``). The driver's
            heap, where a local session's tasks run, defaults to `default_driver_memory()`
            (2 GiB, less on a machine under 8 GiB) unless ``spark_driver_memory`` or the
            ``SPARK_DRIVER_MEMORY`` environment variable says otherwise.

    Returns:
        The `pyspark.sql.SparkSession`, its log level set to ERROR.

    Raises:
        JavaMissingError: There is no Java for Spark (none on the path or in
            ``JAVA_HOME``, or ``java -version`` fails).

    Example:

    ```python
    from distkeras import local_session
    spark = local_session(num_workers=4, task_retries=1)
    ```
    """
    check_java()
    worker_environment()
    from pyspark.sql import SparkSession

    modules = preload_modules() if preload and SparkSession.getActiveSession() is None \
        else None

    master = f"local[{int(num_workers)},{int(task_retries) + 1}]" if task_retries else \
        f"local[{int(num_workers)}]"
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.sql.shuffle.partitions", str(max(2, int(num_workers))))
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.python.worker.reuse", "true"))
    if not os.environ.get("SPARK_DRIVER_MEMORY"):
        builder = builder.config("spark.driver.memory", default_driver_memory())
    if modules:
        builder = (builder.config("spark.python.daemon.module", "distkeras.daemon")
                   .config(f"spark.executorEnv.{PRELOAD_ENV}", modules))
        try:  # the import starts now, beside the JVM's start
            socket_path = forkserver.start(modules, os.environ["PYSPARK_PYTHON"])
        except OSError as error:  # e.g. no writable temporary directory: the daemon imports
            log.debug("distkeras: no fork server: %s", error)
        else:
            builder = builder.config(f"spark.executorEnv.{forkserver.SOCKET_ENV}", socket_path)
    for key, value in conf.items():
        builder = builder.config(key.replace("_", "."), value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    if modules:
        start_python_workers(session)
    return session


def preload_modules() -> str | None:
    """What the Python workers' daemon of a new local session imports before it forks them
    (comma-separated modules): the configured Keras backend's library
    (:func:`~distkeras.backends.configured_backend`, read without importing Keras), and
    Keras where that is safe, when the workers' Python can import it and the daemon module;
    None otherwise."""
    modules = preload_for(configured_backend())
    if modules is None:
        return None
    python = os.environ.get("PYSPARK_PYTHON", sys.executable)
    try:  # a driver that imports distkeras from a path its workers lack: PySpark's daemon
        subprocess.run([python, "-c", "import distkeras.daemon"], capture_output=True,
                       check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return modules


def start_python_workers(spark) -> threading.Thread:
    """Run a one-task Arrow job in the background, so that the Python workers' daemon starts
    (taking over the fork server's import, or importing) now, while the driver goes on,
    rather than when training needs it.

    The job takes one task slot until the import is done (about 5 s of CPU for TensorFlow
    here, part of it spent while the JVM started); a job the driver runs meanwhile has the
    other slots. Its failure (a session stopped meanwhile) is of no consequence: the daemon
    then starts later."""
    def run() -> None:
        def unchanged(batches):
            yield from batches

        try:
            spark.sparkContext.setJobDescription("distkeras: start the Python workers")
            spark.range(0, 1, 1, 1).mapInArrow(unchanged, "id long").collect()
        except Exception as error:  # noqa: BLE001 - see the docstring
            log.debug("distkeras: starting the Python workers failed: %s", error)

    thread = threading.Thread(target=run, name="distkeras-start-workers", daemon=True)
    thread.start()
    return thread


def get_session(num_workers: int = 2, app_name: str = "distkeras"):
    """The session ``spark-submit`` made for this script, else a :func:`local_session`.

    Under ``spark-submit`` or the pyspark shell (``PYSPARK_GATEWAY_PORT`` is set) the
    session comes from Spark's own settings (the executors' Python included) and
    ``num_workers`` is ignored; otherwise a local session is started, so the same script
    runs on a cluster and on a laptop.

    Args:
        num_workers: Task slots of a local session. Defaults to `2`.
        app_name: The Spark application name. Defaults to `"distkeras"`.

    Returns:
        The `pyspark.sql.SparkSession`.

    Raises:
        JavaMissingError: A local session is needed and there is no Java for Spark.
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit / pyspark shell
        # the executors' Python is Spark's to choose (spark.pyspark.python, PYSPARK_PYTHON:
        # e.g. a packed environment shipped with --archives); never this driver's path
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from pyspark.sql import SparkSession

        return SparkSession.builder.appName(app_name).getOrCreate()
    return local_session(num_workers, app_name)


def is_connect(spark) -> bool:
    """True for a Spark Connect session (no SparkContext, no RDDs, no broadcasts)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def driver_address(sc) -> tuple[str, str]:
    """(address to bind, address workers connect to), as Spark itself uses for the driver."""
    conf = sc.getConf()
    host = conf.get("spark.driver.host", None) or "127.0.0.1"
    bind = conf.get("spark.driver.bindAddress", None) or host
    return bind, host


def _local_cores(master: str) -> int | None:
    if not master.startswith("local"):
        return None
    inside = master[master.find("[") + 1:master.find("]")] if "[" in master else "1"
    inside = inside.split(",")[0].strip()
    return (os.cpu_count() or 1) if inside == "*" else int(inside)


def task_slots(sc, spark=None) -> int | None:
    """How many tasks Spark can run at once (for barrier stages); None when unknown."""
    if sc is not None:
        local = _local_cores(sc.master)
        return local if local is not None else sc.defaultParallelism
    try:
        return _local_cores(spark.conf.get("spark.master"))
    except Exception:  # noqa: BLE001 - Connect servers may hide the setting
        return None


def worker_threads(sc, spark, num_workers: int) -> int | None:
    """CPU threads for each worker's backend: the cores of Spark's task slots shared among
    the workers that run at once. When the workers fill every slot that is
    ``spark.task.cpus`` each (Spark's own rule for ``OMP_NUM_THREADS`` in Python workers);
    fewer workers than slots get more. None when Spark's cores are unknown."""
    cores = task_slots(sc, spark)
    if cores is None:
        return None
    try:
        conf = sc.getConf() if sc is not None else spark.conf
        cpus = int(conf.get("spark.task.cpus", "1"))
    except Exception:  # noqa: BLE001 - Connect servers may hide the setting
        cpus = 1
    return threads_per_worker(cores, cpus, num_workers)


def threads_per_worker(cores: int, task_cpus: int, num_workers: int) -> int:
    """:func:`worker_threads`' arithmetic: ``cores`` for all task slots, ``task_cpus`` per
    task, ``num_workers`` tasks of which at most a slot's worth run at once."""
    task_cpus = max(1, task_cpus)
    at_once = max(1, min(num_workers, cores // task_cpus))
    return max(task_cpus, cores // at_once)
