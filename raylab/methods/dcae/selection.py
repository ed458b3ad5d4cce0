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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.eval.anomaly import image_metrics
from raylab.methods.dcae.config import TRAINED, LossWeights, NetworkConfig, SelectionConfig, TrainConfig
from raylab.methods.dcae.data import OneClassSplit, validation_rows
from raylab.methods.dcae.training import score_images, train_in_process


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
        raise ValueError(f"selection.pseudo_novelties {list(names)}: unknown {unknown}; known {sorted(PSEUDO_NOVELTIES)}")
    return np.concatenate([PSEUDO_NOVELTIES[name](images) for name in names])


@dataclass
class SelectionResult:
    best: LossWeights
    best_value: float
    trials: pd.DataFrame
    n_fit: int
    n_val: int
    cached: bool = False


def _clip(value: float, bounds: tuple[float, float]) -> float:
    return float(min(max(value, bounds[0]), bounds[1]))


def selection_key(images: np.ndarray, network: NetworkConfig, train: TrainConfig, selection: SelectionConfig, default: LossWeights, seed: int) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    settings = [dataclasses.asdict(x) for x in (network, train, selection, default)] + [seed]
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


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
) -> SelectionResult:
    """Optuna TPE over the four loss weights of DCAE; the first trial is ``default``."""
    import optuna

    default = default or LossWeights()
    n_trials = selection.n_trials if n_trials is None else n_trials
    epochs = selection.epochs if epochs is None else epochs
    selection = dataclasses.replace(selection, n_trials=n_trials, epochs=epochs)
    cache = Path(cache_dir) / f"{selection_key(train_images, network, train, selection, default, seed)}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        return SelectionResult(LossWeights(**saved["best"]), saved["best_value"], pd.DataFrame(saved["trials"]), saved["n_fit"], saved["n_val"], cached=True)

    fit_rows, val_rows = validation_rows(len(train_images), selection.val_fraction, (seed, 2020))
    fit, val = train_images[fit_rows], train_images[val_rows]
    pseudo = make_pseudo_novelties(val, selection.pseudo_novelties)
    queries = np.concatenate([val, pseudo])
    is_pseudo = np.r_[np.zeros(len(val)), np.ones(len(pseudo))]
    ranges = {
        "feature": selection.feature_range,
        "pixel": selection.pixel_range,
        "image_adversarial": selection.image_adversarial_range,
        "latent_adversarial": selection.latent_adversarial_range,
    }

    def objective(trial: optuna.Trial) -> float:
        weights = LossWeights(**{name: trial.suggest_float(name, *bounds, log=True) for name, bounds in ranges.items()})
        trained = train_in_process(fit, {"dcae": (TRAINED["dcae"], weights)}, network, train, seed=seed, epochs=epochs)
        scores = score_images(trained.models["dcae"], queries, "discriminator")
        if not np.all(np.isfinite(scores)):
            raise optuna.TrialPruned("non-finite novelty scores")
        return image_metrics(is_pseudo, scores)["image_auroc"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, n_trials // 2))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({name: _clip(getattr(default, name), bounds) for name, bounds in ranges.items()})
    study.optimize(objective, n_trials=n_trials)
    trials = pd.DataFrame(
        [{"trial": t.number, **t.params, "val_pseudo_auroc": t.value, "state": t.state.name} for t in study.trials]
    )
    result = SelectionResult(LossWeights(**study.best_params), float(study.best_value), trials, len(fit), len(val))
    if cache is not None:
        payload = {
            "best": dataclasses.asdict(result.best), "best_value": result.best_value,
            "trials": trials.to_dict(orient="list"), "n_fit": result.n_fit, "n_val": result.n_val,
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
        split.train_images, network, train, selection, seed=seed, default=default, n_trials=n_trials, epochs=epochs,
        cache_dir=cache_dir,
    )
