"""What a run will cost, said before it starts (``--dry-run``).

Two halves meet here. The experiment models its own work from the config alone
(:class:`CostModel`: compute per trial in its dominant unit, the bytes of the arrays that grow
with the data, checkpoint and cache bytes on disk); a measurement of the same config at its
smoke budget on a real machine (:class:`Measurement`, packaged in
``raylab/configs/cost_measurements.yaml`` and written by ``benchmarks/full_size_costs.py``)
supplies what a model cannot know: seconds per unit of work and the process's memory beyond
its arrays. The benchmark runs the smoke budget twice, the second time with the dominant
budget keys doubled, so the slope (seconds per unit of work) is measured apart from the fixed
costs (Ray and process start-up, model construction, extraction) that a plain ratio would
scale with it. The estimate:

* time per trial = measured seconds + slope x (work - measured work), for the machine measured
  (its ``device``; an accelerator divides the slope, not the fixed part);
* peak host memory per trial = measured peak + (array bytes - measured array bytes);
* disk = the model's checkpoint, cache and logged-model bytes (retention included);
* accelerator memory per worker = one step's tensors at the config's batch size, counted on
  the meta device (:mod:`raylab.step_memory`), so it needs neither the weights nor
  an accelerator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1024**3


@dataclass(frozen=True)
class CostModel:
    """An experiment's own account of one trial's work, from the config alone."""

    work: float  # per trial, in ``work_unit``
    work_unit: str
    array_bytes: float  # per trial: data-proportional arrays held together at the peak
    checkpoint_bytes: float  # the whole sweep, after checkpoint retention
    cache_bytes: float  # the whole sweep: feature and view caches
    # The whole sweep: the models and weight files logged to MLflow, each self-contained (an
    # anomaly model holds its own copy of the backbone's weights; 0 where a job logs none).
    model_bytes: float = 0.0
    # Per worker on an accelerator: one step's tensors counted on the meta device
    # (raylab/step_memory.py), a lower bound; None where nothing runs on one.
    accelerator_bytes: float | None = None
    accelerator_step: str = ""  # what the step is, e.g. "a decoder training step of 100 images"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Measurement:
    """A smoke-budget run of one config, measured by ``benchmarks/full_size_costs.py``."""

    device: str
    trial_seconds: float  # at the smoke budget
    work: float  # the smoke budget's work per trial
    seconds_per_work: float  # the slope between the smoke budget and its doubled run
    peak_host_bytes: float  # peak resident memory of every process of the run, summed
    array_bytes: float  # the model's array bytes at the smoke budget


@dataclass(frozen=True)
class Estimate:
    trials: int
    model: CostModel
    measurement: Measurement | None

    @property
    def trial_seconds(self) -> float | None:
        if self.measurement is None:
            return None
        measured = self.measurement
        if measured.seconds_per_work <= 0 and self.model.work > measured.work:
            return None  # the measurement's two runs did not separate a slope: no honest extrapolation
        return measured.trial_seconds + measured.seconds_per_work * (self.model.work - measured.work)

    @property
    def peak_host_bytes(self) -> float | None:
        if self.measurement is None:
            return None
        return self.measurement.peak_host_bytes + self.model.array_bytes - self.measurement.array_bytes

    def text(self) -> str:
        model, lines = self.model, []
        if self.measurement is None:
            lines.append(
                "  time, host memory: no smoke measurement of this config (benchmarks/full_size_costs.py makes one)"
            )
        elif self.trial_seconds is None:
            lines.append("  time per trial:      not estimated (the smoke measurement has no slope for this work unit)")
            lines.append(f"  peak host memory:    {self.peak_host_bytes / GB:.1f} GB per trial")
        else:
            seconds = self.trial_seconds
            lines.append(
                f"  time per trial:      {_duration(seconds)} on {self.measurement.device} "
                f"({self.trials} trials: {_duration(seconds * self.trials)} one at a time)"
            )
            lines.append(f"  peak host memory:    {self.peak_host_bytes / GB:.1f} GB per trial")
        if model.accelerator_bytes is not None:
            lines.append(
                f"  accelerator memory:  >= {model.accelerator_bytes / GB:.2f} GB per worker "
                f"({model.accelerator_step}; "
                "tensors only, without the CUDA context and workspaces)"
            )
        lines.append(f"  work per trial:      {model.work:.3g} {model.work_unit}")
        lines.append(f"  arrays per trial:    {model.array_bytes / GB:.2f} GB")
        lines.append(f"  disk, checkpoints:   {model.checkpoint_bytes / GB:.2f} GB (after retention)")
        lines.append(f"  disk, caches:        {model.cache_bytes / GB:.2f} GB")
        if model.model_bytes:
            lines.append(f"  disk, MLflow models: {model.model_bytes / GB:.2f} GB")
        lines.extend(f"  note: {note}" for note in model.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "trial_seconds": self.trial_seconds,
            "peak_host_gb": _gb(self.peak_host_bytes),
            "accelerator_gb": _gb(self.model.accelerator_bytes),
            "work": self.model.work,
            "work_unit": self.model.work_unit,
            "array_gb": _gb(self.model.array_bytes),
            "checkpoint_gb": _gb(self.model.checkpoint_bytes),
            "cache_gb": _gb(self.model.cache_bytes),
            "model_gb": _gb(self.model.model_bytes),
            "device": self.measurement.device if self.measurement else None,
        }


def _gb(value: float | None) -> float | None:
    return None if value is None else value / GB


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


MEASUREMENTS_FILE = "cost_measurements.yaml"


def measurements_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("raylab") / "configs" / MEASUREMENTS_FILE))


def load_measurements(path: Path | None = None) -> dict[str, Measurement]:
    """``experiment/config`` -> its smoke measurement; an unreadable file names itself."""
    import yaml

    path = path or measurements_path()
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of experiment/config -> measurement")
    measurements = {}
    for key, entry in data.items():
        try:
            measurements[key] = Measurement(**{field: entry[field] for field in Measurement.__dataclass_fields__})
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: entry {key!r} is not a measurement ({error})") from None
    return measurements


def measurement_key(experiment: str, config: str | None) -> str | None:
    """``meds_sweep`` + ``configs/meds/full_dinov2.yaml`` -> ``meds_sweep/full_dinov2``."""
    if config is None:
        return None
    return f"{experiment}/{Path(config).name.removesuffix('.yaml')}"


FLOAT32 = 4
# A checkpoint with an Adam optimiser holds the weights and two moments per parameter.
ADAM_STATE_COPIES = 3


def parameter_count(build: Any) -> int:
    """Parameters of the module ``build()`` makes, built on the meta device (no memory, no compute)."""
    import torch

    with torch.device("meta"):
        module = build()
    return sum(parameter.numel() for parameter in module.parameters())
