"""What a user sees while training: a bar on a terminal or in a notebook, a log line every
``log_every`` seconds in a log (spark-submit, no TTY), nothing with ``verbose=0``."""

from __future__ import annotations

import io
import re
import sys
import time

import pytest

import distkeras
from distkeras.history import History
from distkeras.monitor import Progress

pytestmark = pytest.mark.timeout(300)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def history_with(commits: int, samples: int = 10) -> History:
    history = History()
    history.start()
    for clock in range(commits):
        history.add_commit(clock % 2, clock + 1, clock % 3, 0.5, samples)
    return history


def test_a_log_without_a_terminal_gets_a_line_every_log_every_seconds(capsys):
    history = history_with(3)
    # log_every of 2 s: the first show() comes well within it even on a loaded machine
    progress = Progress(history, rows=100, epochs=1, verbose=1, name="ADAG", log_every=2.0)
    progress.show()  # no line is due yet
    assert capsys.readouterr().err == ""
    time.sleep(2.05)  # sleep never returns early: a line is due
    history.add_commit(0, 4, 1, 0.25, 10)
    progress.show()
    line = capsys.readouterr().err
    assert line.startswith("distkeras: ADAG: 40/100 samples, 4 commits") and "loss 0.4375" in line
    progress.show()  # just logged: the next line waits log_every again
    assert capsys.readouterr().err == ""
    progress.close()  # the last line always comes
    assert capsys.readouterr().err.count("distkeras: ADAG: 40/100 samples") == 1


def test_a_terminal_gets_a_bar_with_loss_and_staleness(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = Progress(history_with(5), rows=100, epochs=1, verbose=1, name="DOWNPOUR")
    progress.show()
    progress.close()
    shown = terminal.getvalue()
    assert "DOWNPOUR" in shown and "50/100" in shown and "samples" in shown
    assert "loss=0.5000" in shown and "staleness=" in shown and "commits_s=" in shown
    assert "distkeras: DOWNPOUR:" not in shown  # a bar, not log lines


def test_verbose_zero_shows_nothing(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    progress = Progress(history_with(5), rows=100, epochs=1, verbose=0)
    progress.show(final=True)
    progress.say("epoch 1/1")
    progress.close()
    assert sys.stderr.getvalue() == "" and capsys.readouterr().out == ""


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_training_run_logs_its_progress_only_when_verbose(verbose, spark, digits, capsys):
    from helpers import mlp

    x, y, _, _ = digits
    df = spark.createDataFrame([(row.tolist(), int(label)) for row, label in
                                zip(x[:400], y[:400])], ["features", "label"])
    trainer = distkeras.DOWNPOUR(mlp(), worker_optimizer="adam",
                                 loss="sparse_categorical_crossentropy", num_workers=2,
                                 num_epoch=1, verbose=verbose)
    capsys.readouterr()
    trainer.train(df)
    out = capsys.readouterr()
    if not verbose:
        assert "distkeras" not in out.err + out.out
    else:
        assert "distkeras: DOWNPOUR: 400/400 samples" in out.err
        assert "%|" not in out.err  # a log, not a bar: nothing here is a terminal
        # the summary says where the time went, phase by phase, as trainer.timings holds it
        summary = re.search(r"trained in ([\d.]+)s \(validation ([\d.]+)s, to first task "
                            r"([\d.]+)s, model built ([\d.]+)s, rows read ([\d.]+)s, to first "
                            r"batch ([\d.]+)s, training ([\d.]+)s, after ([\d.]+)s\)", out.out)
        assert summary, out.out
        parts = [float(v) for v in summary.groups()]
        assert parts[0] == pytest.approx(sum(parts[1:]), abs=0.4)  # rounding of 7 parts
    # every verbosity: the phases in order, ending at the training time
    timings = trainer.timings
    assert list(timings) == ["validated", "server_started", "first_task_started",
                             "first_model_built", "first_rows_read", "first_batch",
                             "last_worker_finished", "returned"]
    values = list(timings.values())
    assert values == sorted(values) and values[0] > 0, timings
    assert timings["returned"] == pytest.approx(trainer.get_training_time())
    reports = trainer.worker_reports
    for r in reports:  # each worker's own phases, in order
        assert r["started"] <= r["model_built"] <= r["rows_read"] <= r["first_batch"] <= \
            r["finished"], r
    assert min(r["first_batch"] for r in reports) - min(r["started"] for r in reports) == \
        pytest.approx(timings["first_batch"] - timings["first_task_started"])
