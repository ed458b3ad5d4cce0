"""What a sweep left in MLflow, read back the way a user finds it: from the parent run's name.

A job logs a parent run named after the sweep and nests its trial and method runs under it
(at any depth: DCAE nests a run per method under each trial). Tests that check what a run
logged, or that the dry run's disk estimate matches it, start from that name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def runs_under(sweep: str) -> list[Any]:
    """The MLflow runs nested, at any depth, under the parent run named ``sweep``."""
    import mlflow

    every = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = {r.info.run_id for r in every if r.info.run_name == sweep}
    if not parents:
        raise LookupError(f"no MLflow run is named {sweep!r}")
    found: list[Any] = []
    while parents:
        children = [r for r in every if r.data.tags.get("mlflow.parentRunId") in parents]
        found += children
        parents = {r.info.run_id for r in children}
    return found


def logged_model_bytes(runs: list[Any]) -> int:
    """Bytes on disk of every MLflow model these runs name in their ``raylab.models`` tags."""
    import mlflow

    from raylab.deploy.logged_models import MODELS_TAG

    uris = {uri for r in runs if MODELS_TAG in r.data.tags for uri in json.loads(r.data.tags[MODELS_TAG]).values()}
    if not uris:
        raise LookupError("none of the runs logged a model")
    total = 0
    for uri in uris:
        folder = Path(mlflow.get_logged_model(uri.removeprefix("models:/")).artifact_location.removeprefix("file://"))
        total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return total


def assert_models_as_estimated(job: str, argv: list[str], runs: list[Any]) -> None:
    """The smoke dry run of ``job`` with ``argv`` estimates the logged models' disk within 10% below
    what ``runs`` logged (it counts the weights; a model folder adds its MLmodel, environment
    and example)."""
    from raylab.experiment import get_experiment, run

    logged = logged_model_bytes(runs)
    estimate = run(get_experiment(job), [*argv, "--smoke", "--dry-run"])["estimate"]["model_gb"] * 2**30
    assert 0.9 * logged <= estimate <= logged, (estimate / 2**30, logged / 2**30)
