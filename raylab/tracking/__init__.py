"""MLflow conventions (URI, experiments, nested runs, params, tags) and run artifacts."""

from raylab.tracking.mlflow_conventions import (
    TrackedRun,
    configure,
    experiment_id,
    flatten_params,
    run_tags,
    tracked_run,
    tracking_uri,
)

__all__ = ["TrackedRun", "configure", "experiment_id", "flatten_params", "run_tags", "tracked_run", "tracking_uri"]
