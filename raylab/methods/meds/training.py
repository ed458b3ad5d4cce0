"""MeDS stages 2 and 3 as Ray Train per-worker loops.

Both loops read like plain PyTorch: restore the last checkpoint (if the run is resumed or a
worker was restarted), wrap the model for DDP, iterate, and report once per epoch with a
checkpoint. Tokens and targets are small (a class's cached encoder tokens), so they travel
in the loop config; each worker draws its batches from its own shard of the samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raylab.methods.anomaly_maps import patch_scores_to_maps, reduce_to_image_scores
from raylab.methods.meds.losses import distillation_loss, global_cosine_hard_mining, hard_mining_fraction
from raylab.methods.meds.model import ReconstructionScoreNet, token_distance
from raylab.methods.meds.selection import select_samples
from raylab.train import prepare, report_epoch, resume, unwrap
from raylab.train.optim import StableAdamW, warm_cosine_lr


def build_network(model_kwargs: dict[str, Any]) -> ReconstructionScoreNet:
    return ReconstructionScoreNet(**model_kwargs)


@torch.no_grad()
def token_maps(network: ReconstructionScoreNet, tokens: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Per-token anomaly maps (N, T) of the network in eval mode."""
    network.eval()
    out = [
        network.anomaly_map(torch.from_numpy(np.ascontiguousarray(tokens[i : i + batch_size]))).numpy()
        for i in range(0, len(tokens), batch_size)
    ]
    return np.concatenate(out)


def image_scores_from_tokens(token_map: np.ndarray, grid: int, image_size: int, sigma: float, top_fraction: float) -> np.ndarray:
    """Upsample + blur the token maps and take the mean of the top ``top_fraction`` (MeDS's image score)."""
    maps = patch_scores_to_maps(token_map.reshape(-1, grid, grid), image_size, sigma)
    return reduce_to_image_scores(maps, "top_fraction_mean", top_fraction)


def _worker_setup(config: dict[str, Any]):
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"] * 1000 + rank)
    torch.set_num_threads(1)
    return rank, world


def _batches(indices: np.ndarray, rng: np.random.Generator, batch_size: int, count: int):
    for _ in range(count):
        yield rng.choice(indices, size=min(batch_size, len(indices)), replace=len(indices) < batch_size)


def _shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This worker's samples: every ``world``-th one, or all of them when there are fewer
    samples than workers (a class with a handful of training images, or a selection epoch
    that kept only a few). An empty shard would give empty batches and a NaN loss, which
    DDP's all-reduce would spread to every worker's weights."""
    return indices[rank::world] if len(indices) >= world else indices


def _step(loss: torch.Tensor, network: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def distillation_loop(config: dict[str, Any]) -> None:
    """Stage 2: train the network to reproduce the stage-1 memory-score map of every image."""
    rank, world = _worker_setup(config)
    schedule = config["schedule"]
    tokens = torch.from_numpy(config["tokens"])
    targets = torch.from_numpy(config["targets"]).float()
    network = build_network(config["model"])
    optimizer = StableAdamW(network.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    start_epoch, _ = resume(network, optimizer)
    network = prepare(network)
    per_epoch = schedule.iterations // schedule.epochs
    shard = _shard(np.arange(len(tokens)), rank, world)
    for epoch in range(start_epoch, schedule.epochs):
        network.train()
        rng = np.random.default_rng([config["seed"], epoch, rank])
        losses = []
        for step, batch in enumerate(_batches(shard, rng, schedule.batch_size, per_epoch)):
            iteration = epoch * per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = warm_cosine_lr(
                    iteration, base_lr=schedule.lr, final_lr=schedule.final_lr,
                    warmup=schedule.warmup_iterations, total=schedule.iterations,
                )
            encoded, decoded = network(tokens[batch])
            predicted = token_distance(encoded, decoded)
            loss = distillation_loss(predicted, targets[batch], schedule.loss_weight, schedule.loss)
            losses.append(_step(loss, network, optimizer, schedule.grad_clip))
        report_epoch(
            {"epoch": epoch, "distillation_loss": float(np.mean(losses))},
            {"model": unwrap(network).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
        )


def selection_loop(config: dict[str, Any]) -> None:
    """Stage 3: each epoch, keep the samples below the per-class threshold; fine-tune on them.

    The kept masks of every epoch are saved in the checkpoint (``history``) so the platform
    can judge the filter afterwards; the loop itself never sees which samples are noise.
    """
    rank, world = _worker_setup(config)
    schedule = config["schedule"]
    tokens = torch.from_numpy(config["tokens"])
    class_ids = np.asarray(config["class_ids"])
    distilled_scores = np.asarray(config["distilled_scores"])
    network = build_network(config["model"])
    network.load_state_dict(config["initial_state"])
    optimizer = StableAdamW(network.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    start_epoch, state = resume(network, optimizer)
    history = list(state["history"]) if state else []
    ddp_network = prepare(network)
    total = schedule.iterations
    per_epoch = total // schedule.epochs
    for epoch in range(start_epoch, schedule.epochs):
        iteration = epoch * per_epoch
        current = image_scores_from_tokens(
            token_maps(unwrap(ddp_network), config["tokens"]), config["grid"], config["image_size"],
            config["blur_sigma"], config["top_fraction"],
        )
        keep = select_samples(distilled_scores, current, class_ids, iteration, total, schedule.mad_k)
        history.append(keep)
        ddp_network.train()
        shard = _shard(np.flatnonzero(keep), rank, world)
        rng = np.random.default_rng([config["seed"], 10_000 + epoch, rank])
        losses = []
        for step, batch in enumerate(_batches(shard, rng, schedule.batch_size, per_epoch)):
            p = hard_mining_fraction(iteration + step, schedule.hard_mining_p, schedule.hard_mining_ramp_iterations)
            encoded, decoded = ddp_network(tokens[batch])
            loss = global_cosine_hard_mining(encoded, decoded, p, schedule.hard_mining_factor)
            losses.append(_step(loss, ddp_network, optimizer, schedule.grad_clip))
        report_epoch(
            {"epoch": epoch, "kept_fraction": float(keep.mean()), "selection_loss": float(np.mean(losses))},
            {"model": unwrap(ddp_network).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history},
        )
