"""What every model raylab logs shares: it is attached to its tracked run, and its requirements
are pinned to the versions that produced it.

MLflow 3 attaches a logged model to the *active* run, while raylab creates its runs through
the client (one per trial and method, nested under the sweep's parent, possibly in a Ray
worker). :func:`attached_to` makes the tracked run active for the call and hands its status
back to the ``tracked_run`` that owns it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raylab.tracking.mlflow_conventions import TrackedRun

# The run tag that lists a run's logged models as JSON (name -> model URI); ``TrackedRun.set_tags(models=...)``
# writes it, and promotion reads it.
MODELS_TAG = "raylab.models"

SCORING_STACK = (
    "torch",
    "timm",
    "numpy",
    "pandas",
    "pillow",
    "safetensors",
    "scipy",
    "mlflow",
    "faiss-cpu",
    "faiss-gpu",
)


@contextlib.contextmanager
def attached_to(run: TrackedRun) -> Iterator[None]:
    """Make ``run`` MLflow's active run (models logged inside attach to it); it stays RUNNING."""
    import mlflow

    with mlflow.start_run(run_id=run.run_id, nested=True):
        yield
    run.client.update_run(run.run_id, status="RUNNING")  # start_run's exit ended it; its tracked_run ends it


def pinned_requirements(packages: Sequence[str] = SCORING_STACK) -> list[str]:
    """``package==version`` for each installed package of ``packages`` (raylab itself is recorded
    in the model's metadata: it installs from its own checkout, not from PyPI)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins
