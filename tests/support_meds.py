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
