"""Joining or starting Ray, and what its console shows.

``$RAY_ADDRESS`` (a cluster, ``ray job submit``) is joined, after releasing what stopped
jobs left reserved there (:mod:`raylab.experiment.leftovers`); otherwise a local Ray starts
in-process ("local", never a cluster some other process left running on this machine, so
a job's resources never depend on what else runs). By default the console shows raylab's
progress (Ray Data bars, Tune's table, a line per Train epoch) and the results; Ray's own
internal warnings and per-report lines stay in Ray's log files unless ``verbose``.
"""

from __future__ import annotations

import logging
import os
from typing import Any


def quiet_ray_internals() -> None:
    """Worker setup hook: Ray Train's internal lines stay in Ray's log files unless ``--verbose``.

    Two sources are not covered by Train's own ``LoggingConfig``: the placement-group
    cleaner's warning each time it polls a state API that a dashboard-less local Ray does not
    serve, and the per-report "Reporting training result ..." line, whose logger is named by
    its source file's path rather than under ``ray.train``.
    """
    import ray

    from raylab.progress import train_log_level

    level = train_log_level()
    logging.getLogger("ray.train").setLevel(level)
    report_logger = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")
    logging.getLogger(report_logger).setLevel(level)


def pinned_environment() -> dict[str, str]:
    """The cache root, tracking URI and MLflow's HTTP bounds, resolved once here in the driver,
    for every process.

    Left to each process, a relative default resolves against that process's working folder:
    a Tune trial's is its own trial folder, so caches written inside trials (tail views, weight
    selections) would land there, shared with no other trial and lost on restart. On a
    cluster, point ``RAYLAB_CACHE_DIR`` (or ``RAYLAB_HOME``) at storage every node mounts.
    """
    from raylab.data.store import cache_root
    from raylab.tracking import tracking_uri
    from raylab.tracking.endpoint import http_limits

    return {"RAYLAB_CACHE_DIR": str(cache_root()), "MLFLOW_TRACKING_URI": tracking_uri(), **http_limits()}


def init_ray(*, verbose: bool = False, **local_options: Any) -> None:
    """Connect to ``$RAY_ADDRESS`` when set (cluster / ``ray job submit``), else start locally."""
    import ray

    from raylab.progress import VERBOSE_ENV

    if not ray.is_initialized():
        # Workers learn these from the job's environment; each is added only when the job's own
        # runtime env does not already carry it (Ray refuses two values for one variable).
        from raylab.allocator import allocator_environment

        pinned = {**pinned_environment(), **allocator_environment()}
        env_vars = {key: value for key, value in pinned.items() if key not in os.environ}
        if verbose and os.environ.get(VERBOSE_ENV) != "1":
            env_vars[VERBOSE_ENV] = "1"
        os.environ.update(env_vars)
        runtime_env: dict[str, Any] = {"worker_process_setup_hook": "raylab.experiment.session.quiet_ray_internals"}
        if env_vars:
            runtime_env["env_vars"] = env_vars
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
            from raylab.experiment.leftovers import release_orphaned_placement_groups

            release_orphaned_placement_groups()  # a stopped job's leftovers would starve this one
        else:
            ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, **local_options)
    from raylab.progress import configure_ray_data

    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    configure_ray_data()
