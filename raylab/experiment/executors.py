"""The three ways a sweep's settings run: a Ray Tune grid (or Optuna search), Ray tasks, the driver.

Each executor turns settings into rows the same way: build the frozen
:class:`~raylab.experiment.spec.TrialContext` for the setting (its id a hash of the sweep's
identity, the setting and any sampled search parameters, so two search trials never share
a Train run), call the experiment's trial, collect its rows. Tune grids restore a sweep of
the same identity (finished trials are not run again); a failed trial fails the sweep,
naming the first error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from raylab.experiment.identity import content_hash
from raylab.experiment.spec import Experiment, Row, Setting, TrialContext, TrialResult
from raylab.progress import heartbeat
from raylab.resources import Resources
from raylab.resources import use as use_resources
from raylab.timing import drain, phase, record

ROWS_KEY = "raylab_rows"
PHASES_KEY = "raylab_phases"
TRIAL_PHASE = "trial, in all (the phases below are parts of it)"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What every trial of one sweep shares (the per-trial context is derived from it)."""

    experiment: Experiment
    config: Any
    inputs: Any
    settings: Sequence[Setting]
    axes: Mapping[str, tuple]  # axis -> its values, in the order given
    name: str
    identity_hash: str
    context: Mapping[str, Any]  # TrialContext fields except trial_id and executor
    storage_path: str
    resume: bool
    search_trials: int = 0
    resources: Resources = Resources()


def trial_context(
    sweep_context: Mapping[str, Any], identity_hash: str, setting: Setting, executor: str
) -> TrialContext:
    trial_id = content_hash([identity_hash, setting.values, setting.search], 8)
    return TrialContext(**sweep_context, trial_id=trial_id, executor=executor)


def _rows_payload(result: TrialResult) -> str:
    """Rows as one JSON string: Tune stores it with the trial's result (restored sweeps read it
    back) and its loggers leave strings alone."""
    return json.dumps([dataclasses.asdict(row) for row in result.rows])


def _rows_from_payload(payload: str) -> list[Row]:
    return [Row(**row) for row in json.loads(payload)]


def _phases_payload() -> str:
    """The phases this trial's process timed, with when it finished (see :func:`_gather_phases`)."""
    return json.dumps({"finished": time.time(), "phases": drain()})


def _gather_phases(payload: str | None, since: float) -> None:
    """Count a trial's phases in the driver's profile, unless a resumed sweep restored the trial
    from an earlier run (it cost nothing now)."""
    if payload:
        timed = json.loads(payload)
        if timed["finished"] >= since:
            for name, seconds in timed["phases"]:
                record(name, seconds)


def _trial_in_worker(
    trial, setting: Setting, inputs, config, context: TrialContext, resources: Resources
) -> tuple[TrialResult, str]:
    """One trial in a Tune or task worker under the sweep's resources: its result and the phases it timed."""
    use_resources(resources)
    drain()  # a reused worker process may hold an earlier trial's phases
    with phase(TRIAL_PHASE):
        result = trial(setting, inputs, config, context)
    return result, _phases_payload()


def _tune_trainable(
    params: dict[str, Any], *, trial, inputs, config, axes, search_keys, sweep_context, identity_hash, resources
) -> None:
    from ray import tune

    setting = Setting({a: params[a] for a in axes}, {k: params[k] for k in search_keys})
    result, phases = _trial_in_worker(
        trial, setting, inputs, config, trial_context(sweep_context, identity_hash, setting, "tune"), resources
    )
    tune.report({**result.objective, ROWS_KEY: _rows_payload(result), PHASES_KEY: phases})


def run_tune(sweep: Sweep, resources: Mapping[str, float], max_concurrent: int) -> list[Row]:
    from ray import tune

    experiment = sweep.experiment
    search = experiment.search if sweep.search_trials else None
    space = dict(search.space()) if search else {}
    trainable = tune.with_resources(
        tune.with_parameters(
            _tune_trainable,
            trial=experiment.trial,
            inputs=sweep.inputs,
            config=sweep.config,
            axes=tuple(sweep.axes),
            search_keys=tuple(space),
            sweep_context=dict(sweep.context),
            identity_hash=sweep.identity_hash,
            resources=sweep.resources,
        ),
        {k.lower(): v for k, v in resources.items()},
    )
    if search is None:
        return _run_grid(sweep, trainable, max_concurrent)
    return _run_search(sweep, trainable, space, max_concurrent)


def _run_grid(sweep: Sweep, trainable, max_concurrent: int) -> list[Row]:
    from ray import tune

    from raylab.progress import tune_verbosity

    directory = f"{sweep.storage_path}/{sweep.name}"
    if sweep.resume and tune.Tuner.can_restore(directory):
        tuner = tune.Tuner.restore(directory, trainable, resume_errored=True)
    else:
        grid = {axis: tune.grid_search(list(values)) for axis, values in sweep.axes.items()}
        tuner = tune.Tuner(
            trainable,
            param_space=grid,
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name=sweep.name, storage_path=sweep.storage_path, verbose=tune_verbosity()),
        )
    started = time.time()
    with heartbeat(f"sweep {sweep.name}"):
        results = tuner.fit()
    _raise_errors(sweep, [r.error for r in results if r.error])
    for r in results:
        _gather_phases(r.metrics.get(PHASES_KEY), started)
    return [row for r in results for row in _rows_from_payload(r.metrics[ROWS_KEY])]


def _run_search(sweep: Sweep, trainable, space: Mapping[str, Any], max_concurrent: int) -> list[Row]:
    """Per setting: ``search_trials`` Optuna trials (seeded by the setting), ASHA over the stages."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from raylab.progress import tune_verbosity

    search = sweep.experiment.search
    rows: list[Row] = []
    for setting in sweep.settings:
        seed = int(setting.values.get("seed", 0))
        scheduler = (
            ASHAScheduler(
                time_attr=search.time_attr, max_t=search.max_t, grace_period=search.grace_period, reduction_factor=2
            )
            if search.time_attr
            else None
        )
        tuner = tune.Tuner(
            trainable,
            param_space={**space, **setting.values},
            tune_config=tune.TuneConfig(
                metric=search.metric,
                mode=search.mode,
                num_samples=sweep.search_trials,
                max_concurrent_trials=max_concurrent,
                search_alg=OptunaSearch(seed=seed),
                scheduler=scheduler,
            ),
            run_config=tune.RunConfig(
                name=f"{sweep.name}-search-{setting.tag()}", storage_path=sweep.storage_path, verbose=tune_verbosity()
            ),
        )
        started = time.time()
        results = tuner.fit()
        _raise_errors(sweep, [r.error for r in results if r.error])
        for r in results:
            _gather_phases((r.metrics or {}).get(PHASES_KEY), started)
        # Trials ASHA stopped early never reached their final report: they have no rows.
        rows += [
            row
            for r in results
            if r.metrics and ROWS_KEY in r.metrics
            for row in _rows_from_payload(r.metrics[ROWS_KEY])
        ]
    return rows


def _raise_errors(sweep: Sweep, errors: list[Any]) -> None:
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) of sweep {sweep.name} failed; first: {errors[0]}")


def _task(setting: Setting, trial, inputs, config, sweep_context, identity_hash, resources) -> tuple[str, str]:
    result, phases = _trial_in_worker(
        trial, setting, inputs, config, trial_context(sweep_context, identity_hash, setting, "tasks"), resources
    )
    return _rows_payload(result), phases


def run_tasks(sweep: Sweep, resources: Mapping[str, float]) -> list[Row]:
    """Every setting as one Ray task over shared (object-store) inputs; spreads over a cluster unchanged."""
    import ray

    inputs_ref = ray.put(sweep.inputs)
    task = ray.remote(num_cpus=resources.get("CPU", 1.0))(_task)
    refs = [
        task.remote(
            s,
            sweep.experiment.trial,
            inputs_ref,
            sweep.config,
            dict(sweep.context),
            sweep.identity_hash,
            sweep.resources,
        )
        for s in sweep.settings
    ]
    rows: list[Row] = []
    with heartbeat(f"sweep {sweep.name} ({len(refs)} tasks)"):
        finished = ray.get(refs)
    for payload, phases in finished:
        rows += _rows_from_payload(payload)
        _gather_phases(phases, since=0.0)
    return rows


def run_driver(sweep: Sweep) -> list[Row]:
    """Settings one after another in the driver (each may start its own Ray Train or Tune runs)."""
    rows: list[Row] = []
    for setting in sweep.settings:
        context = trial_context(sweep.context, sweep.identity_hash, setting, "driver")
        with phase(TRIAL_PHASE):
            rows += list(sweep.experiment.trial(setting, sweep.inputs, sweep.config, context).rows)
    return rows
