"""The heartbeat makes a long silent wait visible, and is silent otherwise.

A step that waits on Ray (a Train run between epochs, a sweep's tasks) prints nothing while
it waits; the heartbeat's periodic line is what tells a slow step from a stuck one. It must
stop with the step, print nothing for steps shorter than its interval, and follow the
progress switch like every other progress output.
"""

from __future__ import annotations

import io
import re
import threading
import time

from raylab.progress import ENV, heartbeat

LINE = re.compile(r"^\[raylab\] feature extraction still running after (\d+) s$")


def _heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("raylab-heartbeat")]


def test_a_long_step_prints_while_it_lasts_and_stops_with_it(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    out = io.StringIO()
    with heartbeat("feature extraction", every_s=0.1, stream=out):
        time.sleep(0.55)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2, lines
    assert all(LINE.match(line) for line in lines), lines
    assert not _heartbeat_threads()
    time.sleep(0.3)
    assert out.getvalue().splitlines() == lines  # nothing after the step ended


def test_a_failing_step_stops_its_heartbeat(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    out = io.StringIO()
    try:
        with heartbeat("feature extraction", every_s=0.05, stream=out):
            time.sleep(0.15)
            raise KeyError("boom")
    except KeyError:
        pass
    assert out.getvalue() and not _heartbeat_threads()


def test_it_goes_to_stderr_by_default(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "1")
    with heartbeat("feature extraction", every_s=0.05):
        time.sleep(0.2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert LINE.match(captured.err.splitlines()[0]), captured.err


def test_silent_for_a_short_step_and_when_progress_is_off(monkeypatch):
    monkeypatch.setenv(ENV, "1")
    out = io.StringIO()
    with heartbeat("feature extraction", every_s=5.0, stream=out):
        time.sleep(0.1)
    monkeypatch.setenv(ENV, "0")
    with heartbeat("feature extraction", every_s=0.05, stream=out):
        assert not _heartbeat_threads()
        time.sleep(0.3)
    assert out.getvalue() == ""
