"""The ceiling of a latent-search attack: the generator's own inversion of each target image.

An attack only sees a template, so whatever it reconstructs is a face the generator can
render. If the generator cannot render a held-out person even when it is shown the very
image (a pixel loss, several starts, many steps), no template-driven search through it can
produce a face an unseen encoder accepts as that person, and a run where every method
scores 0 on a real encoder says nothing about the methods. The ``pixel_inversion`` row
measures that ceiling with the attacks' own yardstick: its faces go through the same
renderer (truncation, fixed noise, face crop, canvas, per-image rescaling) and are judged
by the same encoders, thresholds and type-1 / type-2 / rank-1 metrics.

Like the searches, the inversions run as Ray tasks (one per target and group of
``searches_per_task`` starts, every target's tasks submitted at once), each start is
independent of which starts share its batch (the loss is a sum of per-start terms), and
only the generator travels to the tasks: no encoder is used to invert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from raylab.methods.alsuv.config import InversionConfig
from raylab.methods.alsuv.search import FaceRenderer
from raylab.resources import current as current_resources


def pixel_errors(canvas: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per image between canvases ``(m, 3, s, s)`` and one target ``(3, s, s)`` (both in [-1, 1])."""
    return (canvas - target[None]).pow(2).mean(dim=(1, 2, 3))


@dataclass
class Inversion:
    """The best start's result for one target: its canvas, its pixel error, and which start it was."""

    canvas: np.ndarray  # (3, s, s) in [-1, 1]
    pixel_mse: float
    start: int


def invert_image(
    renderer: FaceRenderer, target: Tensor, initial_w: Tensor, config: InversionConfig
) -> tuple[Tensor, Tensor]:
    """Invert one target canvas from ``len(initial_w)`` W starts (one batch); returns every
    start's final canvas and error."""
    target = torch.as_tensor(target, dtype=torch.float32)
    if target.shape != (3, renderer.size, renderer.size):
        raise ValueError(
            f"the target must be a (3, {renderer.size}, {renderer.size}) canvas, got {tuple(target.shape)}"
        )
    if initial_w.ndim != 2 or initial_w.shape[1] != renderer.style_dim:
        raise ValueError(f"initial latents must be (m, {renderer.style_dim}) W vectors, got {tuple(initial_w.shape)}")
    latent = renderer.generator.broadcast(initial_w.float()).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=config.lr)
    for step in range(config.steps):
        if step == config.decay_step:
            for group in optimizer.param_groups:
                group["lr"] = config.lr * 0.1
        loss = pixel_errors(renderer(latent), target).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        canvas = renderer(latent.detach())
        return canvas, pixel_errors(canvas, target)


def _invert_task(
    renderer: FaceRenderer, target: Tensor, initial_w: Tensor, config: InversionConfig
) -> tuple[Tensor, Tensor]:
    torch.set_num_threads(1)
    import ray

    device = torch.device("cuda") if torch.cuda.is_available() and ray.get_gpu_ids() else torch.device("cpu")
    canvas, errors = invert_image(renderer.to(device), target.to(device), initial_w.to(device), config)
    return canvas.cpu(), errors.cpu()


def _best_task(*parts: tuple[Tensor, Tensor]) -> Inversion:
    canvas = torch.cat([p[0] for p in parts])
    errors = torch.cat([p[1] for p in parts])
    best = int(torch.argmin(errors))
    return Inversion(canvas[best].numpy(), float(errors[best]), best)


def invert_targets(
    targets: np.ndarray, renderer: FaceRenderer, config: InversionConfig, *, seed: int, task_cpus: float = 1.0
) -> list[Inversion]:
    """Invert every target canvas ``(t, 3, s, s)``; the starts are the ``seed``'s, shared by all targets."""
    import ray

    images = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"targets must be (t, 3, s, s) canvases with t >= 1, got shape {tuple(images.shape)}")
    initial = renderer.initial_latents(config.searches, seed)
    resources = current_resources()
    invert = ray.remote(_invert_task).options(**resources.ray_options(resources.accelerators_per_task, cpus=task_cpus))
    best = ray.remote(_best_task).options(num_cpus=task_cpus)
    renderer_ref = ray.put(renderer)
    pending = []
    for image in images:
        parts = [
            invert.remote(renderer_ref, image, initial[start : start + config.searches_per_task], config)
            for start in range(0, config.searches, config.searches_per_task)
        ]
        pending.append(best.remote(*parts))
    return ray.get(pending)
