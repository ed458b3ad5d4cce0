"""Face encoders trained here with an additive-margin softmax, on Ray Train.

ALSUV needs several encoders that agree on who is who but differ in their weights: the
white-box source, the validation encoder and, for evaluation only, unseen ones. They are
trained on the training identities' canvases (never on the held-out targets) with

* ArcFace (Deng et al. 2019): logit of the true class ``s cos(theta + m)`` (with the usual
  fallback ``cos(theta) - m sin(m)`` past ``theta = pi - m`` so the logit stays monotone);
* CosFace (Wang et al. 2018): ``s (cos(theta) - m)``;

on L2-normalised embeddings and class weights, SGD with momentum and a cosine schedule,
x-flips and random translations. The per-worker loop is plain PyTorch on the raylab
harness (``resume``, ``prepare``, ``report_epoch``); the run's name hashes the data, the
config and the seed, so a finished encoder is reused from ``final_state.pt`` beside its run
and an interrupted one resumes.
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
from torch import Tensor, nn

from raylab.methods.alsuv.config import EncoderConfig
from raylab.methods.alsuv.model.encoders import build_backbone
from raylab.train.harness import TrainSpec, fit, load_result_state, prepare, report_epoch, resume, unwrap
from raylab.train.harness import run_name as train_run_name

FINAL_STATE = "final_state.pt"


class MarginHead(nn.Module):
    """Class weights and the ArcFace / CosFace margin logits of normalised embeddings."""

    def __init__(self, embedding_dim: int, num_classes: int, *, loss: str, margin: float, scale: float) -> None:
        super().__init__()
        if loss not in ("arcface", "cosface"):
            raise ValueError(f"margin loss must be 'arcface' or 'cosface', got {loss!r}")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.loss = loss
        self.margin = margin
        self.scale = scale

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1.0, 1.0)
        target = cosine.gather(1, labels[:, None])
        if self.loss == "cosface":
            adjusted = target - self.margin
        else:
            sine = (1.0 - target.square()).clamp_min(1e-9).sqrt()
            with_margin = target * math.cos(self.margin) - sine * math.sin(self.margin)
            threshold = math.cos(math.pi - self.margin)
            adjusted = torch.where(
                target > threshold, with_margin, target - math.sin(math.pi - self.margin) * self.margin
            )
        return self.scale * cosine.scatter(1, labels[:, None], adjusted)


class EncoderWithHead(nn.Module):
    def __init__(self, backbone: nn.Module, head: MarginHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.head(self.backbone(images), labels)


def augment(images: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Random x-flip and translation by up to ``pad`` pixels (replicate padding)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    if pad == 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])


def resize_for(config: EncoderConfig, canvas: np.ndarray) -> np.ndarray:
    """Canvases as the encoder sees them (centre crop, resize), once, before training."""
    from raylab.methods.alsuv.model.encoders import FaceEncoder

    prep = FaceEncoder(nn.Identity(), config)
    with torch.no_grad():
        return prep.prepare(torch.from_numpy(canvas)).numpy()


def encoder_train_loop(loop_config: dict[str, Any]) -> None:
    import ray
    import ray.train

    torch.set_num_threads(loop_config.get("threads", 1))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config: EncoderConfig = loop_config["encoder"]
    train = config.train
    pixels, labels = ray.get(loop_config["data"])
    torch.manual_seed(config.seed)
    model = EncoderWithHead(
        build_backbone(config),
        MarginHead(
            config.embedding_dim, loop_config["num_classes"], loss=config.loss, margin=config.margin, scale=config.scale
        ),
    )
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
    )
    start, _ = resume(model, optimizer)
    model = prepare(model)
    images, targets = torch.tensor(pixels), torch.tensor(labels)
    per_worker = max(2, train.batch_size // world)
    for epoch in range(start, train.epochs):
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * train.lr * (1 + math.cos(math.pi * epoch / train.epochs))
        generator = torch.Generator().manual_seed(config.seed * 10_000 + epoch)
        order = torch.randperm(len(images), generator=generator)[rank::world]
        steps = max(1, len(images) // (per_worker * world))  # full batches only (BatchNorm1d needs > 1)
        if train.steps is not None:
            steps = min(steps, train.steps)
        total, correct, seen = 0.0, 0, 0
        for step in range(steps):
            rows = order[step * per_worker : (step + 1) * per_worker]
            logits = model(augment(images[rows], train.pad, generator), targets[rows])
            loss = F.cross_entropy(logits, targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            correct += int((logits.argmax(1) == targets[rows]).sum())
            seen += len(rows)
        metrics = {"epoch": epoch, "loss": total / seen, "train_margin_accuracy": correct / seen}
        report_epoch(
            metrics, {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        )


@dataclass
class TrainedEncoder:
    state_dict: dict[str, Tensor]
    metrics: dict[str, float]
    run_path: str


def run_name(pixels: np.ndarray, labels: np.ndarray, config: EncoderConfig) -> str:
    arch = config.timm_name if config.kind == "timm" else config.kind
    return train_run_name(f"alsuv-encoder-{arch}", pixels, labels, settings=config, length=12)


def train_encoder(
    canvas: np.ndarray, identities: np.ndarray, config: EncoderConfig, *, storage_path: str | None = None
) -> TrainedEncoder:
    """Train (or reuse) ``config``'s encoder on canvases ``(n, 3, s, s)`` labelled by identity."""
    import ray

    if config.weights is not None or config.kind == "mobilefacenet":
        raise ValueError(f"encoder {config.kind} has pretrained weights ({config.weights}); nothing to train")
    if len(canvas) != len(identities) or len(canvas) < 2:
        raise ValueError(
            f"need one identity per image and at least 2 images, got {len(canvas)} images, {len(identities)} identities"
        )
    names, labels = np.unique(np.asarray(identities), return_inverse=True)
    if len(names) < 2:
        raise ValueError("a margin loss needs at least 2 identities")
    pixels = np.ascontiguousarray(resize_for(config, np.asarray(canvas, dtype=np.float32)))
    labels = labels.astype(np.int64)
    spec = TrainSpec(
        name=run_name(pixels, labels, config),
        num_workers=config.train.num_workers,
        storage_path=storage_path,
        checkpoints_to_keep=1,
        cpus_per_worker=0.99,
        stage="face encoder",
    )
    final = Path(spec.resolved_storage()) / spec.name / FINAL_STATE
    if final.is_file():
        saved = torch.load(final, map_location="cpu", weights_only=True)
        return TrainedEncoder(saved["model"], saved["metrics"], str(final.parent))
    # The loop gets the images already cropped and resized as the encoder sees them.
    result = fit(
        encoder_train_loop, {"data": ray.put((pixels, labels)), "encoder": config, "num_classes": len(names)}, spec
    )
    if result.error is not None:
        raise RuntimeError(f"encoder training {spec.name} failed") from result.error
    state = load_result_state(result)["model"]
    backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp")
    torch.save({"model": backbone_state, "metrics": metrics}, staging)
    os.replace(staging, final)
    return TrainedEncoder(backbone_state, metrics, str(final.parent))
