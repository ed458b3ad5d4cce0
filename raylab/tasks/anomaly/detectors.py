"""Anomaly detectors by name: the family's registry and what every detector promises.

A saved scorer names the format of the detector it holds, deploy reads it back by that name,
and the contract tests (``tests/test_anomaly_detectors.py``) run over every name registered
here; so a new detector is a class with :class:`AnomalyDetector`'s methods and one
``@register_detector`` line, nothing else. Registration happens when a detector's module is
imported; :func:`anomaly_detectors` imports the modules in :data:`DETECTOR_MODULES` first, so
that callers which only need a name (a config check, ``--help``) need not import torch-heavy
method code. A detector outside raylab is a *plug-in*: a module of the user's that registers
it on import, named in a job's ``plugins`` (:func:`load_plugins`), so every process that looks
the detector up, a Ray worker or a deployed scorer, imports it the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from raylab.registry import Registry

if TYPE_CHECKING:  # the registry stays importable without torch
    from raylab.tasks.anomaly.maps import AnomalyPrediction

# The modules whose classes register themselves below (one line per new detector module).
DETECTOR_MODULES = (
    "raylab.tasks.anomaly.patchcore.model",
    "raylab.methods.tailedcore.softpatch",
    "raylab.methods.tailedcore.model",
    "raylab.methods.meds.partial_memory",
    "raylab.methods.meds.method",
)


class AnomalyDetector(Protocol):
    """Fitted on a class's training patch features alone, never on labels or noise flags.

    ``fit`` takes the (N, h, w, D) patch grids of the training images (clean or
    contaminated, the detector cannot tell); ``predict`` scores (M, h, w, D) test grids into
    image scores, patch scores and optional full-size maps; ``save`` writes a folder that the
    class's ``load`` reads back into a detector that scores identically.
    """

    def fit(self, train_patches: np.ndarray) -> AnomalyDetector: ...

    def predict(self, patches: np.ndarray, with_maps: bool = True) -> AnomalyPrediction: ...

    def save(self, directory: str | Path) -> Path: ...


@dataclass(frozen=True)
class DetectorEntry:
    """A registered detector class: how to build one unfitted, and how its saved folder is read.

    ``build(seed, image_size)`` returns an unfitted detector whose maps come out at the job's
    ``image_size`` (the masks' size); it is None for a detector that is not fitted from
    patches (MeDS's reconstruction network comes out of Ray Train): the contract tests check
    its save and load on a network built for them, not its fit. ``saved_by`` names other
    classes whose ``save`` writes this same format (MeDS saves its final network as a
    reconstruction detector).
    """

    detector_type: type
    build: Callable[[int, int], AnomalyDetector] | None
    load_options: Mapping[str, Any] = field(default_factory=dict)
    saved_by: tuple[str, ...] = ()

    def load(self, directory: str | Path) -> AnomalyDetector:
        return self.detector_type.load(Path(directory), **self.load_options)

    def writes(self, detector: object) -> bool:
        """Whether ``detector.save`` writes this entry's format (its class or a named saver)."""
        return type(detector) is self.detector_type or type(detector).__name__ in self.saved_by


_DETECTORS: Registry[DetectorEntry] = Registry("anomaly detector")
D = TypeVar("D", bound=type)


def register_detector(
    name: str,
    *,
    build: Callable[[int, int], AnomalyDetector] | None = None,
    fitted_from_patches: bool = True,
    load_options: Mapping[str, Any] | None = None,
    saved_by: tuple[str, ...] = (),
) -> Callable[[D], D]:
    """Register a detector class under ``name``.

    It is built as ``cls(seed=seed, image_size=image_size)`` unless ``build`` (a function of
    the seed and the image size its maps are drawn at) says otherwise;
    ``fitted_from_patches=False`` marks a detector that comes out of training instead (no
    ``build``).
    """

    def decorator(cls: D) -> D:
        def default(seed: int, image_size: int) -> AnomalyDetector:
            return cls(seed=seed, image_size=image_size)

        builder = (build or default) if fitted_from_patches else None
        options = MappingProxyType(dict(load_options or {}))
        _DETECTORS.register(name)(DetectorEntry(cls, builder, options, saved_by))
        return cls

    return decorator


def anomaly_detectors() -> Registry[DetectorEntry]:
    """The registry with every module of :data:`DETECTOR_MODULES` imported (and so registered)."""
    for module in DETECTOR_MODULES:
        importlib.import_module(module)
    return _DETECTORS


def load_plugins(modules: tuple[str, ...] | list[str]) -> Registry[DetectorEntry]:
    """The registry with the family's detectors and each plug-in module's imported.

    A module that cannot be imported is a config error (``ValueError``) naming it and the
    reason; importing is idempotent, so a trial, a worker and a scorer may each call this for
    the same modules.
    """
    registry = anomaly_detectors()
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"plugins: {module!r} cannot be imported: {error}") from error
    return registry


def saved_format(detector: object) -> str | None:
    """The registered name of the format ``detector.save`` writes, or None (not deployable)."""
    registry = anomaly_detectors()
    return next((name for name in registry if registry.get(name).writes(detector)), None)
