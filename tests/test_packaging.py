"""The wheel is the product: experiments and their packaged configs work from an installed
(non-editable) raylab, run from another directory, exactly as from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip wheel`` of the checkout (built from a copy: a build writes beside its sources),
    installed without dependencies into a plain folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(ROOT / "raylab", source / "raylab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob("raylab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "raylab/configs/meds/elpv.yaml" in names and "raylab/configs/meds/smoke.yaml" in names
    assert "raylab/configs/cost_measurements.yaml" in names  # what --dry-run scales
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(root / "site"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root / "site"


def _raylab(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import sys, raylab, raylab.cli; print(raylab.__file__, file=sys.stderr); "
        "sys.exit(raylab.cli.main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_installed_experiments_resolve_the_same_configs(installed, tmp_path):
    for argv in (
        ["meds_sweep", "--quick"],
        ["meds_sweep", "--config", "meds/smoke", "--set", "seeds=[1, 2]"],
        ["dcae_sweep"],
        ["tailedcore_sweep", "--quick"],
    ):
        from_wheel = _raylab(installed, tmp_path, "run", *argv, "--print-config")
        assert from_wheel.returncode == 0, from_wheel.stderr
        assert str(installed) in from_wheel.stderr.splitlines()[0]  # the installed copy ran, not the checkout
        from_checkout = subprocess.run(
            [sys.executable, "-m", "raylab.cli", "run", *argv, "--print-config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert from_checkout.returncode == 0, from_checkout.stderr
        assert from_wheel.stdout == from_checkout.stdout
        assert "seeds:" in from_wheel.stdout
    listed = _raylab(installed, tmp_path, "jobs")
    assert listed.stdout.split() == [
        "alsuv_attack",
        "ckd_train",
        "dcae_sweep",
        "meds_sweep",
        "nnguide_eval",
        "patchcore_eval",
        "tailedcore_sweep",
    ]
