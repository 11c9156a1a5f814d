"""The Spark side of one training run: the data's partitions, the job that runs a worker on
each (a barrier stage for synchronous algorithms), its job group or tag, cancellation, and a
thread to run it in so that the driver's own thread stays free for progress and callbacks.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import cloudpickle
import numpy as np

from . import protocol
from .data import checked
from .spark import driver_address, is_connect, task_slots
from .workers import REPORT_SCHEMA, WorkerSpec, run_arrow_task, run_rdd_task, start_task

log = logging.getLogger(__name__)


class SparkJob:
    """One distkeras job over ``data`` (a DataFrame, classic or Connect, or an RDD of
    ``(features, label)`` pairs) with ``num_workers`` tasks."""

    def __init__(self, data, num_workers: int, single_worker: bool, barrier: bool,
                 name: str = "distkeras training"):
        self.data = data
        self.num_workers = num_workers
        self.single_worker = single_worker
        self.barrier = barrier
        self.name = name
        self.is_rdd = not hasattr(data, "sparkSession")
        self.spark = None if self.is_rdd else data.sparkSession
        if self.is_rdd:
            self.sc = data.context
        else:
            self.sc = None if is_connect(self.spark) else self.spark.sparkContext
        self.tag = f"distkeras-{uuid.uuid4().hex[:12]}"
        self._shipped = None
        self._thread: threading.Thread | None = None
        self._reports: list[dict[str, Any]] | None = None
        self._error: BaseException | None = None

    # ---- before the job -----------------------------------------------------------------
    def check_slots(self) -> None:
        """A barrier stage needs all its tasks at once: fail now, naming the slots."""
        if not self.barrier:
            return
        slots = task_slots(self.sc, self.spark)
        if slots is not None and slots < self.num_workers:
            raise ValueError(f"this trainer is synchronous: its {self.num_workers} workers must "
                             f"run at the same time, but Spark has {slots} task slot(s). Use "
                             f"num_workers <= {slots} or give Spark more cores.")

    def server_address(self, server_host: str | None) -> tuple[str, str]:
        """(bind, advertise): ``server_host`` when given, else Spark's own driver address."""
        if server_host:
            return server_host, server_host
        if self.sc is not None:
            return driver_address(self.sc)
        return "127.0.0.1", "127.0.0.1"  # Spark Connect client without server_host: local

    def shuffles(self, repartition: bool) -> bool:
        """Whether the rows pass a shuffle before the workers' stage (which :meth:`start`
        can then check them in, see :func:`distkeras.data.checked`)."""
        return repartition and not self.single_worker and not self.is_rdd

    def partitioned(self, frame, repartition: bool):
        """``frame`` spread over ``num_workers`` partitions (or the data's own, checked)."""
        if repartition:
            return frame.coalesce(1) if self.single_worker else \
                frame.repartition(self.num_workers)
        if self.is_rdd:
            found = frame.getNumPartitions()
        elif is_connect(frame.sparkSession):
            return frame
        else:
            found = frame.rdd.getNumPartitions()
        if found != self.num_workers:
            kind = "RDD" if self.is_rdd else "DataFrame"
            raise ValueError(f"repartition=False: the {kind} has {found} partitions but "
                             f"num_workers is {self.num_workers}")
        return frame

    # ---- the job --------------------------------------------------------------------------
    def start(self, spec: WorkerSpec, plan, repartition: bool, check: bool = False) -> None:
        """Run the job in a thread; :meth:`wait` and :meth:`reports` follow it. ``check``:
        every row is checked before the shuffle (the caller asks only where
        :meth:`shuffles`)."""
        self._shipped = self.sc.broadcast(spec) if self.sc is not None else None
        self._thread = threading.Thread(target=self._run,
                                        args=(spec, plan, repartition, check),
                                        name="distkeras-job", daemon=True)
        self._thread.start()

    def _run(self, spec, plan, repartition, check) -> None:
        try:
            # job groups and tags belong to the thread that runs the job
            if self.sc is not None:
                self.sc.setJobGroup(self.tag, self.name, interruptOnCancel=True)
            else:
                self.spark.addTag(self.tag)
            try:
                self._reports = (self._run_rdd(spec, repartition) if self.is_rdd
                                 else self._run_arrow(spec, plan, repartition, check))
            finally:
                if self.sc is None:
                    self.spark.removeTag(self.tag)
        except BaseException as error:  # noqa: BLE001 - handed to the driver's thread
            self._error = error

    def _run_arrow(self, spec, plan, repartition, check) -> list[dict]:
        # converted before the shuffle (half the bytes to sort and move, one conversion for
        # the checks and the workers), checked on the way; simulation.spark_partitions deals
        # the rows out the same way (the checks pass each value on unchanged)
        frame = plan.arrow_frame(self.data)
        if check:
            frame = checked(frame, plan)
        frame = self.partitioned(frame, repartition)
        shipped = self._shipped

        backend, threads = spec.backend, spec.cpu_threads
        if shipped is not None:
            def task(batches):
                # before the spec's unpickling may import Keras
                placement = start_task(backend, threads=threads)
                return run_arrow_task(shipped.value, batches, placement)
        else:  # Spark Connect: no broadcast; the spec travels with the function, as bytes
            packed = cloudpickle.dumps(spec)  # so that it is unpickled after use_backend

            def task(batches):
                placement = start_task(backend, threads=threads)
                return run_arrow_task(cloudpickle.loads(packed), batches, placement)

        rows = frame.mapInArrow(task, REPORT_SCHEMA, barrier=self.barrier).collect()
        reports = []
        for row in rows:
            report = row.asDict()
            if report["weights"] is not None:
                report["weights"] = np.frombuffer(report["weights"], dtype=protocol.DTYPE)
            reports.append(report)
        return reports

    def _run_rdd(self, spec, repartition) -> list[dict]:
        shipped, backend, threads = self._shipped, spec.backend, spec.cpu_threads

        def task(index, rows):
            return run_rdd_task(shipped.value, index, rows, start_task(backend, index, threads))

        rdd = self.partitioned(self.data, repartition)
        stage = rdd.barrier() if self.barrier else rdd
        return stage.mapPartitionsWithIndex(task).collect()

    def wait(self, timeout: float) -> bool:
        """True once the job has ended (completed or failed)."""
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def reports(self) -> list[dict[str, Any]]:
        """One report per worker; the job's own error if it failed."""
        if self._error is not None:
            raise self._error
        return self._reports or []

    def cancel(self) -> None:
        """Cancel the job (KeyboardInterrupt, a failed callback, a server abort); safe to
        call from any thread and more than once."""
        try:
            if self.sc is not None:
                self.sc.cancelJobGroup(self.tag)
            else:
                self.spark.interruptTag(self.tag)
        except Exception as error:  # noqa: BLE001 - the original error matters more
            log.warning("distkeras: could not cancel the Spark job: %s", error)

    def close(self, timeout: float = 60.0) -> None:
        """Wait for the job's thread to end (after a cancel) and free the broadcast."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self._shipped is not None:
            self._shipped.unpersist(blocking=False)
            self._shipped = None
