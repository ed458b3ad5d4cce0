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
    needs_weights_root: bool = False  # it loads pretrained files by name (``--weights-root``)
    # How its work is packed on a 2-CPU machine: DDP workers per Train run (the global batch
    # stays the config's), CPUs per worker, trials or searches at once. Never architecture.
    small_machine: tuple[str, ...] = ()


FULL_SIZE_CONFIGS: dict[str, FullSizeConfig] = {
    # 2 DDP workers instead of the config's 4: each holds the 67 M-parameter decoder, its Adam
    # state and the class's tokens (about 3 GB); MeDS's and the clean oracle's Train runs of 4
    # meet Ray's memory monitor on a 24 GB machine.
    "meds/full_dinov2": FullSizeConfig(
        "meds_sweep",
        ("--config", "meds/full_dinov2"),
        small_machine=("--set", "meds.train_workers=2", "--set", "meds.cpus_per_train_worker=0.9"),
    ),
    "tailedcore/full_wrn50": FullSizeConfig(
        "tailedcore_sweep",
        ("--config", "tailedcore/full_wrn50"),
        needs_data_root=True,
        small_machine=("--set", "threads_per_trial=2"),
    ),
    "ckd/orl_full": FullSizeConfig(
        "ckd_train",
        ("--config", "ckd/orl_full"),
        needs_data_root=True,
        # One DDP worker per Train run (batch 16 on one worker instead of 8 on each of two): five
        # runs of two workers start ten worker processes on two cores; with one, the smoke took
        # 273 s instead of 315 s (tests/test_ckd.py runs CKD's DDP across two workers).
        small_machine=(
            "--set",
            "ckd.train.num_workers=1",
            "--set",
            "ckd.train.cpus_per_worker=0.6",
            "--set",
            "resources.max_concurrent_trials=3",
        ),
    ),
    "dcae/mnist_full": FullSizeConfig(
        "dcae_sweep", ("--config", "dcae/mnist_full"), small_machine=("--set", "train.cpus_per_worker=0.45")
    ),
    "dcae/cifar10_full": FullSizeConfig(
        "dcae_sweep",
        ("--dataset", "cifar10", "--config", "dcae/cifar10_full"),
        needs_data_root=True,
        small_machine=("--set", "train.cpus_per_worker=0.45"),
    ),
    "alsuv/ffhq256": FullSizeConfig(
        "alsuv_attack",
        ("--profile", "full", "--config", "alsuv/ffhq256"),
        needs_data_root=True,
        needs_weights_root=True,
        # Searches are independent: two tasks of five give the results of one task of ten.
        small_machine=("--set", "attack.searches_per_task=5"),
    ),
}


def full_size_arguments(key: str, data_root: str, weights_root: str, weight_arguments: list[str]) -> list[str]:
    """The complete command line of a full-size config's smoke run on a small machine."""
    entry = FULL_SIZE_CONFIGS[key]
    return [
        *entry.arguments,
        "--smoke",
        *entry.small_machine,
        *weight_arguments,
        *(["--data-root", data_root] if entry.needs_data_root else []),
        *(["--weights-root", weights_root] if entry.needs_weights_root else []),
    ]


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
