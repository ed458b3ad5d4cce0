"""Shared fixtures: one real local Ray for the whole session, real data from ../shared.

Tests that need ``../shared/data`` use the ``shared_data`` fixture: they skip with a reason
where it is absent (a newcomer's laptop), and fail where ``RAYLAB_REQUIRE_SHARED_DATA=1``
(``.ci/run`` sets it: CI always has the data, so it must never skip silently).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _keep_freed_memory() -> None:
    """The allocator settings every raylab job gives its processes (``raylab.allocator``), for
    this process and, through the environment, every process it starts: the session's Ray and
    its workers, the jobs, clusters and servers the tests start."""
    from raylab.allocator import allocator_environment, keep_freed_memory

    keep_freed_memory()
    os.environ.update(allocator_environment())


_keep_freed_memory()

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        message = f"real data not found at {data} (see raylab/data/README.md)"
        if os.environ.get("RAYLAB_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message + "; RAYLAB_REQUIRE_SHARED_DATA=1 makes its absence an error")
        pytest.skip(message)
    return data


@pytest.fixture(scope="session")
def shared_weights(shared_data: Path) -> Path:
    return shared_data.parent / "weights"


@pytest.fixture(scope="session", autouse=True)
def isolated_outputs(tmp_path_factory: pytest.TempPathFactory):
    """Caches and MLflow stores of the test session live in a temporary folder."""
    root = tmp_path_factory.mktemp("raylab-session")
    previous = {k: os.environ.get(k) for k in ("RAYLAB_CACHE_DIR", "MLFLOW_TRACKING_URI")}
    os.environ["RAYLAB_CACHE_DIR"] = str(root / "cache")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    yield root
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the runner gets as far as starting Ray (for checks that must come first)."""
    import raylab.experiment.session as session

    def refuse(**_):
        raise AssertionError("the runner started Ray before rejecting the input")

    monkeypatch.setattr(session, "init_ray", refuse)


@pytest.fixture(scope="session")
def full_size_weights(tmp_path_factory) -> Path:
    """One folder for the random-weight files of the paper-size configs (written on first use)."""
    return tmp_path_factory.mktemp("full-size-weights")


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray cluster of the test session (2 CPUs, like CI). Never `ray stop`."""
    import ray

    if not ray.is_initialized():
        # address="local": never join a cluster some other process started with `ray start`.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def meds_smoke_runs(ray_session, tmp_path_factory):
    """The stale-result reproduction on the MeDS smoke sweep: noise 0, then 0.2, then 0 again
    (shared by the identity tests and, as the local reference, the autoscaling test)."""
    from support_meds import run_meds_smoke

    from raylab.data.store import cache_root

    out = tmp_path_factory.mktemp("meds-smoke")
    first = run_meds_smoke(["--noise-ratios", "0"], out / "first.json")
    changed = run_meds_smoke(["--noise-ratios", "0.2"], out / "changed.json")
    train_runs = sorted(
        p.name for p in (cache_root() / "ray_results").iterdir() if p.name.startswith(first["name"] + "-")
    )
    again = run_meds_smoke(["--noise-ratios", "0"], out / "again.json")
    return {"first": first, "changed": changed, "again": again, "train_runs": train_runs}


# --- test tiers -------------------------------------------------------------------------
# unit: functions and classes on real data and the session's Ray; e2e: whole jobs on real
# data; ops: clusters, servers, job submission, faults and browsers started by the test;
# full_size_smoke: the paper-size configs (deselected by default, run by .ci/run after).
TIERS = ("unit", "e2e", "ops", "full_size_smoke")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier) is not None]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid}: in more than one tier ({', '.join(tiers)})")
        if not tiers:
            item.add_marker(pytest.mark.unit)


def _tier(report) -> str:
    return next((tier for tier in TIERS if tier in report.keywords), "unit")


def pytest_terminal_summary(terminalreporter):
    """Wall time per tier (setup, call and teardown of each test), so CI shows where it goes."""
    seconds: dict[str, float] = {}
    counts: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                tier = _tier(report)
                seconds[tier] = seconds.get(tier, 0.0) + report.duration
                counts[tier] = counts.get(tier, 0) + (report.when == "call")
    if seconds:
        terminalreporter.section("time per tier")
        for tier in TIERS:
            if tier in seconds:
                terminalreporter.write_line(f"{tier:>16}: {seconds[tier] / 60:6.1f} min over {counts[tier]} tests")
