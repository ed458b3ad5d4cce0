"""Experiments by name: ``raylab run NAME`` and ``jobs/NAME.py`` find them here.

Each entry names the module that defines the experiment, imported only when it is asked
for, so ``raylab run meds_sweep --help`` does not import torch models of the other five.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class FullSizeConfig:
    """A packaged paper-size config and the arguments that select it (the smoke tier, the dry
    run's measurements and the README's cost table all take them from here)."""

    experiment: str
    arguments: tuple[str, ...]
    needs_data_root: bool = False  # its dataset reads a folder (``--data-root``)


FULL_SIZE_CONFIGS: dict[str, FullSizeConfig] = {
    "meds/full_dinov2": FullSizeConfig("meds_sweep", ("--config", "meds/full_dinov2")),
    "tailedcore/full_wrn50": FullSizeConfig("tailedcore_sweep", ("--config", "tailedcore/full_wrn50"), needs_data_root=True),
    "ckd/orl_full": FullSizeConfig("ckd_train", ("--config", "ckd/orl_full"), needs_data_root=True),
    "dcae/mnist_full": FullSizeConfig("dcae_sweep", ("--config", "dcae/mnist_full")),
    "dcae/cifar10_full": FullSizeConfig("dcae_sweep", ("--dataset", "cifar10", "--config", "dcae/cifar10_full"), needs_data_root=True),
    "alsuv/ffhq256": FullSizeConfig("alsuv_attack", ("--profile", "full", "--config", "alsuv/ffhq256"), needs_data_root=True),
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
