"""The Ray Train harness every trained model in raylab uses.

A method writes a per-worker loop that reads like plain PyTorch plus three calls:
:func:`restore_state` at the start (``None`` on a fresh run, the last checkpoint's state on a
resumed or restarted one), :func:`report_epoch` at the end of each epoch (metrics, and a
checkpoint written by rank 0), and :func:`prepare` for the model. :func:`fit` builds the
``TorchTrainer`` from a :class:`TrainSpec` (workers, GPUs, failures, storage). Re-running a
spec with the same ``name`` and ``storage_path`` resumes from its latest checkpoint: with Ray
Train v2 this replaces ``resume_from_checkpoint``, and a worker that dies mid-run is
restarted from the last checkpoint up to ``max_failures`` times.

Checkpoints and final states are read with ``torch.load(..., weights_only=True)``: a file
planted in the (shared) storage cannot run code when a job loads it. :func:`save_state`
writes what that loader accepts (tensors, numbers, strings, and dicts, lists and tuples of
them); numpy arrays in a state are stored as tensors and come back as numpy arrays from
:func:`load_state`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import random
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylab.artefacts import MANIFEST, CorruptArtefactError, verify, write_manifest
from raylab.digests import content_digest
from raylab.metrics import record_train_report
from raylab.progress import enabled as progress_enabled
from raylab.progress import heartbeat, train_log_level
from raylab.resources import current as current_resources
from raylab.timing import record as record_phase

STATE_FILE = "state.pt"
# How often Ray Train's controller polls its workers; it also notices a finished loop only at
# its next poll. Ray's 2 s default adds 3-4 s to every run (benchmarks/train_startup.py), a
# cost a sweep of many short runs pays per class and trial; polling 4 workers twice a second
# costs nothing measurable. A value the user exports is kept.
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = 0.5
# Seconds since this worker's loop began, added to every report: the driver splits a run's
# wall time into the loop and Ray Train's own start-up and teardown (``--profile-time``).
LOOP_SECONDS = "loop_seconds"
_loop_started: float | None = None
_NDARRAY = "__raylab_ndarray__"  # the key of a numpy array stored as a tensor


def _encode(value: Any) -> Any:
    """``value`` with numpy arrays as tagged tensors and numpy scalars as Python numbers.

    Containers are copied only where something inside them changed (a module's state dict
    keeps its type and ``_metadata``).
    """
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("a checkpointed state cannot hold numpy object arrays")
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        encoded = {key: _encode(item) for key, item in value.items()}
        if all(encoded[key] is value[key] for key in value):
            return value
        out = copy.copy(value)
        out.update(encoded)
        return out
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = [_encode(item) for item in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _NDARRAY in value and isinstance(value[_NDARRAY], torch.Tensor):
            return value[_NDARRAY].numpy()
        decoded = {key: _decode(item) for key, item in value.items()}
        if all(decoded[key] is value[key] for key in value):
            return value
        out = copy.copy(value)
        out.update(decoded)
        return out
    if isinstance(value, (list, tuple)):
        items = [_decode(item) for item in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    return value


def save_state(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` a state so that :func:`load_state` (``weights_only=True``) can read it."""
    torch.save(_encode(dict(state)), path)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A state written by :func:`save_state`, read without unpickling arbitrary objects.

    ``torch.load(..., weights_only=True)`` refuses any pickle that names a class or function
    outside tensors and plain containers, so a file planted where a checkpoint would be
    raises ``pickle.UnpicklingError`` instead of running code. A checkpoint folder's manifest
    (written by :func:`report_epoch`) is checked first; any failure names the file.
    """
    path = Path(path)
    if (path.parent / MANIFEST).is_file():
        verify(path.parent, [path.name])
    try:
        return _decode(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as error:
        # A pickle naming code is refused, never skipped: it was planted, not damaged.
        raise pickle.UnpicklingError(f"{path}: {error}") from error
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:  # truncated or damaged
        raise CorruptArtefactError(f"{path}: cannot read the saved state ({type(error).__name__}: {error})") from error


def run_name(kind: str, *arrays: np.ndarray, settings: Any, length: int = 16) -> str:
    """A Train run's name: ``kind``, then a digest of the arrays it trains on and its settings.

    The name is where the run's checkpoints live, so it must change with every input that
    changes what training produces (and only with those: a setting left out on purpose, such
    as a longer epoch count under a constant learning rate, lets a rerun continue the run).
    Each loop lists its inputs; dataclass settings enter as their fields.
    """
    return f"{kind}-{content_digest(*arrays, settings=_plain(settings), length=length)}"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class TrainSpec:
    name: str
    num_workers: int = 2
    use_gpu: bool | None = None
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    storage_path: str | None = None
    checkpoints_to_keep: int = 2
    stage: str = "train"  # what the run is, in the job's time profile (``distillation``)

    def resolved_storage(self) -> str:
        from raylab.data.store import cache_root

        return self.storage_path or str(cache_root() / "ray_results")


def fit(
    train_loop: Callable[[dict[str, Any]], None],
    loop_config: Mapping[str, Any],
    spec: TrainSpec,
    *,
    datasets: Mapping[str, Any] | None = None,
    callbacks: list[Any] | None = None,
):
    """Run ``train_loop`` on ``spec.num_workers`` Ray Train workers (DDP); returns the Result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    # Ray Train hands this variable to its controller from the caller's environment.
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, str(HEALTH_CHECK_INTERVAL_S))
    policy = current_resources()
    accelerators = policy.accelerators_per_train_worker if spec.use_gpu is None else float(spec.use_gpu)
    per_worker = {"CPU": spec.cpus_per_worker}
    if accelerators > 0:
        per_worker[policy.accelerator] = accelerators
    trainer = TorchTrainer(
        train_loop_per_worker=_timed(train_loop),
        train_loop_config=dict(loop_config),
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.num_workers,
            # Ray Train's use_gpu also picks the CUDA device and NCCL; another accelerator
            # resource (a custom one) is only reserved, the loop runs on what torch finds.
            use_gpu=accelerators > 0 and policy.accelerator == "GPU",
            resources_per_worker=per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=spec.name,
            storage_path=spec.resolved_storage(),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.checkpoints_to_keep),
            callbacks=callbacks,
            logging_config=ray.train.LoggingConfig(log_level=train_log_level()),
        ),
        datasets=dict(datasets) if datasets else None,
    )
    started = time.perf_counter()
    with heartbeat(f"Ray Train run {spec.name}"):  # epoch lines come only at the end of each epoch
        result = trainer.fit()
    wall = time.perf_counter() - started
    loop = min(float((result.metrics or {}).get(LOOP_SECONDS, 0.0)), wall)
    record_phase(f"Ray Train loop: {spec.stage}", loop)
    record_phase("Ray Train start-up and teardown", wall - loop)
    return result


def _timed(train_loop: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def timed_loop(config: dict[str, Any]) -> None:
        _start_loop_clock()
        train_loop(config)

    return timed_loop


def _start_loop_clock() -> None:
    # A module-level function: the closure above travels by value (with a copy of the globals
    # it names), this one by reference, so the clock is set where report_epoch reads it.
    global _loop_started
    _loop_started = time.perf_counter()


def prepare(model: torch.nn.Module) -> torch.nn.Module:
    """Move to the worker's device and wrap in DDP when there is more than one worker."""
    import ray.train.torch

    return ray.train.torch.prepare_model(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def restore_state() -> dict[str, Any] | None:
    """The state saved by the latest :func:`report_epoch` of this run, or ``None``."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as directory:
            state = load_state(Path(directory) / STATE_FILE)
    except CorruptArtefactError as error:
        state = _previous_state(Path(checkpoint.path), error)
    if state is not None and RNG_STATES in state:
        _set_rng_state(state[RNG_STATES][ray.train.get_context().get_world_rank()])
    return state


# Every worker's random generators at the end of an epoch, in the checkpoint: dropout draws
# from torch's global generator, and augmentations or samplers may draw from numpy's or
# Python's, so a worker restarted from epoch k's checkpoint must continue those streams, not
# restart them, to end where an uninterrupted run ends.
RNG_STATES = "rng_states"


def _rng_state() -> dict[str, Any]:
    """torch's, numpy's and Python's global generator states (and CUDA's when in use).

    numpy's and Python's states are stored as int64 tensors and plain numbers, so a
    checkpoint holding them still loads with ``weights_only=True``.
    """
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`_rng_state` saved; a checkpoint from before numpy's and Python's
    states were saved restores torch's (and CUDA's) only."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "numpy" in state:
        saved = state["numpy"]
        keys = np.asarray(
            saved["keys"].numpy() if isinstance(saved["keys"], torch.Tensor) else saved["keys"], dtype=np.uint32
        )
        np.random.set_state(
            ("MT19937", keys, int(saved["pos"]), int(saved["has_gauss"]), float(saved["cached_gaussian"]))
        )
    if "python" in state:
        saved = state["python"]
        internal = (
            saved["internal"].tolist() if isinstance(saved["internal"], torch.Tensor) else list(saved["internal"])
        )
        random.setstate((int(saved["version"]), tuple(int(x) for x in internal), saved["gauss_next"]))


def _all_rng_states() -> list[dict[str, Any]]:
    """Each rank's generator states, in rank order (a collective: every worker calls it)."""
    import torch.distributed as dist

    mine = _rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def _previous_state(corrupt: Path, error: Exception) -> dict[str, Any] | None:
    """The newest older checkpoint of the run that passes its check, else ``None`` (start over).

    Ray Train names checkpoint folders by time, so their names sort oldest first.
    """
    import warnings

    older = sorted(
        (p for p in corrupt.parent.glob("checkpoint_*") if p.is_dir() and p.name < corrupt.name), reverse=True
    )
    for candidate in older:
        try:
            state = load_state(candidate / STATE_FILE)
        except (CorruptArtefactError, FileNotFoundError):
            continue
        warnings.warn(f"{error}; resuming from the previous checkpoint {candidate}", RuntimeWarning, stacklevel=3)
        return state
    warnings.warn(
        f"{error}; no earlier checkpoint passes its check, so training starts over", RuntimeWarning, stacklevel=3
    )
    return None


def resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[int, dict[str, Any] | None]:
    """Load the latest checkpoint (if any) into ``model``/``optimizer``; returns (next epoch, state)."""
    state = restore_state()
    if state is None:
        return 0, None
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, state


def report_epoch(metrics: Mapping[str, float], state: Mapping[str, Any] | None = None) -> None:
    """Report metrics; with ``state``, rank 0 also saves it as this epoch's checkpoint, with
    every worker's random generator states (restored by :func:`restore_state`).

    Every worker must call this each epoch, all with a state or all without (Ray Train's
    report and the gathering of generator states are collective steps).
    """
    import ray.train

    context = ray.train.get_context()
    if _loop_started is not None:
        metrics = {**metrics, LOOP_SECONDS: time.perf_counter() - _loop_started}
    if state is not None:
        state = {**state, RNG_STATES: _all_rng_states()}
    if context.get_world_rank() == 0:
        record_train_report(context.get_experiment_name(), metrics)
        if progress_enabled():
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            print(f"[{context.get_experiment_name()}] {shown}", flush=True)
    if state is None or context.get_world_rank() != 0:
        ray.train.report(dict(metrics))
        return
    with tempfile.TemporaryDirectory() as directory:
        save_state(state, os.path.join(directory, STATE_FILE))
        write_manifest(Path(directory))
        ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(directory))


def load_result_state(result) -> dict[str, Any]:
    """The state dict in a finished run's latest checkpoint (driver side)."""
    if result.checkpoint is None:
        raise RuntimeError(f"training run {result.path} finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        return load_state(Path(directory) / STATE_FILE)
