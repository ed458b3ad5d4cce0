"""Training a StyleGAN2 on face canvases with Ray Train, so the attack has a real generator here.

The StyleGAN2 recipe (Karras et al. 2020): non-saturating logistic loss, lazy R1 on reals
every ``d_reg_every`` steps, lazy path-length regularisation every ``g_reg_every`` steps
(optional), style mixing, x-flips, optional DiffAugment for small face sets, Adam with
betas (0, 0.99) whose lr and betas are rescaled for the lazy regularisers, and an EMA copy
of the generator (half-life ``ema_kimg`` thousand images, ramped up over the first
``ema_rampup`` of the images seen, as StyleGAN2-ADA does) that is the generator the attack
uses.

Workers: each of ``num_workers`` Ray Train workers draws its own share of the batch, and
gradients are averaged with an explicit all-reduce before every optimiser step. GAN steps
alternate between two networks with one of them frozen and add lazy regularisation passes,
which does not fit DDP's "one forward, one backward over every parameter" contract; the
explicit all-reduce gives exactly the gradient of the whole batch on every worker, so
all workers keep identical weights (they start from the same seed).

The run's name hashes the images, the configs and the seed: re-running an interrupted run
resumes from its latest checkpoint, and a finished run's generator (``generator.pt``, the
rosinality layout of :mod:`raylab.methods.alsuv.model.stylegan2`, beside the run) is reused without starting workers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raylab.methods.alsuv.config import GanTrainConfig
from raylab.methods.alsuv.model.stylegan2 import (
    Discriminator,
    Generator,
    GeneratorConfig,
    load_rosinality,
    save_rosinality,
)
from raylab.methods.alsuv.training.diffaugment import diff_augment
from raylab.train.harness import TrainSpec, fit, load_result_state, report_epoch, restore_state
from raylab.train.harness import run_name as train_run_name

FINAL_GENERATOR = "generator.pt"


@dataclass
class TrainedGenerator:
    generator: Generator
    latent_avg: torch.Tensor
    path: Path
    metrics: dict[str, float]


def _requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _average_gradients(module: torch.nn.Module, world: int) -> None:
    """Sum the gradients over workers and divide by their number (a no-op on one worker)."""
    if world == 1:
        return
    import torch.distributed as dist

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _all_mean(value: float, world: int) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / world


def _lazy_adam(params, lr: float, reg_every: int) -> torch.optim.Adam:
    ratio = reg_every / (reg_every + 1) if reg_every > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99**ratio))


def _noises(
    batch: int, dim: int, mixing: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = torch.randn(batch, dim, generator=generator)
    if mixing > 0 and float(torch.rand((), generator=generator)) < mixing:
        return z, torch.randn(batch, dim, generator=generator)
    return z, None


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """RGB -> grey repeated over three channels (the channel mean), for grey face sets."""
    return images.mean(1, keepdim=True).expand(-1, images.shape[1], -1, -1)


def _ema_beta(config: GanTrainConfig, images_seen: int) -> float:
    half_life = config.ema_kimg * 1000
    if config.ema_rampup is not None:
        half_life = min(half_life, images_seen * config.ema_rampup)
    return 0.5 ** (config.batch_size / max(half_life, 1e-8))


def _judged(
    discriminator: torch.nn.Module, policy: tuple[str, ...], rng: torch.Generator, images: torch.Tensor
) -> torch.Tensor:
    """The discriminator's logits for ``images``, through this step's DiffAugment draws when
    ``policy`` names any (R1 too: its gradient is taken through the augmentation, as DiffAugment's is)."""
    return discriminator(diff_augment(images, policy, rng) if policy else images)


def gan_train_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of StyleGAN2 training (see the module docstring)."""
    import random

    import ray
    import ray.train

    torch.set_num_threads(loop_config.get("threads", 1))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg: GanTrainConfig = loop_config["train"]
    model: GeneratorConfig = loop_config["model"]
    images = torch.from_numpy(np.array(ray.get(loop_config["data"])))
    colour = to_grey if loop_config.get("grayscale") else (lambda x: x)
    torch.manual_seed(cfg.seed)  # identical initial weights on every worker
    generator, discriminator = Generator(model), Discriminator(model)
    g_ema = copy.deepcopy(generator).eval()
    _requires_grad(g_ema, False)
    g_optim = _lazy_adam(generator.parameters(), cfg.lr, cfg.g_reg_every if cfg.path_length_weight > 0 else 0)
    d_optim = _lazy_adam(discriminator.parameters(), cfg.lr, cfg.d_reg_every)
    start, mean_path_length = 0, torch.zeros(())
    state = restore_state()
    if state is not None:
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        g_ema.load_state_dict(state["g_ema"])
        g_optim.load_state_dict(state["g_optim"])
        d_optim.load_state_dict(state["d_optim"])
        start, mean_path_length = state["iteration"] + 1, state["mean_path_length"]
    per_worker = max(2, cfg.batch_size // world)
    sums = {"d_loss": 0.0, "g_loss": 0.0, "r1": 0.0, "real_score": 0.0, "fake_score": 0.0}
    counted = 0
    for iteration in range(start, cfg.iterations):
        rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration * world + rank)
        random.seed(cfg.seed * 1_000_003 + iteration * world + rank)  # style-mixing cut point
        rows = torch.randint(0, len(images), (per_worker,), generator=rng)
        real = images[rows]
        if cfg.xflip:
            flip = torch.rand(per_worker, generator=rng) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(3), real)
        judge = functools.partial(_judged, discriminator, cfg.diffaugment, rng)

        # Discriminator: softplus(D(fake)) + softplus(-D(real)).
        _requires_grad(generator, False)
        _requires_grad(discriminator, True)
        z, mix = _noises(per_worker, model.style_dim, cfg.mixing, rng)
        with torch.no_grad():
            fake = colour(generator(z, mix_z=mix))
        fake_pred, real_pred = judge(fake), judge(real)
        d_loss = F.softplus(fake_pred).mean() + F.softplus(-real_pred).mean()
        d_optim.zero_grad(set_to_none=True)
        d_loss.backward()
        _average_gradients(discriminator, world)
        d_optim.step()
        r1_value = 0.0
        if cfg.d_reg_every > 0 and iteration % cfg.d_reg_every == 0 and cfg.r1_gamma > 0:
            real.requires_grad_(True)
            (grad,) = torch.autograd.grad(judge(real).sum(), real, create_graph=True)
            r1 = grad.square().flatten(1).sum(1).mean()
            d_optim.zero_grad(set_to_none=True)
            (cfg.r1_gamma / 2 * r1 * cfg.d_reg_every).backward()
            _average_gradients(discriminator, world)
            d_optim.step()
            r1_value = float(r1.detach())

        # Generator: softplus(-D(G(z))).
        _requires_grad(generator, True)
        _requires_grad(discriminator, False)
        z, mix = _noises(per_worker, model.style_dim, cfg.mixing, rng)
        g_loss = F.softplus(-judge(colour(generator(z, mix_z=mix)))).mean()
        g_optim.zero_grad(set_to_none=True)
        g_loss.backward()
        _average_gradients(generator, world)
        g_optim.step()
        if cfg.path_length_weight > 0 and iteration % cfg.g_reg_every == 0:
            batch = max(1, per_worker // cfg.path_batch_shrink)
            fake, latents = generator(torch.randn(batch, model.style_dim, generator=rng), return_latents=True)
            fake = colour(fake)
            noise = torch.randn(fake.shape, generator=rng) / math.sqrt(fake.shape[2] * fake.shape[3])
            (grad,) = torch.autograd.grad((fake * noise).sum(), latents, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            mean_path_length = mean_path_length + 0.01 * (lengths.mean().detach() - mean_path_length)
            penalty = (lengths - mean_path_length).square().mean()
            g_optim.zero_grad(set_to_none=True)
            (cfg.path_length_weight * cfg.g_reg_every * penalty + 0 * fake[0, 0, 0, 0]).backward()
            _average_gradients(generator, world)
            g_optim.step()

        beta = _ema_beta(cfg, (iteration + 1) * cfg.batch_size)
        with torch.no_grad():
            for p_ema, p in zip(g_ema.parameters(), generator.parameters(), strict=True):
                p_ema.lerp_(p, 1 - beta)
            for b_ema, b in zip(g_ema.buffers(), generator.buffers(), strict=True):
                b_ema.copy_(b)
        sums["d_loss"] += float(d_loss)
        sums["g_loss"] += float(g_loss)
        sums["r1"] += r1_value
        sums["real_score"] += float(real_pred.mean())
        sums["fake_score"] += float(fake_pred.mean())
        counted += 1
        last = iteration == cfg.iterations - 1
        if (iteration + 1) % cfg.checkpoint_every == 0 or last:
            metrics = {k: _all_mean(v / counted, world) for k, v in sums.items()}
            metrics |= {"iteration": iteration, "kimg": (iteration + 1) * cfg.batch_size / 1000}
            state = {
                "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(),
                "g_ema": g_ema.state_dict(),
                "g_optim": g_optim.state_dict(),
                "d_optim": d_optim.state_dict(),
                "iteration": iteration,
                "mean_path_length": mean_path_length,
            }
            report_epoch(metrics, state)
            sums = dict.fromkeys(sums, 0.0)
            counted = 0


def run_name(images: np.ndarray, model: GeneratorConfig, train: GanTrainConfig, grayscale: bool = False) -> str:
    settings = {"model": model, "train": train, "grayscale": grayscale}
    return train_run_name(f"alsuv-stylegan2-{model.size}px", images, settings=settings, length=12)


def train_generator(
    images: np.ndarray,
    model: GeneratorConfig,
    train: GanTrainConfig,
    *,
    storage_path: str | None = None,
    mean_latent_samples: int = 10_000,
    grayscale: bool = False,
) -> TrainedGenerator:
    """Train (or reuse the cached) StyleGAN2 on canvases ``(n, 3, s, s)`` in [-1, 1].

    ``grayscale``: the discriminator sees the generator's output as grey (channel mean), as
    the attack's renderer then shows it: for grey face sets the generator need not learn
    to keep three channels equal.
    """
    import ray

    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (3, model.size, model.size):
        raise ValueError(f"training images must be (n, 3, {model.size}, {model.size}) canvases, got {images.shape}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 training images, got {len(images)}")
    spec = TrainSpec(
        name=run_name(images, model, train, grayscale),
        num_workers=train.num_workers,
        storage_path=storage_path,
        checkpoints_to_keep=1,
        stage="StyleGAN2 generator",
    )
    final = Path(spec.resolved_storage()) / spec.name / FINAL_GENERATOR
    if final.is_file():
        generator, latent_avg = load_rosinality(final, model)
        saved = torch.load(final, map_location="cpu", weights_only=True)
        return TrainedGenerator(generator, latent_avg, final, dict(saved.get("metrics", {})))
    result = fit(
        gan_train_loop,
        {"data": ray.put(images), "model": model, "train": train, "grayscale": grayscale},
        dataclasses.replace(spec, cpus_per_worker=0.99),
    )
    if result.error is not None:
        raise RuntimeError(f"StyleGAN2 training {spec.name} failed") from result.error
    state = load_result_state(result)
    generator = Generator(model)
    generator.load_state_dict(state["g_ema"])
    generator.eval()
    latent_avg = generator.mean_latent(mean_latent_samples, seed=train.seed)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    save_rosinality(final, generator, latent_avg=latent_avg, extra={"metrics": metrics})
    return TrainedGenerator(generator, latent_avg, final, metrics)
