"""History: summaries, DataFrame and plots from records with known values (no Spark)."""

from __future__ import annotations

import math
import types

import pytest

from distkeras.history import COLUMNS, Commit, History, compare


def asynchronous() -> History:
    """Two workers: worker 0 commits 3 windows of 100 samples, worker 1 two of 50."""
    h = History()
    h.add_commit(0, 1, 0, 2.0, 100, at=1.0)
    h.add_commit(1, 2, 1, 2.2, 50, at=1.5)
    h.add_commit(0, 3, 1, 1.5, 100, at=2.0)
    h.add_commit(0, 4, 0, 1.0, 100, at=3.0)
    h.add_commit(1, 5, 3, 1.8, 50, at=3.5)
    h.add_finished(0, at=3.2)
    h.add_finished(1, at=3.6)
    return h


def synchronous() -> History:
    """Two workers meeting in rounds; worker 1 always arrives 0.5 s after worker 0 and
    worker 0 has one more window than worker 1 (unequal partitions)."""
    h = History()
    h.synchronous = True
    clock = 0
    for start in (0.0, 2.0):
        clock += 1
        h.add_commit(0, clock, 0, 1.0, 10, at=start + 1.0)
        clock += 1
        h.add_commit(1, clock, 0, 1.0, 10, at=start + 1.5)
    h.add_finished(1, at=3.6)
    h.add_commit(0, clock + 1, 0, 1.0, 10, at=4.5)  # alone: worker 1 has left
    h.add_finished(0, at=4.6)
    return h


def test_records_and_commits():
    h = asynchronous()
    h.add_metrics(1, 0.9, 7, at=4.0)
    assert len(h) == 6 and len(h.commits) == 5
    assert h.samples_applied == 400
    assert h.records[-1] == Commit(4.0, 1, -1, 0, 0.9, 7)
    assert not h.records[-1].committed and h.records[0].committed
    assert h.workers == [0, 1]
    assert repr(h) == "History(5 commits, 400 samples applied)"


def test_recording_without_explicit_times_keeps_the_server_api():
    h = History()
    h.start()
    h.add_commit(3, 1, 0, 0.5, 32)  # positional, as the parameter server calls it
    h.add_metrics(3, 0.4, 8)
    h.add_finished(3)
    assert 0.0 <= h.records[0].time <= h.records[1].time <= h.finished[3] <= h.elapsed()
    assert h.summary()[3]["samples"] == 32


def test_summary_per_worker():
    s = asynchronous().summary()
    assert set(s) == {0, 1}
    w0, w1 = s[0], s[1]
    assert (w0["samples"], w0["commits"], w0["max_staleness"]) == (300, 3, 1)
    assert w0["mean_staleness"] == pytest.approx(1 / 3)
    assert w0["mean_loss"] == pytest.approx(1.5) and w0["last_loss"] == 1.0
    assert (w0["first_commit_at"], w0["last_commit_at"], w0["finished_at"]) == (1.0, 3.0, 3.2)
    assert w0["mean_interval_s"] == pytest.approx(1.0)
    assert w0["samples_per_s"] == pytest.approx(200 / 2.0)  # first window excluded
    assert (w1["samples"], w1["commits"], w1["max_staleness"]) == (100, 2, 3)
    assert w1["mean_staleness"] == pytest.approx(2.0)
    assert w1["samples_per_s"] == pytest.approx(50 / 2.0)
    # asynchronous: the server cannot tell training from waiting
    assert w0["wait_s"] is None and w0["train_s"] is None and w0["busy_fraction"] is None


def test_summary_splits_training_and_waiting_for_synchronous_rounds():
    s = synchronous().summary()
    # worker 0: commits at 1.0, 3.0, 4.5 (span 3.5 s); waits 0.5 s for worker 1 after each
    # of the first two, and closes the third round alone
    assert s[0]["wait_s"] == pytest.approx(1.0)
    assert s[0]["train_s"] == pytest.approx(3.5 - 1.0)
    assert s[0]["busy_fraction"] == pytest.approx(2.5 / 3.5)
    # worker 1 always closes the round: never waits
    assert s[1]["wait_s"] == pytest.approx(0.0) and s[1]["busy_fraction"] == pytest.approx(1.0)
    assert s[0]["samples"] == 30 and s[1]["samples"] == 20


def test_round_replay_lets_a_finished_worker_leave_the_round():
    h = synchronous()
    records = list(h.records)
    waits = h._round_waits(records)
    assert waits == pytest.approx([0.5, 0.0, 0.5, 0.0, 0.0])


def test_summary_of_loss_reports_only():
    h = History()
    h.add_metrics(0, 1.0, 10, at=1.0)
    h.add_metrics(0, 0.5, 10, at=2.0)
    s = h.summary()[0]
    assert s["commits"] == 0 and s["samples"] == 0
    assert s["mean_loss"] == pytest.approx(0.75) and s["samples_per_s"] is None
    assert h.samples_applied == 0


def test_empty_history():
    h = History()
    assert h.summary() == {} and h.samples_applied == 0
    assert list(h.to_pandas().columns) == COLUMNS and len(h.to_pandas()) == 0
    assert h.running_loss() == ([], [])


def test_to_pandas():
    h = asynchronous()
    h.add_metrics(1, 0.9, 7, at=4.0)
    frame = h.to_pandas()
    assert list(frame.columns) == ["time", "worker", "clock", "staleness", "loss", "samples",
                                   "committed"]
    assert len(frame) == 6
    assert frame["samples"].sum() == 407
    assert frame.loc[frame.committed, "samples"].sum() == h.samples_applied
    assert frame.groupby("worker")["staleness"].max().to_dict() == {0: 1, 1: 3}
    summary = h.summary_frame()
    assert list(summary.index) == [0, 1] and summary.loc[0, "samples"] == 300


def test_running_loss_is_a_sample_weighted_trailing_mean():
    h = History()
    h.add_commit(0, 1, 0, 4.0, 10, at=1.0)
    h.add_commit(1, 2, 0, 1.0, 30, at=2.0)
    h.add_commit(0, 3, 0, 2.0, 10, at=3.0)
    times, losses = h.running_loss(window=2)
    assert times == [1.0, 2.0, 3.0]
    assert losses == pytest.approx([4.0, (40 + 30) / 40, (30 + 20) / 40])
    _, default = h.running_loss()  # 2 workers -> window 4: the plain weighted mean so far
    assert default[-1] == pytest.approx((40 + 30 + 20) / 50)


def test_running_loss_skips_non_finite_and_empty_windows():
    h = History()
    h.add_commit(0, 1, 0, math.nan, 10, at=1.0)
    h.add_commit(0, 2, 0, 1.0, 0, at=2.0)
    h.add_commit(0, 3, 0, 3.0, 10, at=3.0)
    assert h.running_loss() == ([3.0], [3.0])


def test_plot_returns_a_figure_with_three_panels(tmp_path):
    from matplotlib.figure import Figure

    h = asynchronous()
    fig = h.plot(title="DOWNPOUR")
    assert isinstance(fig, Figure)
    loss_ax, samples_ax, stale_ax = fig.axes
    assert len(fig.axes) == 3
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels[:2] == ["worker 0", "worker 1"] and "running mean" in labels[2]
    assert "not a centre evaluation" in labels[2]
    assert list(loss_ax.get_lines()[0].get_ydata()) == [2.0, 1.5, 1.0]
    assert samples_ax.get_lines()[0].get_ydata()[-1] == 400
    assert sum(p.get_height() for p in stale_ax.patches) == 5  # one count per commit
    assert "seconds" in loss_ax.get_xlabel() and "staleness" in stale_ax.get_title()
    path = tmp_path / "history.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_plot_of_an_empty_history_still_draws(tmp_path):
    fig = History().plot()
    assert len(fig.axes) == 3
    fig.savefig(tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_compare_draws_one_line_per_run(tmp_path):
    from matplotlib.figure import Figure

    trainer_like = types.SimpleNamespace(history=synchronous())
    fig = compare({"DOWNPOUR": asynchronous(), "AveragingTrainer": trainer_like})
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "DOWNPOUR (400 samples)", "AveragingTrainer (50 samples)"]
    assert list(lines[0].get_xdata()) == [1.0, 1.5, 2.0, 3.0, 3.5]
    assert "time" in ax.get_title() and "seconds" in ax.get_xlabel()
    fig.savefig(tmp_path / "compare.png")
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_into_existing_axes_and_rejects_other_things():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    assert compare({"a": asynchronous()}, ax=ax) is fig
    with pytest.raises(TypeError, match="History"):
        compare({"a": 42})
