"""The one runner every job goes through.

parse -> resolve and validate the config -> validate the settings and inputs (all before Ray
starts, so a bad value fails in seconds) -> start or join Ray -> prepare shared inputs
(corpus, cached features) -> identity (a hash of config, data fingerprint, settings, search
budget and raylab's version) -> MLflow parent run (the resolved config logged as
``config.yaml``) -> executor -> rows -> results table, figures, ``--summary-json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

import raylab
from raylab.config import ConfigError, deep_merge, from_mapping, join_key, parse_assignment, read_yaml_mapping, to_plain
from raylab.experiment.arguments import experiment_parser
from raylab.experiment.budget import check_budget_only
from raylab.experiment.executors import Sweep, run_driver, run_tasks, run_tune
from raylab.experiment.identity import IdentityConflict, claim, content_hash, flatten
from raylab.experiment.spec import Experiment, Request, Row, Setting
from raylab.resources import Resources, gpu_profile, local_shortfall
from raylab.resources import use as use_resources
from raylab.timing import drain, phase, profile_table


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Shared inputs of a sweep and the fingerprint of the data they were made from."""

    inputs: Any
    data_fingerprint: str


def packaged_config(folder: str, name: str) -> Path | None:
    """``configs/<folder>/<name>.yaml`` shipped inside the raylab package, if there is one."""
    candidate = resources.files("raylab") / "configs" / folder / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def config_file(text: str) -> Path:
    """``--config``: a YAML file, or a packaged config by name (``meds/smoke``)."""
    path = Path(text)
    if path.is_file():
        return path
    folder, _, name = text.removesuffix(".yaml").rpartition("/")
    packaged = (
        packaged_config(folder.removeprefix("configs/").removeprefix("raylab/configs/"), name) if folder else None
    )
    if packaged is not None:
        return packaged
    raise ConfigError(f"--config {text}: no such file, and no packaged config of that name (see raylab/configs/)")


def dataset_overlay(experiment: Experiment, dataset: str, profile: str) -> Path | None:
    """The packaged overlay of a dataset for a profile: ``<dataset>.yaml`` spells out the default
    (laptop) size, so another profile takes ``<dataset>_<profile>.yaml`` or none at all, never
    the laptop overlay (``--profile full`` must not silently come back at the CPU size)."""
    if experiment.config_folder is None:
        return None
    if profile in (experiment.default_profile, "quick"):
        return packaged_config(experiment.config_folder, dataset)
    return packaged_config(experiment.config_folder, f"{dataset}_{profile}")


@dataclasses.dataclass(frozen=True)
class Resolved:
    config: Any
    quick: bool
    resources: Resources


def resolve_config(experiment: Experiment, args: argparse.Namespace) -> Resolved:
    """Profile <- the dataset's packaged overlay <- ``--config`` <- each ``--set``, typed and checked.

    A ``resources`` section in any layer (``--set resources.max_concurrent_trials=8``) updates
    the job's :class:`~raylab.resources.Resources`, which starts from ``--resources``.
    """
    if args.quick and args.profile not in (None, "quick"):
        raise ConfigError(f"--quick and --profile {args.profile}: choose one")
    smoke = getattr(args, "smoke", False)
    if smoke and (args.quick or args.profile == "quick"):
        raise ConfigError(
            "--smoke and --quick: choose one (--smoke keeps the config's architecture, --quick shrinks it)"
        )
    profile = args.profile or ("quick" if args.quick else experiment.default_profile)
    quick = profile == "quick"
    base = experiment.profiles[experiment.default_profile if quick else profile]()
    layers: list[tuple[str, Mapping[str, Any]]] = []
    overlay = config_file(args.config) if args.config else dataset_overlay(experiment, args.dataset, profile)
    if overlay is not None:
        layers.append((f"{overlay}:", read_yaml_mapping(overlay)))
    if smoke:
        check_budget_only(experiment.smoke, f"{experiment.name} smoke budget")
        layers.append(("--smoke:", experiment.smoke))
    assignments: dict[str, Any] = {}
    for text in args.assignments:
        assignments = deep_merge(assignments, parse_assignment(text))
    if assignments:
        layers.append(("--set:", assignments))
    config = base
    resources = gpu_profile(args.accelerator) if args.resources == "gpu" else Resources(accelerator=args.accelerator)
    defaults = flatten(base)
    for where, values in layers:
        values = dict(values)
        if "resources" in values:
            resources = from_mapping(
                Resources, values.pop("resources"), where=join_key(where, "resources"), base=resources
            )
        given = flatten(values)
        # A value equal to the default is harmless (a printed config carries every key).
        owned = sorted(k for k in set(given) & set(experiment.setting_keys) if given[k] != defaults.get(k))
        if owned:
            raise ConfigError(
                f"{where.rstrip(':')}: {', '.join(owned)} is decided by each setting "
                "(use --seeds / --dataset), not by the config"
            )
        config = from_mapping(type(base), values, where=where, base=config)
    if experiment.apply_arguments is not None:
        config = experiment.apply_arguments(config, args)
    if quick and experiment.quick is not None:
        config = experiment.quick(config)
    return Resolved(config, quick, resources)


def _settings(axes: Mapping[str, Sequence[Any]]) -> list[Setting]:
    empty = [axis for axis, values in axes.items() if not len(values)]
    if empty:
        raise ConfigError(f"no values for {', '.join(empty)}: the sweep would run nothing")
    return [Setting(dict(zip(axes, combo, strict=True))) for combo in itertools.product(*axes.values())]


def check_data_root(dataset: str, data_root: str | None) -> None:
    """A registered dataset whose loader needs a folder gets one that exists (before Ray starts).

    Names that are not registered datasets (benchmarks an experiment assembles itself) are
    left to the experiment's own ``check``.
    """
    import inspect

    import raylab.data.adapters  # noqa: F401  (registers the adapters)
    from raylab.data import DATASETS

    if dataset not in DATASETS.names():
        return
    first = next(iter(inspect.signature(DATASETS.get(dataset)).parameters.values()), None)
    if data_root is None and first is not None and first.default is inspect.Parameter.empty:
        raise ValueError(f"--dataset {dataset} reads its files from a folder: pass --data-root (e.g. ../shared/data)")
    if data_root is not None and not Path(data_root).is_dir():
        raise FileNotFoundError(f"--data-root {data_root}: no such folder")


def require_registered_dataset(request: Request) -> None:
    """``check`` hook of experiments that read one registered corpus: a misspelt name fails here."""
    import raylab.data.adapters  # noqa: F401  (registers the adapters)
    from raylab.data import DATASETS

    DATASETS.get(request.dataset)


def _fail(parser: argparse.ArgumentParser, error: Exception) -> None:
    message = error.args[0] if isinstance(error, KeyError) and error.args else error  # KeyError quotes its message
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def run(experiment: Experiment, argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    drain()  # phases of an earlier job in this process (tests, notebooks) are not this one's
    parser = experiment_parser(experiment)
    args = parser.parse_args(argv)
    try:
        resolved = resolve_config(experiment, args)
    except (ConfigError, ValueError, TypeError, KeyError) as error:
        _fail(parser, error)
    config, quick, resources = resolved.config, resolved.quick, resolved.resources
    if args.print_config:
        print(yaml.safe_dump({**to_plain(config), "resources": to_plain(resources)}, sort_keys=False), end="")
        return {"config": config, "resources": resources}
    request = Request(config=config, dataset=args.dataset, data_root=args.data_root, quick=quick, args=args)
    try:
        axes = {axis: tuple(values) for axis, values in experiment.axes(request).items()}
        settings = _settings(axes)
        check_data_root(args.dataset, args.data_root)
        if experiment.check is not None:
            experiment.check(request)
    except (ConfigError, ValueError, TypeError, KeyError, FileNotFoundError) as error:
        _fail(parser, error)
    search_trials = getattr(args, "search", 0) or 0
    if search_trials < 0:
        _fail(parser, ValueError(f"--search {search_trials}: expected a number of trials >= 0"))
    if args.dry_run:
        plan = dry_run(experiment, request, settings, resources, search_trials)
        print(plan["text"], flush=True)
        return plan

    from raylab.allocator import keep_freed_memory
    from raylab.data.store import cache_root
    from raylab.experiment.session import init_ray
    from raylab.tracking import tracked_run, tracking_uri
    from raylab.tracking.endpoint import TrackingEndpointError, check_tracking_endpoint

    try:
        check_tracking_endpoint(tracking_uri())
    except TrackingEndpointError as error:
        _fail(parser, error)
    keep_freed_memory()  # this driver's torch work; init_ray passes the settings to every worker
    with phase("Ray start (or join)"):
        init_ray(verbose=args.verbose)
    shortfall = local_shortfall(experiment.trial_cpus(config))
    if shortfall:
        _fail(
            parser,
            ValueError(
                f"{experiment.name}: one trial cannot run here: {shortfall}; "
                "lower its Train workers or CPUs per worker (see --print-config), or submit it to a cluster"
            ),
        )
    # Auto sizes become numbers here, in the driver, so every trial process asks for the same.
    resources = dataclasses.replace(
        resources, extraction_actors=resources.extraction_pool(), task_slots=resources.parallel_tasks()
    )
    use_resources(resources)
    from raylab.features.extract import warm_extraction_workers

    warm_extraction_workers()  # their imports overlap the corpus load below
    with phase("shared inputs: corpus, shards, features"):
        prepared = experiment.prepare(request)
    if not isinstance(prepared, Prepared):
        raise TypeError(f"{experiment.name}: prepare must return a Prepared, got {type(prepared).__name__}")
    identity = {
        "experiment": experiment.name,
        "raylab_version": raylab.__version__,
        "dataset": args.dataset,
        "data": prepared.data_fingerprint,
        "profile": "quick" if quick else (args.profile or experiment.default_profile),
        "config": config,
        "axes": axes,
        "search_trials": search_trials,
        # Where the numbers are computed can change them (CUDA kernels); how many at once cannot.
        "accelerator": resources.accelerator if resources.uses_accelerator else None,
    }
    identity_hash = content_hash(identity)
    name = args.name or f"{experiment.name}-{args.dataset}{'-quick' if quick else ''}-{identity_hash}"
    storage_path = str(cache_root() / "ray_results")
    try:
        resume = claim(Path(storage_path) / name, identity, name=name)
    except IdentityConflict as error:
        _fail(parser, error)
    parent_params = {
        "config": config,
        **{f"axes.{k}": list(v) for k, v in axes.items()},
        "search_trials": search_trials,
    }
    with tracked_run(
        experiment.name,
        name,
        params=parent_params,
        tags={"dataset": args.dataset, "method": "sweep", "identity": identity_hash},
        resume=resume,
    ) as parent:
        parent.log_text(yaml.safe_dump(to_plain(config), sort_keys=False), "config.yaml")
        context = {
            "experiment": experiment.name,
            "dataset": args.dataset,
            "data_root": args.data_root,
            "sweep": name,
            "parent_run_id": parent.run_id,
            "tracking_uri": tracking_uri(),
            "storage_path": storage_path,
            "quick": quick,
        }
        sweep = Sweep(
            experiment=experiment,
            config=config,
            inputs=prepared.inputs,
            settings=settings,
            axes=axes,
            name=name,
            identity_hash=identity_hash,
            context=context,
            storage_path=storage_path,
            resume=resume,
            search_trials=search_trials,
            resources=resources,
        )
        with phase("trials, wall time"):
            rows = _execute(sweep)
        with phase("report, figures and their MLflow logging"):
            report = _report(experiment, rows, request, parent)
        profile = profile_table(drain(), time.perf_counter() - started)
        parent.log_text(profile + "\n", "time_profile.txt")
    print(report.text, flush=True)
    if args.profile_time:
        print(f"\nwhere the time went ({experiment.name}):\n{profile}", flush=True)
    row_dicts = [row.to_dict() for row in rows]
    if args.summary_json:
        extra = dict(experiment.summary_extra(request, rows)) if experiment.summary_extra else {}
        write_summary(args.summary_json, experiment.name, row_dicts, sweep=name, axes=list(axes), **extra)
    return {"rows": row_dicts, "table": report.table, "text": report.text, "name": name, "config": config}


def _report(experiment: Experiment, rows: Sequence[Row], request: Request, parent) -> Any:
    """The experiment's tables and figures, logged to the sweep's MLflow run."""
    report = experiment.report(rows, request)
    parent.log_text(report.text + "\n", "results_table.txt")
    for file_name, text in report.tables.items():
        parent.log_text(text, file_name)
    if report.metrics:
        parent.log_metrics(dict(report.metrics))
    if report.figures is not None:
        with tempfile.TemporaryDirectory() as scratch:
            for path in report.figures(Path(scratch)):
                parent.log_artifact(path)
    return report


def dry_run(
    experiment: Experiment, request: Request, settings: Sequence[Setting], resources: Resources, search_trials: int
) -> dict[str, Any]:
    """The plan and its cost, from the validated config alone: nothing starts, nothing is written."""
    from raylab.experiment.cost import Estimate, load_measurements, measurement_key

    config, args = request.config, request.args
    trials = len(settings) * max(search_trials, 1)
    held = dict(experiment.trial_resources(config))
    lines = [
        f"{experiment.name} on {request.dataset}: {len(settings)} settings"
        + (f" x {search_trials} search trials" if search_trials else "")
        + f" = {trials} trials ({experiment.executor})",
        f"  each trial holds {held}; its Train workers / actors ask for theirs: {to_plain(resources)}",
    ]
    estimate = None
    if experiment.cost is not None:
        key = measurement_key(experiment.name, args.config)
        measurement = load_measurements().get(key) if key else None
        estimate = Estimate(trials, experiment.cost(request), measurement)
        lines.append(f"cost ({'measured: ' + key if measurement else 'modelled only'}):")
        lines.append(estimate.text())
    else:
        lines.append("cost: this experiment has no cost model (it has no paper-size config)")
    return {
        "text": "\n".join(lines),
        "trials": trials,
        "estimate": estimate.to_dict() if estimate else None,
        "config": config,
    }


def _execute(sweep: Sweep) -> list[Row]:
    experiment, config, policy = sweep.experiment, sweep.config, sweep.resources
    held = dict(experiment.trial_resources(config))
    if experiment.executor == "tune":
        concurrent = (
            policy.max_concurrent_trials
            or experiment.max_concurrent(config)
            or policy.concurrent_trials(experiment.trial_cpus(config))
        )
        return run_tune(sweep, held, concurrent)
    if experiment.executor == "tasks":
        return run_tasks(sweep, held)
    return run_driver(sweep)


def write_summary(path: str | Path, job: str, rows: Sequence[Mapping[str, Any]], **extra: Any) -> None:
    """Write atomically: an interrupted job never leaves a truncated summary behind."""
    import json
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps({"job": job, "rows": list(rows), **extra}, indent=2, default=str))
    os.replace(staging, path)


def main(experiment_name: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``jobs/<name>.py`` and ``raylab run <name>``."""
    from raylab.experiment.registry import get_experiment

    return run(get_experiment(experiment_name), sys.argv[1:] if argv is None else argv)
