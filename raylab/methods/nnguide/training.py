"""Training a classifier with Ray Train, for ID datasets that have no pretrained one.

The per-worker loop is plain PyTorch on the raylab harness: ``resume`` (weights, optimizer
and epoch from the run's latest checkpoint), ``prepare`` (DDP across workers), ``report_epoch`` (metrics
and a rank-0 checkpoint every epoch). Images arrive already decoded and normalised by the
same :class:`~raylab.data.images.ImageTransform` the feature extraction uses, so the network
sees identical preprocessing at training and at scoring time; they travel once through the
object store (``ray.put``) and each worker takes its shard of every epoch's permutation.

The run's name is a hash of the data, the model config, the training config and the seed:
re-running an interrupted training resumes from its latest checkpoint, re-running a finished
one reuses its final weights (``final_state.pt`` beside the run, written after success with a
manifest) without starting workers, and any change of data or settings starts a fresh run.
Final weights that fail their manifest check (truncated, changed, or written by a job killed
before the manifest) are discarded with the run, with a warning naming the file, and trained
again.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raylab.artefacts import CorruptArtefactError, discard, verify, write_manifest
from raylab.methods.nnguide.config import TrainConfig
from raylab.tasks.ood.classifiers import build_classifier
from raylab.tasks.ood.config import ClassifierConfig
from raylab.train.harness import (
    TrainSpec,
    fit,
    load_result_state,
    load_state,
    prepare,
    report_epoch,
    resume,
    save_state,
    unwrap,
)
from raylab.train.harness import run_name as train_run_name

FINAL_STATE = "final_state.pt"


@dataclass
class TrainedClassifier:
    """The trained weights, the last epoch's metrics and where Ray Train kept the run."""

    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]
    run_path: str


def random_translate(pixels: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels (zero padding, then a random crop of the original size)."""
    if pad == 0:
        return pixels
    n, _, height, width = pixels.shape
    padded = F.pad(pixels, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets.tolist())])


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: SGD (Nesterov) with a per-epoch cosine learning rate."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train: TrainConfig = config["train"]
    pixels, labels = ray.get(config["data"])
    torch.manual_seed(config["seed"])  # the same initial weights on every worker
    model = build_classifier(config["model"])
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=True
    )
    start_epoch, _ = resume(model, optimizer)  # after a restart: the last checkpoint's weights and epoch
    model = prepare(model)
    images, targets = torch.tensor(pixels), torch.tensor(labels)  # own, writable copies
    per_worker_batch = max(1, train.batch_size // world)
    for epoch in range(start_epoch, train.epochs):
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * train.lr * (1 + math.cos(math.pi * epoch / train.epochs))
        generator = torch.Generator().manual_seed(config["seed"] * 10_000 + epoch)
        # Every worker draws the same permutation and takes its own stride of it.
        order = torch.randperm(len(images), generator=generator)[rank::world]
        steps = math.ceil(len(images) / (per_worker_batch * world))
        total_loss, correct, seen = 0.0, 0, 0
        for step in range(steps):
            rows = order[step * per_worker_batch : (step + 1) * per_worker_batch]
            if len(rows) == 0:  # keep DDP collectives aligned when shards differ by one batch
                rows = order[:1]
            batch = random_translate(images[rows], train.pad, generator)
            logits = model(batch)
            loss = F.cross_entropy(logits, targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(rows)
            correct += int((logits.argmax(1) == targets[rows]).sum())
            seen += len(rows)
        metrics = {"epoch": epoch, "loss": total_loss / seen, "train_accuracy": correct / seen}
        report_epoch(
            metrics, {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        )


def run_name(pixels: np.ndarray, labels: np.ndarray, model: ClassifierConfig, train: TrainConfig, seed: int) -> str:
    settings = {"model": model, "train": train, "seed": seed}
    return train_run_name(f"nnguide-{model.arch}", pixels, labels, settings=settings, length=12)


def train_classifier(
    pixels: np.ndarray,
    labels: np.ndarray,
    model: ClassifierConfig,
    train: TrainConfig,
    *,
    seed: int = 0,
    storage_path: str | None = None,
) -> TrainedClassifier:
    """Train ``model`` on normalised ``pixels`` ``(n, 3, h, w)`` and class ``labels`` ``(n,)``."""
    import ray

    if model.weights is not None:
        raise ValueError(f"classifier {model.arch} has weights {model.weights}; training would ignore them")
    if len(pixels) != len(labels) or len(pixels) == 0:
        raise ValueError(f"need as many labels as images, got {len(pixels)} images and {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= model.num_classes:
        raise ValueError(f"labels must lie in [0, {model.num_classes}), got [{labels.min()}, {labels.max()}]")
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    spec = TrainSpec(
        name=run_name(pixels, labels, model, train, seed),
        num_workers=train.num_workers,
        storage_path=storage_path,
        checkpoints_to_keep=train.checkpoints_to_keep,
        stage="in-distribution classifier",
    )
    final = Path(spec.resolved_storage()) / spec.name / FINAL_STATE
    if final.is_file():
        try:
            verify(final.parent, [FINAL_STATE])  # also refuses final weights without a manifest
            saved = load_state(final)
            return TrainedClassifier(saved["model"], saved["metrics"], str(final.parent))
        except CorruptArtefactError as error:
            # The whole run goes, so training starts afresh instead of resuming from the
            # checkpoints of a run that had already finished.
            discard(final.parent, error)
    loop_config = {"data": ray.put((pixels, labels)), "model": model, "train": train, "seed": seed}
    result = fit(train_loop, loop_config, spec)
    if result.error is not None:
        raise RuntimeError(f"training {spec.name} failed") from result.error
    state = load_result_state(result)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    _save_atomically({"model": state["model"], "metrics": metrics}, final)
    return TrainedClassifier(state["model"], metrics, str(result.path))


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    save_state(payload, staging)  # read back with weights_only=True
    os.replace(staging, path)
    # Written last: final weights without it are the work of a job killed mid-write.
    write_manifest(path.parent, [path.name])
