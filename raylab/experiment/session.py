"""Joining or starting Ray, and what its console shows.

``$RAY_ADDRESS`` (a cluster, ``ray job submit``) is joined; otherwise a local Ray starts
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


def init_ray(*, verbose: bool = False, **local_options: Any) -> None:
    """Connect to ``$RAY_ADDRESS`` when set (cluster / ``ray job submit``), else start locally."""
    import ray

    from raylab.progress import VERBOSE_ENV

    # Workers learn --verbose from the job's environment; it is added only when the job's own
    # runtime env does not already carry it (Ray refuses two values for one variable).
    runtime_env: dict[str, Any] = {"worker_process_setup_hook": "raylab.experiment.session.quiet_ray_internals"}
    if verbose and os.environ.get(VERBOSE_ENV) != "1":
        runtime_env["env_vars"] = {VERBOSE_ENV: "1"}
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        else:
            ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, **local_options)
    from raylab.progress import configure_ray_data

    configure_ray_data()
