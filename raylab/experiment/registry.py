"""Experiments by name: ``raylab run NAME`` and ``jobs/NAME.py`` find them here.

Each entry names the module that defines the experiment, imported only when it is asked
for, so ``raylab run meds_sweep --help`` does not import torch models of the other five.
"""

from __future__ import annotations

from importlib import import_module

from raylab.experiment.spec import Experiment

# name -> module defining ``EXPERIMENT``
EXPERIMENTS: dict[str, str] = {
    "meds_sweep": "raylab.methods.meds.experiment",
    "patchcore_eval": "raylab.methods.patchcore.experiment",
    "tailedcore_sweep": "raylab.methods.tailedcore.experiment",
    "dcae_sweep": "raylab.methods.dcae.experiment",
    "nnguide_eval": "raylab.methods.nnguide.experiment",
    "ckd_train": "raylab.methods.ckd.experiment",
    "alsuv_attack": "raylab.methods.alsuv.experiment",
}


def experiment_names() -> list[str]:
    return sorted(EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    try:
        module = EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(experiment_names())}") from None
    experiment = import_module(module).EXPERIMENT
    if experiment.name != name:
        raise RuntimeError(f"{module}.EXPERIMENT is named {experiment.name!r}, registered as {name!r}")
    return experiment
