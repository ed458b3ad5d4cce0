"""Choosing DCAE's loss weights with Optuna, on in-class data only.

The one-class setting has no novel samples to tune on, and the test split's novelties must
never be looked at. So the objective is built from the normal class's *training* images:

1. a seeded ``val_fraction`` of them is held out; DCAE trains on the rest;
2. pseudo-novelties are made from the held-out images by transforms that keep their pixel
   statistics but break their shape (:data:`PSEUDO_NOVELTIES`: quadrants moved around,
   a quarter turn, an upside-down flip);
3. the objective is the AUROC of the model's own novelty score, held-out in-class images
   (negative) against their pseudo-novelties (positive).

This ranks weightings by how well the score separates in-class structure from broken
structure, with nothing but in-class data. Its known limit: for classes symmetric under a
transform (a 0 or an 8 turned upside down, an airplane flipped) that transform's
pseudo-novelties are in-class-looking, which lowers every trial's AUROC alike and so does
not change their ranking much.

:func:`select_loss_weights` never receives test data: the caller passes only the training
images of the normal class (``tests/test_dcae.py`` checks that changing test images and
labels changes nothing). Results are cached on disk by content, so a restarted sweep trial
does not select again.

Each Optuna trial is a Ray task with its own resource request (``selection.cpus_per_trial``
and the job's accelerator per Train worker), not work on the calling Tune trial's thread: a
sweep trial reserves almost no CPU, and 30 trainings of 50 epochs in it would hold one core
for hours while the cluster's other workers idle. Rounds of ``selection.max_concurrent``
candidates are asked together and told back in trial order, so the record does not depend on
which task finishes first.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raylab.data.splits import validation_rows
from raylab.digests import content_digest
from raylab.eval.anomaly import image_metrics
from raylab.methods.dcae.config import TRAINED, LossWeights, NetworkConfig, SelectionConfig, TrainConfig
from raylab.methods.dcae.training import score_images, train_in_process
from raylab.resources import current, local_shortfall
from raylab.tasks.one_class.protocol import OneClassSplit


def quadrant_shuffle(images: np.ndarray) -> np.ndarray:
    """Move each quadrant one place clockwise (top-left -> top-right -> bottom-right -> bottom-left)."""
    h, w = images.shape[-2] // 2, images.shape[-1] // 2
    out = images.copy()
    tl, tr = images[..., :h, :w], images[..., :h, w : 2 * w]
    br, bl = images[..., h : 2 * h, w : 2 * w], images[..., h : 2 * h, :w]
    out[..., :h, w : 2 * w], out[..., h : 2 * h, w : 2 * w] = tl, tr
    out[..., h : 2 * h, :w], out[..., :h, :w] = br, bl
    return out


PSEUDO_NOVELTIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "quadrant_shuffle": quadrant_shuffle,
    "rotate90": lambda images: np.ascontiguousarray(np.rot90(images, 1, axes=(-2, -1))),
    "vflip": lambda images: np.ascontiguousarray(images[..., ::-1, :]),
}


def make_pseudo_novelties(images: np.ndarray, names: Sequence[str]) -> np.ndarray:
    unknown = sorted(set(names) - set(PSEUDO_NOVELTIES))
    if unknown or not names:
        raise ValueError(
            f"selection.pseudo_novelties {list(names)}: unknown {unknown}; known {sorted(PSEUDO_NOVELTIES)}"
        )
    return np.concatenate([PSEUDO_NOVELTIES[name](images) for name in names])


@dataclass
class SelectionResult:
    """The selected weights, their objective value and every trial (what the job logs).

    ``placements``: where each trial ran (trial number, process id, node id, the resources Ray
    assigned it); empty for a cached result or a selection run in this process without Ray.
    """

    best: LossWeights
    best_value: float
    trials: pd.DataFrame
    n_fit: int
    n_val: int
    cached: bool = False
    placements: list[dict[str, Any]] = field(default_factory=list)


def _clip(value: float, bounds: tuple[float, float]) -> float:
    return float(min(max(value, bounds[0]), bounds[1]))


def selection_key(
    images: np.ndarray,
    network: NetworkConfig,
    train: TrainConfig,
    selection: SelectionConfig,
    default: LossWeights,
    seed: int,
) -> str:
    """The selection's content key. Only what changes the result counts: ``cpus_per_trial`` does
    not, nor does a round of one (the sequential study, the key selections had before rounds)."""
    searched = dataclasses.asdict(selection)
    searched.pop("cpus_per_trial")
    if searched["max_concurrent"] == 1:
        searched.pop("max_concurrent")
    settings = [dataclasses.asdict(x) for x in (network, train)] + [searched, dataclasses.asdict(default), seed]
    return content_digest(images, settings=settings)


def evaluate_weights(
    params: dict[str, float],
    fit: np.ndarray,
    queries: np.ndarray,
    is_pseudo: np.ndarray,
    network: NetworkConfig,
    train: TrainConfig,
    *,
    seed: int,
    epochs: int,
    device: str | None = None,
) -> float | None:
    """One selection trial: train DCAE with these weights on ``fit``, return the AUROC of its
    score on ``queries`` (held-out images vs their pseudo-novelties), ``None`` if a score is not finite."""
    weights = LossWeights(**params)
    trained = train_in_process(
        fit, {"dcae": (TRAINED["dcae"], weights)}, network, train, seed=seed, epochs=epochs, device=device
    )
    scores = score_images(trained.models["dcae"], queries, "discriminator")
    if not np.all(np.isfinite(scores)):
        return None
    return image_metrics(is_pseudo, scores)["image_auroc"]


def _selection_task(
    params, fit, queries, is_pseudo, network, train, seed, epochs
) -> tuple[float | None, dict[str, Any]]:
    """A selection trial as a Ray task: the training's threads as in a Train worker, the
    accelerator when Ray gave the task one; returns the value and where it ran."""
    import ray
    import torch

    torch.set_num_threads(train.torch_threads)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else None
    value = evaluate_weights(params, fit, queries, is_pseudo, network, train, seed=seed, epochs=epochs, device=device)
    context = ray.get_runtime_context()
    placement = {
        "pid": os.getpid(),
        "node_id": context.get_node_id(),
        "resources": dict(context.get_assigned_resources()),
        "device": device or "cpu",
    }
    return value, placement


def _evaluate_round(
    candidates: list[dict[str, float]], fit, queries, is_pseudo, network, train, selection, *, seed, epochs, on_ray
):
    """Evaluate one round of candidates: as concurrent Ray tasks with the selection's own
    resource request, or one after the other in this process when Ray is not running."""
    if not on_ray:
        return [
            (evaluate_weights(c, fit, queries, is_pseudo, network, train, seed=seed, epochs=epochs), {})
            for c in candidates
        ]
    import ray

    resources = current()
    options = resources.ray_options(resources.accelerators_per_train_worker, cpus=selection.cpus_per_trial)
    task = ray.remote(_selection_task).options(**options, scheduling_strategy="DEFAULT", max_retries=0)
    return ray.get([task.remote(c, fit, queries, is_pseudo, network, train, seed, epochs) for c in candidates])


def select_loss_weights(
    train_images: np.ndarray,
    network: NetworkConfig,
    train: TrainConfig,
    selection: SelectionConfig,
    *,
    seed: int,
    default: LossWeights | None = None,
    n_trials: int | None = None,
    epochs: int | None = None,
    cache_dir: str | Path | None = None,
    on_ray: bool | None = None,
) -> SelectionResult:
    """Optuna TPE over the four loss weights of DCAE; the first trial is ``default``.

    Trials run in rounds of ``selection.max_concurrent``: the study asks a round's candidates,
    each trains as its own Ray task (``selection.cpus_per_trial`` CPUs and the job's
    ``accelerators_per_train_worker``), and the results are told back in trial order. So the
    selected weights depend on the seed and the config (the round size included), never on
    how many workers the cluster has or which task finishes first; a round of one is the
    sequential study. ``on_ray``: ``None`` runs the trials as Ray tasks when Ray is running,
    else one by one in this process (a notebook, a unit test); ``False`` always in this process.
    """
    import optuna
    import ray

    default = default or LossWeights()
    n_trials = selection.n_trials if n_trials is None else n_trials
    epochs = selection.epochs if epochs is None else epochs
    selection = dataclasses.replace(selection, n_trials=n_trials, epochs=epochs)
    cache = (
        Path(cache_dir) / f"{selection_key(train_images, network, train, selection, default, seed)}.json"
        if cache_dir
        else None
    )
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        return SelectionResult(
            LossWeights(**saved["best"]),
            saved["best_value"],
            pd.DataFrame(saved["trials"]),
            saved["n_fit"],
            saved["n_val"],
            cached=True,
        )

    on_ray = ray.is_initialized() if on_ray is None else on_ray
    shortfall = local_shortfall(selection.cpus_per_trial) if on_ray else None
    if shortfall:
        raise ValueError(f"selection.cpus_per_trial={selection.cpus_per_trial:g}: {shortfall}")
    fit_rows, val_rows = validation_rows(len(train_images), selection.val_fraction, (seed, 2020))
    fit, val = train_images[fit_rows], train_images[val_rows]
    pseudo = make_pseudo_novelties(val, selection.pseudo_novelties)
    queries = np.concatenate([val, pseudo])
    is_pseudo = np.r_[np.zeros(len(val)), np.ones(len(pseudo))]
    if on_ray:  # shipped to the object store once, not with every task
        fit, queries, is_pseudo = ray.put(fit), ray.put(queries), ray.put(is_pseudo)
    ranges = {
        "feature": selection.feature_range,
        "pixel": selection.pixel_range,
        "image_adversarial": selection.image_adversarial_range,
        "latent_adversarial": selection.latent_adversarial_range,
    }

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # constant_liar: within a round, candidates asked before their round-mates are told stay apart.
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(1, n_trials // 2), constant_liar=selection.max_concurrent > 1
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({name: _clip(getattr(default, name), bounds) for name, bounds in ranges.items()})
    placements: list[dict[str, Any]] = []

    def started() -> int:  # the enqueued default waits in study.trials until its first ask
        return sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)

    while started() < n_trials:
        asked = [study.ask() for _ in range(min(selection.max_concurrent, n_trials - started()))]
        candidates = [
            {name: t.suggest_float(name, *bounds, log=True) for name, bounds in ranges.items()} for t in asked
        ]
        outcomes = _evaluate_round(
            candidates, fit, queries, is_pseudo, network, train, selection, seed=seed, epochs=epochs, on_ray=on_ray
        )
        for trial, (value, placement) in zip(asked, outcomes, strict=True):
            if value is None:  # non-finite novelty scores
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
            if placement:
                placements.append({"trial": trial.number, **placement})
    trials = pd.DataFrame(
        [{"trial": t.number, **t.params, "val_pseudo_auroc": t.value, "state": t.state.name} for t in study.trials]
    )
    n_fit, n_val = len(fit_rows), len(val_rows)
    result = SelectionResult(
        LossWeights(**study.best_params), float(study.best_value), trials, n_fit, n_val, placements=placements
    )
    if cache is not None:
        payload = {
            "best": dataclasses.asdict(result.best),
            "best_value": result.best_value,
            "trials": trials.to_dict(orient="list"),
            "n_fit": result.n_fit,
            "n_val": result.n_val,
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = cache.with_name(f".{cache.name}.tmp")
        staging.write_text(json.dumps(payload))
        os.replace(staging, cache)
    return result


def select_for_split(
    split: OneClassSplit,
    network: NetworkConfig,
    train: TrainConfig,
    selection: SelectionConfig,
    default: LossWeights,
    *,
    seed: int,
    n_trials: int | None = None,
    epochs: int | None = None,
    cache_dir: str | Path | None = None,
) -> SelectionResult:
    """The selection of one normal class: only ``split.train_images`` goes in, never the test split."""
    return select_loss_weights(
        split.train_images,
        network,
        train,
        selection,
        seed=seed,
        default=default,
        n_trials=n_trials,
        epochs=epochs,
        cache_dir=cache_dir,
    )
