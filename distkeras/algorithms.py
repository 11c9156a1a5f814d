"""The update rules: pure numpy, no Spark, no sockets.

An algorithm is one class with two halves:

* the worker half, :meth:`Algorithm.exchange`, runs inside a Spark task every
  ``communication_window`` local steps. It talks to the parameter server through a ``link``
  (``pull()``, ``commit(update)``, ``commit_and_pull(update)``) and updates the replica's flat
  weights ``w`` and its anchor ``w0`` (the centre variable it last pulled) in place;
* the server half, :meth:`Algorithm.apply` (asynchronous) or the ``round_*`` methods
  (synchronous), runs in the parameter server and changes the centre variable ``c`` in place.

The server and the worker loop call these methods and never look at an algorithm's name.
Notation: W worker weights, W0 anchor, C centre, lambda window, n workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Link(Protocol):
    """What a worker half may ask of the parameter server."""

    def pull(self) -> np.ndarray: ...
    def commit(self, update: np.ndarray) -> None: ...
    def commit_and_pull(self, update: np.ndarray) -> np.ndarray: ...


@dataclass
class Session:
    """Server-side state of one worker connection, handed to the server half."""

    worker: int
    attempt: int = 0
    pulled_clock: int = 0
    pid: int = 0
    last_seen: float = 0.0  # time.monotonic() of the worker's last frame
    busy: bool = False  # the server is working on (or holding, in a round) its request
    pulled: bool = False  # the worker has pulled the centre at least once (commits need it)
    fenced: bool = False  # a newer attempt of the same partition took over: refuse it
    state: dict[str, Any] = field(default_factory=dict)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class Algorithm:
    """Base class: holds the scratch buffer and documents the two halves."""

    #: synchronous algorithms apply all n commits of a round at once (the server rendezvous)
    synchronous = False
    #: whether the server applies commits under its lock (False only for Hogwild)
    locked = True

    def worker_optimizer(self, requested: Any) -> Any:
        """The local optimizer a worker trains with; EAMSGD imposes Nesterov momentum."""
        return requested

    # ---- worker half ------------------------------------------------------------------
    def exchange(self, link: Link, w: np.ndarray, w0: np.ndarray, steps: int) -> None:
        raise NotImplementedError

    # ---- server half (asynchronous) ---------------------------------------------------
    def on_pull(self, c: np.ndarray, session: Session) -> None:
        """Called with the centre variable a worker just pulled (under the server lock)."""

    def apply(self, c: np.ndarray, update: np.ndarray, session: Session, clock: int) -> None:
        raise NotImplementedError

    # ---- server half (synchronous) ----------------------------------------------------
    def round_begin(self, c: np.ndarray) -> dict[str, Any]:
        return {"sum": np.zeros_like(c), "weight": 0.0, "count": 0}

    def round_add(self, acc: dict[str, Any], update: np.ndarray, samples: int) -> None:
        raise NotImplementedError

    def round_end(self, c: np.ndarray, acc: dict[str, Any]) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _scratch(session: Session, like: np.ndarray) -> np.ndarray:
    buffer = session.state.get("scratch")
    if buffer is None or buffer.shape != like.shape:
        buffer = session.state["scratch"] = np.empty_like(like)
    return buffer


class Replace(Algorithm):
    """One worker trains plainly and hands its final weights over: ``C <- W``."""

    def exchange(self, link, w, w0, steps):
        c = link.commit_and_pull(w)
        w0[:] = c

    def apply(self, c, update, session, clock):
        c[:] = update


class Independent(Algorithm):
    """No exchange at all: every worker trains its own model (an ensemble). The worker only
    reports its loss and samples for the history; the centre variable never changes."""

    def exchange(self, link, w, w0, steps):
        link.metrics(link.loss, link.samples)


class DOWNPOUR(Algorithm):
    """Dean et al. 2012. Worker: ``send scale * (W - W0); W <- W0 <- C``. Server:
    ``C <- C + delta``.

    ``scale`` 1 is the original rule; the DOWNPOUR trainer passes 1/n, so that n workers
    together move the centre as far as one would (see docs/algorithms.md). With
    ``lock=False`` the server applies commits without its lock: Hogwild (Recht 2011).
    """

    def __init__(self, lock: bool = True, scale: float = 1.0):
        self.locked = bool(lock)
        self.scale = _positive("scale", scale)

    def delta(self, w: np.ndarray, w0: np.ndarray, steps: int) -> np.ndarray:
        d = np.subtract(w, w0)
        if self.scale != 1.0:
            d *= np.float32(self.scale)
        return d

    def exchange(self, link, w, w0, steps):
        c = link.commit_and_pull(self.delta(w, w0, steps))
        w0[:] = c
        w[:] = c

    def apply(self, c, update, session, clock):
        np.add(c, update, out=c)

    def get_config(self):
        return {"lock": self.locked, "scale": self.scale}


class AGN(DOWNPOUR):
    """Accumulated Gradient Normalization (Hermans 2017): the window's accumulated update is
    divided by the number of local steps it took, ``delta = (W - W0) / lambda``."""

    def __init__(self):
        super().__init__(lock=True)

    def delta(self, w, w0, steps):
        d = np.subtract(w, w0)
        d /= np.float32(max(int(steps), 1))
        return d

    def get_config(self):
        return {}


class ADAG(AGN):
    """Asynchronous Distributed Adaptive Gradients (Hermans 2017).

    Worker as AGN. Server, per weight: ``C <- C + delta / ((C - C0)**2 / gamma + 1)`` where C0
    is the centre variable this worker last pulled: weights that moved a lot since the worker's
    pull (a stale update) are damped, the others pass through almost unchanged.
    """

    def __init__(self, gamma: float = 1e-4):
        super().__init__()
        self.gamma = _positive("gamma", gamma)

    def on_pull(self, c, session):
        pulled = session.state.get("pulled")
        if pulled is None or pulled.shape != c.shape:
            session.state["pulled"] = c.copy()
        else:
            pulled[:] = c

    def apply(self, c, update, session, clock):
        scale = _scratch(session, c)
        np.subtract(c, session.state["pulled"], out=scale)
        np.square(scale, out=scale)
        scale *= np.float32(1.0 / self.gamma)
        scale += np.float32(1.0)
        np.divide(update, scale, out=scale)
        c += scale

    def get_config(self):
        return {"gamma": self.gamma}


class DynSGD(DOWNPOUR):
    """Jiang et al. 2017. Worker as DOWNPOUR. Server: ``tau = clock - clock0 + 1;
    C <- C + delta / tau`` where clock0 is the server clock at this worker's last pull."""

    def __init__(self):
        super().__init__(lock=True)

    def apply(self, c, update, session, clock):
        tau = clock - session.pulled_clock + 1
        c += update / np.float32(tau)

    def get_config(self):
        return {}


class AEASGD(Algorithm):
    """Asynchronous elastic averaging (Zhang et al. 2015). Worker: ``pull C; E = alpha (W - C);
    W <- W - E; send E``. Server: ``C <- C + E``. ``alpha = rho * learning_rate``."""

    def __init__(self, rho: float = 5.0, learning_rate: float = 0.01):
        self.rho = _positive("rho", rho)
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.alpha = self.rho * self.learning_rate
        if self.alpha >= 1.0:
            raise ValueError(f"alpha = rho * learning_rate must be < 1, got {self.alpha}")

    def elastic(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        e = np.subtract(w, c)
        e *= np.float32(self.alpha)
        return e

    def exchange(self, link, w, w0, steps):
        c = link.pull()
        e = self.elastic(w, c)
        w -= e
        w0[:] = c
        link.commit(e)

    def apply(self, c, update, session, clock):
        c += update

    def get_config(self):
        return {"rho": self.rho, "learning_rate": self.learning_rate}


class EAMSGD(AEASGD):
    """AEASGD whose workers train with Nesterov momentum ``mu`` (Zhang et al. 2015):
    ``v <- mu v - eta g(W + mu v); W <- W + v`` locally, the elastic exchange as AEASGD."""

    def __init__(self, rho: float = 5.0, learning_rate: float = 0.01, momentum: float = 0.9):
        super().__init__(rho, learning_rate)
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def worker_optimizer(self, requested):
        return {"class_name": "SGD", "config": {"learning_rate": self.learning_rate,
                                                "momentum": self.momentum, "nesterov": True}}

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


class ModelAveraging(Algorithm):
    """Synchronous model averaging. Worker: ``send W; W <- W0 <- C``. Server, once all n
    committed: ``C <- sum_k m_k W_k / sum_k m_k`` (m_k: samples worker k trained on)."""

    synchronous = True

    def exchange(self, link, w, w0, steps):
        c = link.commit_and_pull(w)
        w0[:] = c
        w[:] = c

    def round_add(self, acc, update, samples):
        weight = float(max(samples, 0))
        acc["sum"] += update * np.float32(weight)
        acc["weight"] += weight
        acc["count"] += 1

    def round_end(self, c, acc):
        if acc["weight"] > 0:
            np.divide(acc["sum"], np.float32(acc["weight"]), out=c)


class EASGD(AEASGD):
    """Synchronous elastic averaging (Zhang et al. 2015). Every lambda steps all n workers
    meet: ``E_k = alpha (W_k - C); W_k <- W_k - E_k``; then ``C <- C + sum_k E_k``."""

    synchronous = True

    def exchange(self, link, w, w0, steps):
        e = self.elastic(w, w0)  # w0 is the C every worker received at the end of last round
        w -= e
        c = link.commit_and_pull(e)
        w0[:] = c

    def round_add(self, acc, update, samples):
        acc["sum"] += update
        acc["count"] += 1

    def round_end(self, c, acc):
        c += acc["sum"]
