"""A job's ``--help`` reads only its declarative fields: no torch, Ray, pyarrow or the like.

Each check runs in a fresh interpreter and then lists which heavy packages ended up in
``sys.modules``, so the result does not depend on what this test session already imported
(or on how busy the machine is: nothing here is timed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raylab.experiment.registry import experiment_names

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "pyarrow", "pandas", "scipy", "timm", "faiss", "mlflow")

# Runs a script or callable as ``__main__`` would, tolerates the SystemExit of --help, then
# prints the heavy packages that were imported as the last line of stderr.
PROBE = """
import json, runpy, sys
heavy = {heavy!r}
try:
    {body}
except SystemExit as stop:
    code = stop.code or 0
else:
    code = 0
print(json.dumps({{"code": code, "heavy": sorted(m for m in heavy if m in sys.modules)}}), file=sys.stderr)
"""


def probe(body: str) -> tuple[int, str, dict]:
    """Run ``body`` in a fresh interpreter in the checkout; its stdout and the probe's verdict."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY, body=body)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stderr.strip().splitlines()[-1])
    return verdict["code"], result.stdout, verdict


# How a user asks each job for its help: the job script, and the ``raylab run`` command.
HELP_ENTRY_POINTS = {
    "job script": (
        "jobs/{name}.py --help",
        "sys.argv = ['jobs/{name}.py', '--help']; runpy.run_path('jobs/{name}.py', run_name='__main__')",
    ),
    "raylab run": ("raylab run {name} --help", "from raylab.cli import main; main(['run', '{name}', '--help'])"),
}


@pytest.mark.parametrize("entry", sorted(HELP_ENTRY_POINTS))
@pytest.mark.parametrize("name", experiment_names())
def test_help_imports_nothing_heavy(name, entry):
    command, body = (text.format(name=name) for text in HELP_ENTRY_POINTS[entry])
    code, text, verdict = probe(body)
    assert code == 0
    assert "--dataset" in text
    assert verdict["heavy"] == [], f"{command} imported {verdict['heavy']}"


def test_typed_configs_import_without_torch():
    modules = [
        "raylab.features",
        "raylab.tasks.anomaly.patchcore.config",
        "raylab.tasks.ood.config",
        "raylab.tasks.one_class.config",
        *(f"raylab.methods.{m}.config" for m in ("meds", "tailedcore", "dcae", "nnguide", "ckd", "alsuv")),
    ]
    code, _, verdict = probe("; ".join(f"import {module}" for module in modules))
    assert code == 0
    assert verdict["heavy"] == [], f"importing the typed configs imported {verdict['heavy']}"


def test_an_extraction_worker_imports_neither_pandas_scipy_mlflow_nor_faiss():
    """The module of the extraction task is what every extraction worker imports at its start
    (torch and pyarrow it needs): the data package keeps pandas and scipy.stats inside the
    functions that use them, which was a quarter of that start on 2 busy cores."""
    code, _, verdict = probe("import raylab.features.extract")
    assert code == 0
    assert {"torch", "pyarrow"} <= set(verdict["heavy"])
    assert not {"pandas", "scipy", "mlflow", "faiss"} & set(verdict["heavy"]), verdict["heavy"]
