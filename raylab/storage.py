"""Where raylab keeps what must outlive a job: the MLflow store, caches, Tune state.

The default root, used when ``MLFLOW_TRACKING_URI`` / ``RAYLAB_CACHE_DIR`` are not set:

* ``$RAYLAB_HOME`` when set (on a cluster: its shared storage, e.g. ``/mnt/raylab``);
* else, when this process runs inside Ray's temporary folder (a ``ray job submit`` driver,
  whose working directory is ``<ray temp>/session_*/runtime_resources/working_dir_files/...``,
  which Ray deletes with the session), the user directory ``~/.raylab``;
* else the working directory, as on a laptop: ``./mlflow.db`` and ``./.raylab``.

Layout under a persistent root: ``mlflow.db`` and ``mlartifacts/`` (MLflow), ``cache/``
(shards, features, ``ray_results/`` of Tune and Train). Under the working directory the
layout is the historical one (``./mlflow.db``, ``./mlartifacts``, ``./.raylab``).

The store is named as MLflow names its default (``sqlite:///mlflow.db``), so a plain
``mlflow ui`` started in the same folder shows raylab's runs. Older raylab versions wrote
``mlruns.db``: jobs no longer write it, but readers (``raylab ui``, ``raylab report``) still
look for it beside each ``mlflow.db`` so its runs stay reachable.

The first time a process other than a Ray worker resolves a root that is not the working
directory, it says where results go on stderr.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "RAYLAB_HOME"
DEFAULT_HOME = "~/.raylab"
DB_NAME = "mlflow.db"  # mlflow.store.tracking.DEFAULT_TRACKING_URI's file
LEGACY_DB_NAME = "mlruns.db"  # what raylab wrote before; read, never written
# Set by Ray's job supervisor for every `ray job submit` entrypoint (ray/dashboard/modules/job/
# job_supervisor.py, _get_driver_env_vars; the name is ray._private.runtime_env.constants.
# RAY_JOB_CONFIG_JSON_ENV_VAR). Ray sets nothing else job-specific for the driver.
RAY_JOB_DRIVER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_SESSION_DIR = re.compile(r"^session_\d{4}-\d{2}-\d{2}_")

_announced: set[Path] = set()


@dataclass(frozen=True)
class Root:
    path: Path
    reason: str  # "RAYLAB_HOME", "ray-session" or "cwd"

    @property
    def is_cwd(self) -> bool:
        return self.reason == "cwd"

    @property
    def tracking_db(self) -> Path:
        return self.path / DB_NAME

    @property
    def cache_dir(self) -> Path:
        return (self.path / ".raylab").resolve() if self.is_cwd else self.path / "cache"


def ray_temp_roots() -> list[Path]:
    """Ray's temp-dir roots this process could be under: the connected node's (when Ray is
    up in this process), ``$RAY_TMPDIR/ray``, ``$TMPDIR/ray`` (Linux) and ``/tmp/ray``, the
    places ``ray._common.utils.get_default_ray_temp_dir`` picks from."""
    roots: list[str] = []
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            node = ray._private.worker._global_node
            if node is not None:
                roots.append(node.get_temp_dir_path())
        except Exception:  # noqa: BLE001 - internal API; the defaults below still apply
            pass
    if os.environ.get("RAY_TMPDIR"):
        roots.append(os.path.join(os.environ["RAY_TMPDIR"], "ray"))
    if sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        roots.append(os.path.join(os.environ["TMPDIR"], "ray"))
    roots.append(os.path.join(os.sep, "tmp", "ray"))
    resolved: list[Path] = []
    for root in roots:
        path = Path(root).resolve()
        if path not in resolved:
            resolved.append(path)
    return resolved


def in_ray_session(cwd: Path | None = None) -> bool:
    """Whether files written relative to ``cwd`` would land in Ray's temporary folder: the
    process is a submitted job's driver, or the resolved cwd is under a Ray temp root, or it
    looks like ``.../session_<date>_.../runtime_resources/...`` (a node started with a custom
    ``--temp-dir``)."""
    if os.environ.get(RAY_JOB_DRIVER_ENV):
        return True
    here = (cwd or Path.cwd()).resolve()
    if any(here == root or root in here.parents for root in ray_temp_roots()):
        return True
    parts = here.parts
    return any(_SESSION_DIR.match(part) and "runtime_resources" in parts[i + 1 :] for i, part in enumerate(parts))


def persistent_root() -> Path:
    """``$RAYLAB_HOME`` or ``~/.raylab``, whichever raylab would use when the cwd is not kept."""
    home = os.environ.get(HOME_ENV, "").strip()
    return Path(home or DEFAULT_HOME).expanduser().resolve()


def default_root(*, announce: bool = True) -> Root:
    """The root for stores the caller has no explicit setting for (see the module doc)."""
    if os.environ.get(HOME_ENV, "").strip():
        root = Root(persistent_root(), HOME_ENV)
    elif in_ray_session():
        root = Root(persistent_root(), "ray-session")
    else:
        return Root(Path.cwd(), "cwd")
    if root.reason == "ray-session":
        root.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        root.path.mkdir(parents=True, exist_ok=True)
    if announce:
        _announce(root)
    return root


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        return ray._private.worker.global_worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001
        return False


def _announce(root: Root) -> None:
    if root.path in _announced or _in_ray_worker():
        return
    _announced.add(root.path)
    why = (
        f"${HOME_ENV}"
        if root.reason == HOME_ENV
        else f"the working directory is Ray's temporary folder; set ${HOME_ENV} to choose"
    )
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root.tracking_db}"
    cache = os.environ.get("RAYLAB_CACHE_DIR") or root.cache_dir
    print(
        f"raylab: results go to {root.path} ({why}): MLflow {tracking}, caches and Tune state {cache}",
        file=sys.stderr,
        flush=True,
    )


def tracking_db_candidates() -> list[Path]:
    """The SQLite stores a reader (``raylab ui``, ``raylab report``) should look at, without
    an explicit ``MLFLOW_TRACKING_URI``: the one jobs started here would write (first), the
    ``mlruns.db`` older versions wrote beside it, then the same two under the persistent root
    that submitted jobs write to when the cwd is Ray's temporary folder."""
    candidates: list[Path] = []
    for folder in (default_root(announce=False).path, persistent_root()):
        for name in (DB_NAME, LEGACY_DB_NAME):
            if folder / name not in candidates:
                candidates.append(folder / name)
    return candidates
