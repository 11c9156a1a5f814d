"""What happened during training: one record per commit, kept by the parameter server.

The parameter server appends a :class:`Commit` for every update it applies (and for every
loss report that carries no update, e.g. an ensemble member's) and notes when each worker
said goodbye. Everything here is derived from those records on the driver; nothing is
measured on the workers. Times are seconds since the parameter server started.

Plots need matplotlib (``pip install distkeras[plots]``); it is imported only when a plot is
asked for, and figures are drawn on matplotlib's Agg canvas, so no display is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .rendezvous import Rendezvous

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: columns of :meth:`History.to_pandas`, in order
COLUMNS = ["time", "worker", "clock", "staleness", "loss", "samples", "committed"]


@dataclass(frozen=True)
class Commit:
    """One record: a worker's window reached the server (or only its loss did).

    Attributes:
        time: Seconds since the parameter server started.
        worker: The worker's Spark partition index.
        clock: The server clock after this commit was applied; `-1` for a loss report
            that carried no update.
        staleness: Commits of other workers applied since this worker's last pull.
        loss: Mean training loss of the worker's window.
        samples: Samples the window trained on.
    """

    time: float  # seconds since the server started
    worker: int  # Spark partition index
    clock: int  # server clock after this commit was applied (-1: a loss report, no update)
    staleness: int  # commits applied by others since this worker's last pull
    loss: float  # mean training loss of the worker's window
    samples: int  # samples the window trained on

    @property
    def committed(self) -> bool:
        """True when an update reached the centre variable (False: a loss report only)."""
        return self.clock >= 0


class History:
    """What happened during one training run: every commit, in arrival order.

    A trainer's `history` after (or during) `train()`. The parameter server's threads
    append; readers work on a snapshot, so a history can be summarised or plotted while
    training is still running.

    Attributes:
        records: Every `Commit`, in arrival order.
        finished: Worker -> the time it said goodbye (it had no more data).
        synchronous: Whether the run met in rounds at the server; `None`: unknown.
        history: Per-epoch values as Keras' `History.history` holds them: `loss`,
            `staleness`, `commits_per_s`, and `val_loss`/`val_<metric>` of the centre
            variable when `train` got `validation_data`.
        connections: Every worker connection the server accepted, in order, as dicts
            with `worker`, `attempt`, `host`, `transport` (`"shm"` or `"tcp"`) and
            `time`.
        stopped_early: `None`, or, when a callback or early stopping ended the run, a
            dict with `reason`, `records` (how many records there were at that moment:
            `records[stopped_early["records"]:]` came after it, at most one commit per
            worker that was already on its way) and `time`.

    Example:

    ```python
    trainer.train(df)
    history = trainer.history
    history.history["loss"]          # one value per epoch
    history.summary_frame()          # per worker: samples, commits, staleness, speed
    history.plot().savefig("history.png")
    ```
    """

    def __init__(self) -> None:
        self.records: list[Commit] = []
        self.finished: dict[int, float] = {}
        #: True for a synchronous run (rounds at the server); None when nobody said. Only
        #: used to split a worker's time into training and waiting for its round.
        self.synchronous: bool | None = None
        #: per-epoch values as Keras' ``History.history``: "loss", "val_loss", "val_<metric>"
        self.history: dict[str, list[float]] = {}
        #: every worker connection the server accepted, in order: ``worker``, ``attempt``
        #: (Spark's task attempt), ``host`` (the peer address the server saw), ``transport``
        #: ("shm": payloads through shared memory, "tcp": through the socket) and ``time``
        self.connections: list[dict[str, Any]] = []
        #: set when the driver ended training early: ``reason``, ``records`` (the number of
        #: records at that moment) and ``time``
        self.stopped_early: dict[str, Any] | None = None
        self._t0 = time.monotonic()

    # ---- recording (called by the parameter server) ----------------------------------
    def start(self) -> None:
        """Time zero: the server calls it when it starts listening."""
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self._t0

    def add_commit(self, worker: int, clock: int, staleness: int, loss: float,
                   samples: int, *, at: float | None = None) -> None:
        """Record an update the server applied (called by the parameter server).

        Args:
            worker: The worker's partition index.
            clock: The server clock after the update.
            staleness: Commits of other workers since this worker's last pull.
            loss: Mean training loss of the window.
            samples: Samples the window trained on.
            at: The time to record instead of now (for tests and replays).
        """
        when = self.elapsed() if at is None else float(at)
        self.records.append(Commit(when, worker, clock, staleness, loss, samples))

    def add_metrics(self, worker: int, loss: float, samples: int, *,
                    at: float | None = None) -> None:
        """Record the loss of samples trained but not committed (a header-only message,
        e.g. an ensemble member's); its record has `clock == -1`.

        Args:
            worker: The worker's partition index.
            loss: Mean training loss of the samples.
            samples: Samples trained.
            at: The time to record instead of now (for tests and replays).
        """
        when = self.elapsed() if at is None else float(at)
        self.records.append(Commit(when, worker, -1, 0, loss, samples))

    def add_connection(self, worker: int, attempt: int, host: str, transport: str) -> None:
        """Record that the server accepted a worker's handshake (see `connections`).

        Args:
            worker: The worker's partition index.
            attempt: Spark's task attempt number.
            host: The peer address the server saw.
            transport: `"shm"` (payloads through shared memory) or `"tcp"`.
        """
        self.connections.append({"time": self.elapsed(), "worker": int(worker),
                                 "attempt": int(attempt), "host": host,
                                 "transport": transport})

    def address_of(self, worker: int, attempt: int) -> str | None:
        """The address the server saw that attempt of that worker connect from (the
        newest such connection), or None when it never connected.

        Args:
            worker: The worker's partition index.
            attempt: Spark's task attempt number.

        Returns:
            The peer address as a string, or `None`.
        """
        seen = [c["host"] for c in self.connections
                if c["worker"] == worker and c["attempt"] == attempt]
        return seen[-1] if seen else None

    def add_finished(self, worker: int, *, at: float | None = None) -> None:
        """Record that a worker said goodbye: it has no more data (it leaves synchronous
        rounds).

        Args:
            worker: The worker's partition index.
            at: The time to record instead of now (for tests and replays).
        """
        self.finished[worker] = self.elapsed() if at is None else float(at)

    # ---- views -------------------------------------------------------------------------
    @property
    def commits(self) -> list[Commit]:
        """The records that changed the centre variable (loss reports left out)."""
        return [r for r in list(self.records) if r.committed]

    @property
    def samples_applied(self) -> int:
        """Samples whose updates reached the centre variable."""
        return sum(r.samples for r in self.commits)

    @property
    def workers(self) -> list[int]:
        """Every worker that committed, reported a loss or finished, in order."""
        return sorted({r.worker for r in list(self.records)} | set(self.finished))

    def summary(self) -> dict[int, dict[str, Any]]:
        """Per-worker figures, from the server's point of view.

        Keys: ``samples``, ``commits``, ``mean_staleness``, ``max_staleness``, ``mean_loss``
        (mean of the window losses), ``last_loss``, ``first_commit_at``, ``last_commit_at``,
        ``finished_at`` (the worker's goodbye; None if it never said it), ``mean_interval_s``
        (seconds between two commits: local training plus the exchange), ``samples_per_s``
        (samples of all commits after the first over the time between first and last
        commit: the worker's steady speed, start-up excluded).

        ``train_s``, ``wait_s`` and ``busy_fraction``: between its first and its last commit,
        the seconds the worker trained and the seconds it sat at the server waiting for the
        other workers of its synchronous round. The server only sees when a commit arrives
        and when its round completes, so this split exists only when
        :attr:`synchronous` is True; otherwise these keys are None (an asynchronous commit
        is answered at once; the round trip itself is not recorded).

        A worker that only reported losses (an ensemble member) has 0 commits and its loss
        figures from those reports.

        Returns:
            A dict from worker (partition index) to a dict with the keys above.
        """
        records = list(self.records)
        waits = self._round_waits(records) if self.synchronous else [None] * len(records)
        wait_of = {id(r): w for r, w in zip(records, waits)}
        out: dict[int, dict[str, Any]] = {}
        for worker in self.workers:
            mine = [r for r in records if r.worker == worker]
            done = [r for r in mine if r.committed]
            scored = done or mine
            losses = [r.loss for r in scored if math.isfinite(r.loss)]
            first = done[0].time if done else None
            last = done[-1].time if done else None
            span = (last - first) if done else 0.0
            steady = sum(r.samples for r in done[1:])
            entry: dict[str, Any] = {
                "samples": sum(r.samples for r in done),
                "commits": len(done),
                "mean_staleness": (sum(r.staleness for r in done) / len(done)) if done else 0.0,
                "max_staleness": max((r.staleness for r in done), default=0),
                "mean_loss": (sum(losses) / len(losses)) if losses else math.nan,
                "last_loss": losses[-1] if losses else math.nan,
                "first_commit_at": first,
                "last_commit_at": last,
                "finished_at": self.finished.get(worker),
                "mean_interval_s": span / (len(done) - 1) if len(done) > 1 else None,
                "samples_per_s": steady / span if span > 0 else None,
                "train_s": None,
                "wait_s": None,
                "busy_fraction": None,
            }
            if self.synchronous and done:
                # waits after every commit but the last lie between first and last commit
                wait = sum(wait_of[id(r)] or 0.0 for r in done[:-1])
                entry["wait_s"] = wait
                entry["train_s"] = max(span - wait, 0.0)
                entry["busy_fraction"] = entry["train_s"] / span if span > 0 else None
            out[worker] = entry
        return out

    def summary_frame(self) -> pandas.DataFrame:
        """:meth:`summary` as a pandas DataFrame.

        Returns:
            A `pandas.DataFrame` with one row per worker (index `worker`) and one column
            per key of `summary()`.
        """
        import pandas as pd

        frame = pd.DataFrame.from_dict(self.summary(), orient="index")
        frame.index.name = "worker"
        return frame

    def _round_waits(self, records: list[Commit]) -> list[float | None]:
        """For a synchronous run: per record, seconds from its arrival to its round's end.

        Replays the server's rendezvous: a round ends when every worker still training has
        committed once; a worker stops taking part when it says goodbye. None for loss
        reports and for commits whose round never completed (an aborted run).
        """
        events = [(r.time, 0, i) for i, r in enumerate(records) if r.committed]
        events += [(t, 1, w) for w, t in self.finished.items()]
        events.sort()
        rendezvous: Rendezvous[int] = Rendezvous(self.workers)
        waits: list[float | None] = [None] * len(records)
        for when, kind, key in events:
            ended = (rendezvous.arrive(records[key].worker, key) if kind == 0
                     else rendezvous.leave(key))
            for i in ended or ():
                waits[i] = max(when - records[i].time, 0.0)
        return waits

    def running_loss(self, window: int | None = None) -> tuple[list[float], list[float]]:
        """The workers' training loss over time, smoothed across workers.

        At every record (with samples and a finite loss), the sample-weighted mean loss of
        the last `window` such records of all workers. This is the loss the workers
        reported for their own windows; it stands in for the centre variable's loss, which
        is not evaluated during training. For elastic-averaging trainers it is the
        replicas' loss, not the centre's.

        Args:
            window: How many of the latest records to average. Defaults to `None`: two
                per worker.

        Returns:
            `(times, losses)`: two lists of floats of equal length, times in seconds
            since the parameter server started.
        """
        records = sorted((r for r in list(self.records)
                          if r.samples > 0 and math.isfinite(r.loss)), key=lambda r: r.time)
        if window is None:
            window = 2 * max(len({r.worker for r in records}), 1)
        window = max(int(window), 1)
        times: list[float] = []
        losses: list[float] = []
        weighted = weights = 0.0
        for i, r in enumerate(records):
            weighted += r.loss * r.samples
            weights += r.samples
            if i >= window:
                old = records[i - window]
                weighted -= old.loss * old.samples
                weights -= old.samples
            times.append(r.time)
            losses.append(weighted / weights if weights > 0 else math.nan)
        return times, losses

    def to_pandas(self) -> pandas.DataFrame:
        """Every record as a pandas DataFrame.

        Returns:
            A `pandas.DataFrame` with one row per record and the columns `time`,
            `worker`, `clock`, `staleness`, `loss`, `samples`, `committed`.
        """
        import pandas as pd

        rows = [(r.time, r.worker, r.clock, r.staleness, r.loss, r.samples, r.committed)
                for r in list(self.records)]
        return pd.DataFrame(rows, columns=COLUMNS)

    # ---- plots -------------------------------------------------------------------------
    def plot(self, title: str | None = None, window: int | None = None) -> Figure:
        """Plot the run: loss over time, samples applied, staleness.

        Three panels: the training loss reported with each commit over time (one line per
        worker plus the running mean of all workers, see `running_loss`), the samples
        applied to the centre variable over time, and the histogram of the commits'
        staleness. Drawn on matplotlib's Agg canvas: no display needed.

        Args:
            title: A title above the panels. Defaults to `None` (none).
            window: The running mean's window, as in `running_loss`. Defaults to `None`.

        Returns:
            A matplotlib `Figure`. Save it with `fig.savefig("history.png")`; in Jupyter
            it displays itself.

        Raises:
            ImportError: matplotlib is not installed (`pip install distkeras[plots]`).
        """
        fig = _figure(figsize=(15, 4.2))
        loss_ax, samples_ax, stale_ax = fig.subplots(1, 3, width_ratios=[1.5, 1, 1])
        records = list(self.records)
        colors = _colors()
        for n, worker in enumerate(self.workers):
            mine = [r for r in records if r.worker == worker and math.isfinite(r.loss)]
            loss_ax.plot([r.time for r in mine], [r.loss for r in mine], marker=".",
                         markersize=3, linewidth=0.8, alpha=0.55, color=colors[n % len(colors)],
                         label=f"worker {worker}")
        times, losses = self.running_loss(window)
        loss_ax.plot(times, losses, color="black", linewidth=2.2,
                     label="all workers, running mean\n(training loss, not a centre evaluation)")
        loss_ax.set_title("training loss reported with each commit")
        loss_ax.set_xlabel("seconds since the parameter server started")
        loss_ax.set_ylabel("mean loss of the window")
        loss_ax.grid(alpha=0.3)
        if records:
            loss_ax.legend(fontsize=8, loc="upper right")

        commits = sorted(self.commits, key=lambda r: r.time)
        total, xs, ys = 0, [0.0], [0]
        for r in commits:
            total += r.samples
            xs.append(r.time)
            ys.append(total)
        samples_ax.step(xs, ys, where="post", color="tab:blue")
        samples_ax.set_title(f"samples applied to the centre ({total:,})")
        samples_ax.set_xlabel("seconds since the parameter server started")
        samples_ax.set_ylabel("samples")
        samples_ax.grid(alpha=0.3)

        stale = [r.staleness for r in commits]
        if stale:
            top = max(stale)
            stale_ax.hist(stale, bins=[b - 0.5 for b in range(top + 2)], color="tab:orange",
                          edgecolor="white")
            mean = sum(stale) / len(stale)
            stale_ax.axvline(mean, color="black", linestyle="--", linewidth=1,
                             label=f"mean {mean:.2f}")
            stale_ax.legend(fontsize=8)
        else:
            stale_ax.text(0.5, 0.5, "no commits", ha="center", va="center",
                          transform=stale_ax.transAxes)
        stale_ax.set_title("staleness of the commits")
        stale_ax.set_xlabel("commits by others since the worker's last pull")
        stale_ax.set_ylabel("commits")
        stale_ax.grid(alpha=0.3, axis="y")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"History({len(self.commits)} commits, {self.samples_applied} samples applied)"


def _history_of(item: Any) -> History:
    if isinstance(item, History):
        return item
    history = getattr(item, "history", None)
    if isinstance(history, History):
        return history
    raise TypeError(f"expected a History or a trainer with .history, got {type(item).__name__}")


def compare(histories: Mapping[str, Any], title: str | None = "training loss vs wall time",
            window: int | None = None, ax: Axes | None = None) -> Figure:
    """Plot the loss against wall time of several runs on one axes, one line per run.

    Each line is :meth:`History.running_loss` (the workers' reported training loss,
    smoothed; the centre variable is not evaluated). Time starts when each run's parameter
    server started, so start-up costs are in the picture but Spark job scheduling before the
    server is not.

    Args:
        histories: A mapping from a label (e.g. the trainer's name) to a `History` or to
            a trainer (its `history` is used).
        title: The axes' title; `None` for none. Defaults to
            `"training loss vs wall time"`.
        window: The running mean's window, as in `History.running_loss`. Defaults to
            `None`.
        ax: A matplotlib `Axes` to draw into. Defaults to `None`: a new Figure.

    Returns:
        The matplotlib `Figure` drawn on (that of `ax` when given).

    Raises:
        TypeError: A value of `histories` is neither a `History` nor has one.
        ImportError: matplotlib is not installed (`pip install distkeras[plots]`).

    Example:

    ```python
    compare({"ADAG": adag, "DOWNPOUR": downpour.history}).savefig("compare.png")
    ```
    """
    if ax is None:
        fig = _figure(figsize=(8, 4.8))
        ax = fig.subplots()
    else:
        fig = ax.figure
    colors = _colors()
    for n, (label, item) in enumerate(histories.items()):
        history = _history_of(item)
        times, losses = history.running_loss(window)
        ax.plot(times, losses, linewidth=1.8, color=colors[n % len(colors)],
                label=f"{label} ({history.samples_applied:,} samples)")
    ax.set_xlabel("seconds since the run's parameter server started")
    ax.set_ylabel("training loss (running mean over workers)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if histories:
        ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def _figure(figsize: tuple[float, float]) -> Figure:
    """A Figure on an Agg canvas: no pyplot state, no display needed, savefig works."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _colors() -> list[str]:
    return [f"C{i}" for i in range(10)]
