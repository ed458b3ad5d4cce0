"""Long steps show progress, and one switch (``RAYLAB_PROGRESS=0`` / ``--no-progress``) silences it."""

from __future__ import annotations

import numpy as np

from raylab import progress
from raylab.memory.coreset import kcenter_greedy


def _coreset() -> np.ndarray:
    points = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    return kcenter_greedy(points, n_select=40, first=0)


def test_memory_building_shows_a_bar_unless_silenced(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "1")
    shown = _coreset()
    assert "coreset" in capsys.readouterr().err
    monkeypatch.setenv(progress.ENV, "0")
    silent = _coreset()
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(shown, silent)  # progress never changes a result


def test_every_job_flag_silences_progress(monkeypatch):
    from raylab.experiment import get_experiment
    from raylab.experiment.arguments import experiment_parser

    monkeypatch.setenv(progress.ENV, "1")
    parser = experiment_parser(get_experiment("meds_sweep"))
    assert parser.parse_args([]).no_progress is False and progress.enabled()
    assert parser.parse_args(["--no-progress"]).no_progress is True
    assert not progress.enabled() and progress.tune_verbosity() == 0
