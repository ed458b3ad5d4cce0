"""CKD and its ablations side by side: a Ray Tune grid over (method, fold, seed).

Each Tune trial is a driver function that trains one variant with Ray Train (its per-epoch
metrics reach Tune through ``TuneReportCallback``), evaluates the periocular encoder on the
fold's unseen identities, logs a nested MLflow run, and reports the test metrics. The trial
itself reserves ~0 CPU; its Train workers reserve ``cpus_per_worker`` (< 1, see the Ray
notes in the README) each, so ``max_concurrent`` trials' workers must fit the cluster.
Trainings are content-addressed (:func:`raylab.methods.ckd.training.run_name`), so
re-running the grid resumes interrupted trainings and reuses finished ones.
"""

from __future__ import annotations

import time
from typing import Any

from raylab.methods.ckd.config import CKDConfig, ProtocolConfig
from raylab.methods.ckd.method import run_ckd
from raylab.methods.ckd.pairs import FoldRoles
from raylab.methods.ckd.tracking import log_ckd_run
from raylab.tracking import tracked_run

JOB = "ckd_train"


def run_trial(
    params: dict[str, Any],
    *,
    roles: dict[int, FoldRoles],
    config: CKDConfig,
    protocol: ProtocolConfig,
    context: dict[str, Any],
) -> dict[str, Any]:
    import mlflow
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    mlflow.set_tracking_uri(context["tracking_uri"])
    method, fold, seed = str(params["method"]), int(params["fold"]), int(params["seed"])
    result = run_ckd(
        roles[fold],
        config,
        protocol,
        method,
        seed=seed,
        storage_path=context["storage_path"],
        callbacks=[TuneReportCallback()],
    )
    tags = {"method": method, "dataset": context["dataset"], "fold": fold, "seed": seed}
    with tracked_run(
        JOB,
        f"{method}-fold{fold}-s{seed}",
        params={"ckd": config, "protocol": protocol, **params},
        tags=tags,
        parent_run_id=context["parent_run_id"],
    ) as run:
        log_ckd_run(run, result, log_model=context.get("log_models", True) and seed == context["first_seed"])
    metrics = {f"test/{k}": v for k, v in result.evaluation.metrics.items()}
    metrics["done"] = 1
    tune.report(metrics)
    return metrics


def run_grid(
    roles: dict[int, FoldRoles],
    config: CKDConfig,
    protocol: ProtocolConfig,
    *,
    methods: tuple[str, ...],
    seeds: tuple[int, ...],
    max_concurrent: int,
    context: dict[str, Any],
) -> list[dict[str, Any]]:
    """Run every (method, fold, seed); returns one ``{method, fold, seed, metrics}`` per trial."""
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, roles=roles, config=config, protocol=protocol, context=context), {"cpu": 0.01}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            "method": tune.grid_search(list(methods)),
            "fold": tune.grid_search(sorted(roles)),
            "seed": tune.grid_search(list(seeds)),
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(
            name=f"{context['name']}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=context["storage_path"], verbose=0
        ),
    )
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} CKD trial(s) failed; first: {errors[0]!r}")
    rows = []
    for result in grid:
        metrics = {k.split("/", 1)[1]: v for k, v in result.metrics.items() if k.startswith("test/")}
        if not metrics:
            raise RuntimeError(f"trial {result.config} finished without test metrics")
        rows.append({"method": result.config["method"], "fold": int(result.config["fold"]), "seed": int(result.config["seed"]), "metrics": metrics})
    return sorted(rows, key=lambda r: (methods.index(r["method"]), r["fold"], r["seed"]))
