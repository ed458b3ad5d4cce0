"""Contract tests over the experiment registry, and the runner's identity on the MeDS sweep.

Every registered experiment: ``--help`` explains the standard options; a wrong-typed or
unknown config value, a malformed ``--seeds`` and a missing data folder fail with exit code 2
before Ray starts, naming the culprit; ``--print-config`` prints YAML that loads back to the
same config. On the MeDS smoke sweep (real ELPV images, a real local Ray, real MLflow): a
changed setting is a new sweep with new rows, an unchanged rerun reuses every result, a
name that holds other inputs is refused, and ``--search 2`` trains each trial's own networks.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from support_meds import MEDS_SMOKE, run_meds_smoke

from raylab.config import ConfigError, from_mapping, load_config, parse_assignment
from raylab.experiment import experiment_names, get_experiment, run
from raylab.experiment.identity import IDENTITY_FILE, IdentityConflict, changed_keys, claim, content_hash
from raylab.resources import Resources, gpu_profile
from raylab.tracking import tracking_uri

NAMES = experiment_names()
STANDARD = (
    "--dataset",
    "--data-root",
    "--profile",
    "--quick",
    "--config",
    "--set",
    "--print-config",
    "--seeds",
    "--name",
    "--summary-json",
    "--no-progress",
    "--verbose",
)


def _rejected(name: str, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(get_experiment(name), argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_registry_names_every_job_script():
    scripts = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "jobs").glob("*.py"))
    assert NAMES == scripts
    with pytest.raises(KeyError, match="known: alsuv_attack"):
        get_experiment("meds")


@pytest.mark.parametrize("name", NAMES)
def test_help_lists_the_standard_options(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(get_experiment(name), ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert [option for option in STANDARD if option not in text] == []


@pytest.mark.parametrize("name", NAMES)
def test_wrong_typed_and_unknown_config_values_fail_before_ray(name, no_ray, capsys):
    err = _rejected(name, ["--set", "seeds=[zero]"], capsys)
    assert "seeds[0]: expected int, got str 'zero'" in err
    err = _rejected(name, ["--set", "no_such_key=1"], capsys)
    assert "unknown keys ['no_such_key']" in err


@pytest.mark.parametrize("name", NAMES)
def test_malformed_seeds_fail_before_ray(name, no_ray, capsys):
    for text in (",,", "0,x", "1,1"):
        err = _rejected(name, ["--seeds", text], capsys)
        assert f"--seeds {text!r}" in err


@pytest.mark.parametrize("name", NAMES)
def test_printed_config_loads_back_to_the_same_config(name, no_ray, capsys, tmp_path):
    experiment = get_experiment(name)
    printed = run(experiment, ["--print-config", "--resources", "gpu"])
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    values = yaml.safe_load(path.read_text())
    assert from_mapping(Resources, values.pop("resources")) == printed["resources"] == gpu_profile()
    assert from_mapping(type(printed["config"]), values) == printed["config"]
    again = run(experiment, ["--config", str(path), "--print-config"])
    assert (again["config"], again["resources"]) == (printed["config"], printed["resources"])
    capsys.readouterr()


def test_missing_or_wrong_data_root_fails_before_ray(no_ray, capsys, tmp_path):
    err = _rejected("meds_sweep", ["--dataset", "magnetic_tile"], capsys)
    assert "--dataset magnetic_tile reads its files from a folder: pass --data-root" in err
    err = _rejected("meds_sweep", ["--dataset", "magnetic_tile", "--data-root", str(tmp_path / "absent")], capsys)
    assert f"--data-root {tmp_path / 'absent'}: no such folder" in err
    err = _rejected("meds_sweep", ["--dataset", "magnetic_tiles"], capsys)
    assert "unknown dataset 'magnetic_tiles'" in err


def test_an_anomaly_sweeps_budget_keeps_whole_classes_then_images_per_group(no_ray):
    """``max_classes`` keeps whole classes (ELPV's first of mono/poly), then every (class,
    split, label) group of those is cut to ``images_per_group``."""
    from raylab.tasks.anomaly.experiment import _corpus

    whole = _corpus("elpv", None, "{}", None, None)
    cut = _corpus("elpv", None, "{}", 1, 2)
    assert set(whole.column("class_name").to_pylist()) == {"mono", "poly"}
    assert set(cut.column("class_name").to_pylist()) == {"mono"}
    groups = Counter(zip(*(cut.column(k).to_pylist() for k in ("split", "label")), strict=True))
    assert {("train", 0), ("test", 0), ("test", 1)} <= set(groups) and set(groups.values()) == {2}


def test_meds_config_types_and_ranges_are_checked_by_key_path(no_ray, capsys):
    err = _rejected("meds_sweep", ["--set", "meds.stage1.bootstraps=ten"], capsys)
    assert "--set: meds.stage1.bootstraps: expected int, got str 'ten'" in err
    err = _rejected("meds_sweep", ["--set", "noise_ratios=0.2"], capsys)
    assert "noise_ratios: expected a list of float, got float 0.2" in err
    err = _rejected("meds_sweep", ["--set", "images_per_group=-1"], capsys)
    assert "images_per_group: must be >= 1 or null, got -1" in err
    err = _rejected("meds_sweep", ["--set", "max_classes=0"], capsys)
    assert "max_classes: must be >= 1 or null, got 0" in err
    err = _rejected("meds_sweep", ["--set", "meds.stage1.seed=3"], capsys)
    assert "meds.stage1.seed is decided by each setting" in err
    for text in ("0,nan", "0,1.5", "0,,0.2"):
        assert "--noise-ratios" in _rejected("meds_sweep", ["--noise-ratios", text], capsys)
    # YAML 1.2 floats: 2e-3 is a number (PyYAML's 1.1 rules would make it a string).
    config = run(get_experiment("meds_sweep"), ["--set", "meds.distillation.lr=2e-3", "--print-config"])["config"]
    assert config.meds.distillation.lr == 0.002
    capsys.readouterr()


def test_keys_a_setting_decides_are_refused(no_ray, capsys):
    assert "meds.stage1.seed is decided by each setting" in _rejected(
        "meds_sweep", ["--set", "meds.stage1.seed=3"], capsys
    )
    err = _rejected("nnguide_eval", ["--set", "detectors.knn_k50={kind: knn, bank_seed: 3}"], capsys)
    assert "detectors.knn_k50.bank_seed is decided by each setting's seed" in err
    assert "data.dataset is decided by each setting" in _rejected(
        "alsuv_attack", ["--set", "data.dataset=face_folder"], capsys
    )


def test_profiles_take_their_own_dataset_overlay(no_ray, capsys):
    meds = get_experiment("meds_sweep")
    full = run(meds, ["--profile", "full", "--print-config"])["config"]
    assert (full.meds.stage1.bootstraps, full.meds.distillation.iterations) == (100, 10_000)  # not elpv.yaml's CPU size
    cpu = run(meds, ["--print-config"])["config"]
    assert (cpu.images_per_group, cpu.meds.stage1.bootstraps) == (80, 10)  # raylab/configs/meds/elpv.yaml
    quick = run(meds, ["--quick", "--print-config"])["config"]
    assert (quick.images_per_group, quick.noise_ratios) == (40, (0.0, 0.2))
    assert "--quick and --profile full: choose one" in _rejected("meds_sweep", ["--quick", "--profile", "full"], capsys)
    capsys.readouterr()


def test_config_errors_name_file_key_and_value(tmp_path):
    from raylab.methods.meds.experiment import MeDSSweepConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text("meds:\n  stage1: {bootstraps: [\n")
    with pytest.raises(ConfigError, match=rf"{bad}: not valid YAML"):
        load_config(MeDSSweepConfig, bad)
    bad.write_text("injected_in_test: 1\n")
    with pytest.raises(ConfigError, match=rf"{bad}.injected_in_test: expected str, got int 1"):
        load_config(MeDSSweepConfig, bad)
    bad.write_text("injected_in_test: sometimes\n")
    with pytest.raises(
        ConfigError, match=rf"{bad}.*injected_in_test: must be one of removed, kept, both, got 'sometimes'"
    ):
        load_config(MeDSSweepConfig, bad)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_assignment("meds.stage1.rho")
    assert parse_assignment("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError, match=r"x\.noise_ratios\[1\]: expected a number, got NaN"):
        from_mapping(MeDSSweepConfig, {"noise_ratios": [0.0, float("nan")]}, where="x")


def test_identity_claim_binds_a_name_to_its_inputs(tmp_path):
    first = {"config": {"lr": 0.1, "size": 3}, "axes": {"seed": [0]}}
    assert content_hash(first) == content_hash({"axes": {"seed": [0.0]}, "config": {"size": 3, "lr": 0.1}})
    assert content_hash(first) != content_hash({**first, "axes": {"seed": [1]}})
    assert claim(tmp_path / "sweep", first, name="sweep") is False
    assert (tmp_path / "sweep" / IDENTITY_FILE).is_file()
    assert claim(tmp_path / "sweep", first, name="sweep") is True
    changed = {"config": {"lr": 0.2, "size": 3}, "axes": {"seed": [0]}}
    assert changed_keys(first, changed) == ["config.lr"]
    with pytest.raises(IdentityConflict, match=r"changed: config\.lr"):
        claim(tmp_path / "sweep", changed, name="sweep")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "experiment_state.json").write_text("{}")
    with pytest.raises(IdentityConflict, match="without an identity record"):
        claim(tmp_path / "old", first, name="old")


def _nested_runs(sweep: str) -> list:
    client = mlflow.MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("raylab/meds_sweep")
    parents = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{sweep}'")
    assert len(parents) == 1, "one sweep, one parent run, however often it is run"
    ids = {p.info.run_id for p in parents}
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") in ids]


@pytest.fixture(scope="module")
def meds_reruns(meds_smoke_runs):
    first = meds_smoke_runs["first"]
    return {**meds_smoke_runs, "nested_after_first": len(_nested_runs(first["name"]))}


@pytest.mark.e2e
def test_changed_setting_is_a_new_sweep_with_new_rows(meds_reruns):
    first, changed = meds_reruns["first"], meds_reruns["changed"]
    assert first["name"] != changed["name"]
    assert {r["noise_ratio"] for r in first["rows"]} == {0.0}
    assert {r["noise_ratio"] for r in changed["rows"]} == {0.2}
    assert {r["method"] for r in changed["rows"]} == {"meds", "patchcore", "partial_memory", "distilled"}
    assert all(0.0 <= r["metrics"]["image_auroc"] <= 1.0 for r in first["rows"] + changed["rows"])
    # MeDS's Train curves are MLflow metrics with their epoch as the step (one point per epoch).
    meds_run = next(r for r in _nested_runs(first["name"]) if r.data.tags["raylab.method"] == "meds")
    client = mlflow.MlflowClient(tracking_uri())
    for stage, metric in (("distillation", "distillation_loss"), ("selection", "selection_loss")):
        history = client.get_metric_history(meds_run.info.run_id, f"train/all_classes/{stage}/{metric}")
        assert [point.step for point in history] == [0, 1] and all(np.isfinite(point.value) for point in history), stage


@pytest.mark.e2e
def test_unchanged_rerun_reuses_every_result(meds_reruns):
    first, again = meds_reruns["first"], meds_reruns["again"]
    assert again["name"] == first["name"]
    assert again["rows"] == first["rows"]
    # Restored from Tune's state: no trial ran again, so no nested run was logged again.
    assert len(_nested_runs(first["name"])) == meds_reruns["nested_after_first"] == 4
    # One Ray Train run trains stages 2 and 3 (of the network for all classes: here one class).
    (train_run,) = meds_reruns["train_runs"]
    assert train_run.startswith(f"{first['name']}-") and train_run.endswith("-all_classes-stage2-3")


@pytest.mark.e2e
def test_a_name_holding_other_inputs_is_refused(meds_reruns, capsys):
    err = _rejected(
        "meds_sweep", [*MEDS_SMOKE, "--noise-ratios", "0.2", "--name", meds_reruns["first"]["name"]], capsys
    )
    assert "already holds results of other inputs (changed: axes.noise_ratio)" in err


@pytest.mark.e2e
def test_search_trials_train_their_own_networks(ray_session, tmp_path):
    """On both ELPV classes: each trial trains one network for the two (the release's
    multi-class training), one Train run for stages 2 and 3, none per class."""
    from raylab.data.store import cache_root

    both = ["--set", "dataset_options.classes=[mono, poly]"]
    # MeDS and the stage-1 detector it is compared with only: the other methods' fits,
    # scoring and logged models add nothing to what a search trial trains.
    methods = ["--set", "methods=[meds, partial_memory]"]
    result = run_meds_smoke(["--noise-ratios", "0.2", "--search", "2", *both, *methods], tmp_path / "search.json")
    trials = {r["trial"]: r["search"] for r in result["rows"]}
    assert len(trials) == 2  # ASHA compares from stage 2 on: both trials reach the end here
    first, second = trials.values()
    assert first["lr"] != second["lr"] and set(first) == {"rho", "bootstraps", "mad_k", "lr"}
    runs = cache_root() / "ray_results"
    for trial in trials:
        trained = sorted(
            p.name.removeprefix(f"{result['name']}-{trial}-") for p in runs.glob(f"{result['name']}-{trial}-*")
        )
        assert trained == ["all_classes-stage2-3"], trained
    meds = {r["trial"]: r["metrics"]["image_auroc"] for r in result["rows"] if r["method"] == "partial_memory"}
    assert len(meds) == 2
