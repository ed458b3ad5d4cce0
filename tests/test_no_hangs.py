"""A job on a machine too small for it stops with a message instead of waiting forever.

Both cases need a Ray with one CPU, which the session's two-CPU Ray cannot be, so each runs
in a fresh Python process that starts its own local Ray (never a cluster of this machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ops

REPOSITORY = Path(__file__).resolve().parents[1]


def _run_on_one_cpu(script: str, tmp_path: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        "RAYLAB_CACHE_DIR": str(tmp_path / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    env.pop("RAY_ADDRESS", None)
    prologue = "import ray\nray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", prologue + script],
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.perf_counter() - started


@pytest.mark.shared_data
def test_feature_extraction_runs_on_a_one_cpu_ray(shared_data, tmp_path):
    """The extraction actor and the decode tasks that feed it share the only CPU (it used to deadlock)."""
    script = f"""
from raylab.data import load_corpus
from raylab.data.protocols import subsample_corpus
from raylab.features import FeatureSpec
from raylab.features.extract import extract_patch_features
corpus = subsample_corpus(load_corpus("magnetic_tile", {str(shared_data)!r}), 2)
features = extract_patch_features(corpus, FeatureSpec(image_size=64), batch_size=4)
print("extracted", features.patches.shape)
"""
    done, _ = _run_on_one_cpu(script, tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "extracted (6, 8, 8, 152)" in done.stdout


def test_a_trial_larger_than_the_local_ray_stops_within_a_minute(tmp_path):
    """Two MeDS Train workers per trial cannot both start on one CPU: the job says so before extracting."""
    script = "from raylab.experiment import main\nmain('meds_sweep', ['--quick', '--set', 'meds.train_workers=2'])\n"
    done, seconds = _run_on_one_cpu(script, tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "meds_sweep: one trial cannot run here: it asks for 1.98 CPUs at once but the local Ray has 1" in done.stderr
    assert seconds < 60
    assert not (tmp_path / "cache" / "features").exists()  # stopped before any extraction
