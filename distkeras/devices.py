"""Which device a Spark task trains (or predicts) on: the GPU Spark assigned it.

Spark schedules GPUs as task resources (``spark.executor.resource.gpu.amount``,
``spark.task.resource.gpu.amount``, a discovery script) and a task learns its share from
``TaskContext.resources()["gpu"].addresses``. Left alone, every task on a multi-GPU executor
would initialise its Keras backend on all of the executor's GPUs, TensorFlow would reserve
all of each GPU's memory for the first task, and the replicas would crowd GPU 0.

:func:`place` runs at the start of every distkeras task, before anything may import Keras.
CUDA fixes the GPUs a process sees once, when the process first initialises it, from
``CUDA_VISIBLE_DEVICES``; so:

* In a Python worker whose CUDA is not initialised yet, ``CUDA_VISIBLE_DEVICES`` becomes the
  task's addresses (``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so that CUDA numbers GPUs as
  ``nvidia-smi`` and discovery scripts do) and memory growth is switched on
  (``TF_FORCE_GPU_ALLOW_GROWTH=true``, ``XLA_PYTHON_CLIENT_PREALLOCATE=false``; values set in
  the executor's environment win), so that tasks sharing a GPU through a fractional amount
  coexist. The process is then *pinned* to those GPUs.
* A reused Python worker (``spark.python.worker.reuse``, Spark's default) keeps the GPUs it
  was pinned to: the task's GPU is selected among them with a Keras device scope. When Spark
  assigned a GPU the process cannot see, the replica runs on the process's own GPU and a
  warning says so (``spark.python.worker.reuse=false`` follows Spark's assignment strictly).
* Without a Spark GPU resource, a process that sees GPUs uses one: number
  ``partition % (GPUs it sees)``; no GPU: the CPU.

The report says both what was assigned (:attr:`Placement.gpu_addresses`) and where the
replica's variables really live (:meth:`Placement.devices`): TensorFlow on a host without a
GPU ignores ``CUDA_VISIBLE_DEVICES`` and trains on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: the environment a pinned process gets unless the executor's environment says otherwise
MEMORY_GROWTH = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}

_pinned: tuple[str, ...] | None = None  # the GPUs this process's CUDA sees, once pinned
_host_gpus: tuple[str, ...] | None = None  # cached enumeration of the host's GPUs
_backend_gpus: int | None = None  # GPUs the initialised backend sees
_warned: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()


@dataclass(frozen=True)
class Placement:
    """Where one task's replica runs.

    Attributes:
        gpu_addresses: The GPUs the task was given: Spark's addresses, or the one the rule
            picked without a Spark GPU resource; empty when none.
        source: ``"spark"`` (a Spark GPU resource), ``"rule"`` (no resource, the process
            sees GPUs) or ``"none"`` (no GPU).
        visible: The host's GPU addresses this process's CUDA sees, in CUDA's order.
        index: Which of ``visible`` the replica uses; None: the CPU (or nothing to choose).
        pinned: Whether this call set ``CUDA_VISIBLE_DEVICES`` (CUDA was not initialised).
        note: Why Spark's assignment could not be followed, when it could not.
    """

    gpu_addresses: tuple[str, ...]
    source: str
    visible: tuple[str, ...]
    index: int | None
    pinned: bool
    note: str | None = None

    def scope(self) -> contextlib.AbstractContextManager:
        """A Keras device scope for the task's GPU when the process sees several; else a
        no-op (one GPU, or none: the backend's default device is the right one)."""
        if self.index is None:
            return contextlib.nullcontext()
        count = backend_gpu_count()
        if count <= 1 or self.index >= count:
            return contextlib.nullcontext()
        import keras

        return keras.device(f"gpu:{self.index}")

    def devices(self, model: Any) -> list[str]:
        """Where ``model``'s variables live (see :func:`model_devices`)."""
        return model_devices(model, self.visible)


def place(partition: int | None = None) -> Placement:
    """Restrict this process to the task's GPU and say where the replica should run.

    Call it before anything in the task may initialise CUDA (importing Keras does not;
    building a model does). ``partition`` feeds the rule without a Spark GPU resource;
    it defaults to the task's partition id.
    """
    global _pinned
    context = _task_context()
    if partition is None:
        partition = context.partitionId() if context is not None else 0
    assigned = spark_gpus(context)
    source = "spark" if assigned else "none"
    frozen = _pinned is not None or cuda_initialised()
    visible = _pinned if _pinned is not None else visible_gpus()
    if not assigned and visible:
        source, assigned = "rule", (visible[partition % len(visible)],)
    if not frozen and assigned:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(assigned)
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        for key, value in MEMORY_GROWTH.items():
            os.environ.setdefault(key, value)
        _pinned = assigned
        return Placement(assigned, source, assigned, 0, True)
    if not assigned or not visible:
        return Placement(assigned, source, visible, None, False)
    if assigned[0] in visible:
        return Placement(assigned, source, visible, visible.index(assigned[0]), False)
    index = partition % len(visible)
    note = (f"Spark assigned GPU {','.join(assigned)} to this task but its Python worker "
            f"(pid {os.getpid()}) sees only GPU {','.join(visible)}: CUDA fixes a process's "
            f"GPUs when the process first initialises it, here in an earlier task of this "
            f"reused worker (spark.python.worker.reuse); the task runs on GPU "
            f"{visible[index]}. Set spark.python.worker.reuse=false to follow Spark's "
            f"assignment strictly")
    if (assigned, visible) not in _warned:
        _warned.add((assigned, visible))
        log.warning("distkeras: %s", note)
    return Placement(assigned, source, visible, index, False, note)


def model_devices(model: Any, visible: tuple[str, ...] | None = None) -> list[str]:
    """Where ``model``'s variables live: ``"CPU"`` or ``"GPU:<address>"``, each once, in order
    of first use. The address is the host's (the entry of ``visible``, the GPUs this process
    sees, by default :func:`visible_gpus`), as Spark and ``nvidia-smi`` name it."""
    visible = visible_gpus() if visible is None else visible
    found: list[str] = []
    for variable in getattr(model, "weights", []):
        for kind, number in _value_devices(getattr(variable, "value", variable)):
            if kind == "cpu":
                name = "CPU"
            elif kind == "gpu":
                name = f"GPU:{visible[number] if 0 <= number < len(visible) else number}"
            else:
                name = f"{kind.upper()}:{number}"
            if name not in found:
                found.append(name)
    return found


def spark_gpus(context: Any = None) -> tuple[str, ...]:
    """The GPU addresses Spark assigned to the running task; empty outside a task or without
    a GPU resource."""
    context = context if context is not None else _task_context()
    if context is None:
        return ()
    resource = context.resources().get("gpu")
    return tuple(str(a) for a in resource.addresses) if resource is not None else ()


def visible_gpus() -> tuple[str, ...]:
    """The host's GPUs that CUDA would show this process now: the entries of
    ``CUDA_VISIBLE_DEVICES`` when it is set (up to the first ``-1``), else every GPU of the
    host (``/proc/driver/nvidia/gpus``, else ``nvidia-smi``) numbered from 0."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return host_gpus()
    entries = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry == "-1":
            break
        entries.append(entry)
    return tuple(entries)


def host_gpus() -> tuple[str, ...]:
    """Every NVIDIA GPU of this host, ``("0", "1", ...)``, found without initialising CUDA."""
    global _host_gpus
    if _host_gpus is None:
        _host_gpus = tuple(str(i) for i in range(_count_host_gpus()))
    return _host_gpus


def _count_host_gpus() -> int:
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines())


def cuda_initialised() -> bool:
    """Whether a backend already loaded in this process has initialised its devices (after
    which ``CUDA_VISIBLE_DEVICES`` no longer applies). Never imports a backend."""
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            from tensorflow.python.eager import context

            handle = context.context()
            if handle._physical_devices is not None or handle._context_handle is not None:
                return True
        except Exception:  # noqa: BLE001 - an unknown TensorFlow: assume the worst
            return True
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None:
        try:
            if bridge.backends_are_initialized():
                return True
        except Exception:  # noqa: BLE001
            return True
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                return True
        except Exception:  # noqa: BLE001
            return True
    return False


def backend_gpu_count() -> int:
    """GPUs the Keras backend of this process sees (initialises the backend's devices; fixed
    from then on, so counted once)."""
    global _backend_gpus
    if _backend_gpus is None:
        import keras

        try:
            _backend_gpus = len(keras.distribution.list_devices("gpu"))
        except Exception:  # noqa: BLE001 - JAX without a GPU raises; PyTorch has no listing
            torch = sys.modules.get("torch")
            _backend_gpus = (int(torch.cuda.device_count())
                             if keras.backend.backend() == "torch" and torch is not None else 0)
    return _backend_gpus


def _value_devices(value: Any) -> Iterator[tuple[str, int]]:
    """(kind, number) for each device a backend tensor lives on: kind "cpu", "gpu" (CUDA or
    ROCm) or the platform's own name (e.g. "tpu")."""
    devices = getattr(value, "devices", None)
    if callable(devices):  # a jax.Array
        try:
            for device in devices():
                kind = str(device.platform).lower()
                yield ("gpu" if kind in ("gpu", "cuda", "rocm") else kind), int(device.id)
            return
        except Exception:  # noqa: BLE001 - fall back to the device's name
            pass
    text = str(getattr(value, "device", "") or "").lower()
    match = re.search(r"(gpu|cuda)(?::(\d+))?", text)
    if match:
        yield "gpu", int(match.group(2) or 0)
    else:
        yield "cpu", 0


def _task_context() -> Any:
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    return TaskContext.get()
