"""The MeDS smoke sweep as the experiment tests and the autoscaling test run it."""

from __future__ import annotations

import json
from pathlib import Path

MEDS_SMOKE = ["--quick", "--config", "meds/smoke", "--no-progress"]


def run_meds_smoke(argv: list[str], summary: Path) -> dict:
    """The smoke sweep in this process (on the session's local Ray), with a summary JSON."""
    from raylab.experiment import get_experiment, run

    result = run(get_experiment("meds_sweep"), [*MEDS_SMOKE, *argv, "--summary-json", str(summary)])
    assert json.loads(summary.read_text())["sweep"] == result["name"]
    return result


def metrics_by_row(rows: list[dict]) -> dict[tuple, dict]:
    """Each summary row's metrics under its (method, noise ratio, seed); no key twice."""
    keyed = {(r["method"], r["noise_ratio"], r["seed"]): r["metrics"] for r in rows}
    assert len(keyed) == len(rows), "two rows share a (method, noise ratio, seed)"
    return keyed


def assert_rows_match_local_run(rows: list[dict], local_rows: list[dict]) -> None:
    """The same rows as a run on the session's local Ray, metrics equal to float rounding:
    another cluster computes the same numbers in another order."""
    import pytest

    actual, local = metrics_by_row(rows), metrics_by_row(local_rows)
    assert sorted(actual) == sorted(local)
    for key, metrics in local.items():
        assert actual[key] == pytest.approx(metrics, abs=1e-6), key
