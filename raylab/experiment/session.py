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

QUIET_ENV = "RAYLAB_QUIET_RAY"
# Loggers whose INFO/WARNING lines are Ray's internals, not the user's run: Train v2's
# per-report "Reporting training result ..." lines and its controller-state polling warnings.
_INTERNAL_LOGGERS = ("ray.train", "ray.tune.integration", "ray.train.v2", "ray.util.state")


def quiet_ray_loggers() -> None:
    """Worker setup hook: keep Ray's internal chatter out of the driver's console."""
    if os.environ.get(QUIET_ENV, "1") == "0":
        return
    for name in _INTERNAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(*, verbose: bool = False, **local_options: Any) -> None:
    """Connect to ``$RAY_ADDRESS`` when set (cluster / ``ray job submit``), else start locally."""
    import ray

    if verbose:
        os.environ[QUIET_ENV] = "0"
    quiet_ray_loggers()
    if not ray.is_initialized():
        runtime_env = {"worker_process_setup_hook": quiet_ray_loggers, "env_vars": {QUIET_ENV: os.environ.get(QUIET_ENV, "1")}}
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        else:
            ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, **local_options)
    from raylab.progress import configure_ray_data

    configure_ray_data()
