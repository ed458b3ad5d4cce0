"""The smoke budget and the dry run, checked without running anything.

The smoke budget must leave every paper-size config's architecture as it is (only budget
keys shrink), and ``--dry-run`` must say what a full-size run costs, before Ray starts.
The runs themselves are in ``test_full_size_*.py`` (the ``full_size_smoke`` tier).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raylab.config import ConfigError
from raylab.experiment import experiment_names, get_experiment, run
from raylab.experiment.budget import BUDGET_LEAVES, budget_violations, check_budget_only
from raylab.experiment.identity import flatten
from raylab.experiment.registry import FULL_SIZE_CONFIGS, full_size_arguments
from raylab.testing.random_weights import smoke_weight_arguments


def _arguments(key: str, shared_data: Path, weights: Path) -> list[str]:
    """The config's full-size command line (no ``--smoke``) with random weights where it loads files."""
    argv = full_size_arguments(
        key, str(shared_data), str(shared_data.parent / "weights"), smoke_weight_arguments(key, weights)
    )
    argv.remove("--smoke")
    return argv


@pytest.mark.parametrize("name", [n for n in experiment_names() if get_experiment(n).smoke])
def test_every_smoke_budget_touches_budget_keys_only(name):
    experiment = get_experiment(name)
    assert budget_violations(experiment.smoke) == []
    assert flatten(experiment.smoke), "a smoke budget that shrinks nothing"
    # The cost benchmark's larger budget (where declared) changes only budget keys the smoke sets.
    if experiment.smoke_scaled:
        assert budget_violations(experiment.smoke_scaled) == []
        assert set(flatten(experiment.smoke_scaled)) <= set(flatten(experiment.smoke))


def test_a_smoke_budget_that_changes_the_architecture_is_refused():
    with pytest.raises(ConfigError, match=r"features.image_size is not a budget key"):
        check_budget_only({"images_per_group": 2, "features": {"image_size": 64}}, "test smoke budget")
    assert {"iterations", "epochs", "seeds"} <= BUDGET_LEAVES
    assert not {"image_size", "hidden_dim", "backbone", "width"} & BUDGET_LEAVES


@pytest.mark.parametrize("key", sorted(FULL_SIZE_CONFIGS))
def test_smoke_keeps_the_full_size_architecture(key, no_ray, shared_data, full_size_weights, capsys):
    """Resolved with and without --smoke, a full-size config differs in budget keys only."""
    experiment = get_experiment(FULL_SIZE_CONFIGS[key].experiment)
    argv = _arguments(key, shared_data, full_size_weights)
    full = flatten(run(experiment, [*argv, "--print-config"])["config"])
    smoke = flatten(run(experiment, [*argv, "--smoke", "--print-config"])["config"])
    changed = sorted(k for k in full.keys() | smoke.keys() if full.get(k) != smoke.get(k))
    assert changed, f"{key}: --smoke changed nothing"
    assert [k for k in changed if k.rpartition(".")[2] not in BUDGET_LEAVES] == []
    capsys.readouterr()


def test_smoke_and_quick_are_exclusive(no_ray, capsys):
    with pytest.raises(SystemExit):
        run(get_experiment("meds_sweep"), ["--smoke", "--quick"])
    assert "--smoke and --quick: choose one" in capsys.readouterr().err


def test_the_meds_baseline_scores_the_sweeps_own_features(no_ray, capsys):
    """One source of truth: the full DINOv2 config's PatchCore baseline sizes its maps at 392 px."""
    meds = get_experiment("meds_sweep")
    config = run(meds, ["--config", "meds/full_dinov2", "--print-config"])["config"]
    assert config.baseline_patchcore.features == config.features
    assert config.baseline_patchcore.features.image_size == 392
    with pytest.raises(SystemExit):
        run(meds, ["--set", "patchcore.features.image_size=320", "--print-config"])
    assert "patchcore.features: must be left unset" in capsys.readouterr().err


@pytest.mark.parametrize("key", sorted(FULL_SIZE_CONFIGS))
def test_dry_run_prints_the_plan_and_its_cost_before_ray(key, no_ray, shared_data, full_size_weights, capsys):
    plan = run(
        get_experiment(FULL_SIZE_CONFIGS[key].experiment),
        [*_arguments(key, shared_data, full_size_weights), "--dry-run"],
    )
    text = capsys.readouterr().out
    assert plan["trials"] >= 1 and f"= {plan['trials']} trials" in text
    estimate = plan["estimate"]
    assert estimate is not None, f"{key}: no cost model"
    assert estimate["work"] > 0 and estimate["checkpoint_gb"] >= 0 and estimate["cache_gb"] >= 0
    assert "disk, checkpoints" in text and "arrays per trial" in text
    # Every paper-size config runs its networks on an accelerator: what one step holds there is
    # counted from the config on the meta device, with or without a smoke measurement.
    assert estimate["accelerator_gb"] is not None and estimate["accelerator_gb"] > 0, key
    assert "accelerator memory:  >= " in text
    # Where the config has a smoke measurement, memory is estimated, and time wherever the
    # measurement separated seconds per unit of work; otherwise the plan says what is missing.
    if estimate["device"] is None:
        assert "no smoke measurement of this config" in text
        return
    assert estimate["peak_host_gb"] is not None and estimate["peak_host_gb"] > 0, text
    assert (estimate["trial_seconds"] or 0) > 0 or "time per trial:      not estimated" in text, text


def test_the_cache_root_is_pinned_to_an_absolute_path(tmp_path, monkeypatch):
    """Resolved once in the driver: a Tune trial's own working folder never becomes the cache."""
    from raylab.experiment.session import pinned_environment

    monkeypatch.delenv("RAYLAB_CACHE_DIR")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("RAYLAB_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    pinned = pinned_environment()
    assert Path(pinned["RAYLAB_CACHE_DIR"]).is_absolute()
    assert Path(pinned["RAYLAB_CACHE_DIR"]).is_relative_to(tmp_path.resolve())
    assert pinned["MLFLOW_TRACKING_URI"].startswith("sqlite:///" + str(tmp_path.resolve()))
    assert "RAYLAB_CACHE_DIR" not in os.environ
