"""MeDS stages 2 and 3 as Ray Train per-worker loops.

The loops read like plain PyTorch: restore the last checkpoint (if the run is resumed or a
worker was restarted), wrap the model for DDP, iterate, and report with a checkpoint once per
epoch. Tokens and targets are small (the cached encoder tokens of the network's classes), so
they travel in the loop config; each worker draws its batches from its own shard of the
samples, every class's images mixed as the release's concatenated dataset mixes them.

:func:`meds_loop` runs stage 2 and then stage 3 in *one* Train run: a Train run pays its
worker group's start-up and teardown (about 23 s on 2 cores) whatever it trains, so MeDS pays
it once per network instead of twice. Every checkpoint carries a ``stage`` marker, so a resumed
run (or a restarted worker) continues in the stage it was in; stage 3's checkpoints also carry
the distilled weights, which the selection rule keeps reading and which the driver returns as
the stage-2 detector (with ``selection`` None it trains stage 2 alone, for studies of the
distilled network). :func:`selection_loop` is stage 3 alone from given weights, e.g. on a
fixed kept set for the clean-oracle ceiling.

Stage 3 follows the released code (``step_3_data_selection_with_distilled_model.py``):
the full training recipe from the distilled weights (a fresh StableAdamW, lr 2e-3 -> 2e-4
warm-cosine, hard-mining share ramped to 0.5 with factor 0.1), and the kept set chosen again
before every pass over it. The selection score is the release's: the mean of the top 1% of
the raw token map (no upsampling or blur), which is also far cheaper than scoring blurred
full-resolution maps before every pass.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from raylab.methods.meds.losses import distillation_loss, global_cosine_hard_mining, hard_mining_fraction
from raylab.methods.meds.model import ReconstructionScoreNet, token_distance
from raylab.methods.meds.selection import blend_weight, select_samples
from raylab.tasks.anomaly.maps import patch_scores_to_maps, reduce_to_image_scores
from raylab.train import prepare, report_epoch, restore_state, resume, unwrap
from raylab.train.optim import StableAdamW, warm_cosine_lr

# The numeric stage of a report (Ray Train metrics are numbers; the split of a fused run's
# metrics and the checkpoint's ``stage`` marker use these).
DISTILLATION, SELECTION = 2, 3


def cpu_numerics() -> None:
    """Flush denormal floats to zero in this process.

    Tiny activations, gradients and Adam moments can fall into the denormal range, where
    x86 CPUs compute an order of magnitude slower (an earlier audit saw a single-process
    stage-3 loop run about 10x faster with flushing; ``benchmarks/meds_flush_denormal.py``
    found no denormals and no difference in its own setting, so the gain depends on the
    weights reached). Values that small are far below anything the loss can resolve, so
    flushing them to zero changes no result that matters, and it is a guard against the slow
    path. The flag is per process, so every process that trains or scores the decoder sets it.
    """
    torch.set_flush_denormal(True)


def build_network(model_kwargs: dict[str, Any]) -> ReconstructionScoreNet:
    return ReconstructionScoreNet(**model_kwargs)


@torch.no_grad()
def token_maps(network: ReconstructionScoreNet, tokens: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Per-token anomaly maps (N, T) of the network in eval mode."""
    cpu_numerics()
    network.eval()
    out = [
        network.anomaly_map(torch.from_numpy(np.ascontiguousarray(tokens[i : i + batch_size]))).numpy()
        for i in range(0, len(tokens), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, tokens.shape[1]), np.float32)


def token_top_mean(token_map: np.ndarray, fraction: float) -> np.ndarray:
    """The release's selection score: mean of the top ``fraction`` of each raw token map
    (``int(fraction x T)`` tokens, at least one: 7 of 784 at 28x28, 1 of 196 at 14x14)."""
    flat = np.asarray(token_map).reshape(len(token_map), -1)
    count = max(1, int(fraction * flat.shape[1]))
    return np.sort(flat, axis=1)[:, -count:].mean(axis=1)


def image_scores_from_tokens(
    token_map: np.ndarray, grid: int, image_size: int, sigma: float, top_fraction: float
) -> np.ndarray:
    """Upsample + blur the token maps and take the mean of the top ``top_fraction`` (the test-time image score)."""
    maps = patch_scores_to_maps(token_map.reshape(-1, grid, grid), image_size, sigma)
    return reduce_to_image_scores(maps, "top_fraction_mean", top_fraction)


def _worker_setup(config: dict[str, Any]):
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"] * 1000 + rank)
    torch.set_num_threads(1)
    cpu_numerics()
    return rank, world


def _optimizer(network: torch.nn.Module, schedule) -> StableAdamW:
    return StableAdamW(network.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, schedule, iteration: int) -> None:
    lr = warm_cosine_lr(
        iteration,
        base_lr=schedule.lr,
        final_lr=schedule.final_lr,
        warmup=schedule.warmup_iterations,
        total=schedule.iterations,
    )
    for group in optimizer.param_groups:
        group["lr"] = lr


def _batches(indices: np.ndarray, rng: np.random.Generator, batch_size: int, count: int):
    for _ in range(count):
        yield rng.choice(indices, size=min(batch_size, len(indices)), replace=len(indices) < batch_size)


def _shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This worker's samples: every ``world``-th one, or all of them when there are fewer
    samples than workers (a class with a handful of training images, or a selection pass
    that kept only a few). An empty shard would give empty batches and a NaN loss, which
    DDP's all-reduce would spread to every worker's weights."""
    return indices[rank::world] if len(indices) >= world else indices


def pass_batches(
    kept: np.ndarray, rank: int, world: int, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One pass over this worker's share of the kept samples, shuffled, in whole batches.

    Every worker gets the same number of batches (DDP steps all workers in lock-step), counted
    from the size of the smallest share; like the release's ``drop_last`` loader, the last
    partial batch is dropped, and a share smaller than a batch is one batch of itself.
    """
    shard = _shard(kept, rank, world)
    smallest = len(kept) // world if len(kept) >= world else len(kept)
    size = min(batch_size, len(shard))
    steps = max(1, smallest // batch_size)
    order = rng.permutation(shard)
    return [order[i * size : (i + 1) * size] for i in range(steps)]


def _step(loss: torch.Tensor, network: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def _clone_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in unwrap(network).state_dict().items()}


# ----------------------------------------------------------------------------- stage 2


def _distillation_epochs(
    config: dict[str, Any],
    schedule,
    network: torch.nn.Module,
    optimizer,
    start_epoch: int,
    rank: int,
    world: int,
    reports: list[dict[str, float]],
) -> None:
    """Stage 2's epochs from ``start_epoch``: regress every image's stage-1 memory-score map.

    ``reports`` (every epoch's metrics so far) travels in the checkpoint: a run keeping only
    its newest checkpoint still returns the whole training curve of both stages.
    """
    tokens = torch.from_numpy(np.array(config["tokens"]))
    targets = torch.from_numpy(np.array(config["targets"])).float()
    per_epoch = schedule.iterations // schedule.epochs
    shard = _shard(np.arange(len(tokens)), rank, world)
    for epoch in range(start_epoch, schedule.epochs):
        network.train()
        rng = np.random.default_rng([config["seed"], epoch, rank])
        losses = []
        for step, batch in enumerate(_batches(shard, rng, schedule.batch_size, per_epoch)):
            set_lr(optimizer, schedule, epoch * per_epoch + step)
            encoded, decoded = network(tokens[batch])
            loss = distillation_loss(
                token_distance(encoded, decoded), targets[batch], schedule.loss_weight, schedule.loss
            )
            losses.append(_step(loss, network, optimizer, schedule.grad_clip))
        reports.append({"stage": DISTILLATION, "epoch": epoch, "distillation_loss": float(np.mean(losses))})
        report_epoch(
            reports[-1],
            {
                "stage": "distillation",
                "model": unwrap(network).state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "reports": reports,
            },
        )


# ----------------------------------------------------------------------------- stage 3


def selection_scores(
    network: torch.nn.Module, tokens: np.ndarray, rank: int, world: int, fraction: float
) -> np.ndarray:
    """Every training image's selection score under ``network``, each worker scoring a share.

    The shares are gathered, so every worker holds the very same scores: the kept set, and
    with it the number of steps in the pass, must agree across workers or DDP would hang.
    """
    share = np.arange(rank, len(tokens), world)
    mine = token_top_mean(token_maps(unwrap(network), tokens[share]), fraction) if len(share) else np.zeros(0)
    if world == 1:
        return mine
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (share, mine))
    scores = np.empty(len(tokens), dtype=np.float64)
    for indices, values in gathered:
        scores[indices] = values
    return scores


def _kept_set(
    config: dict[str, Any], schedule, network, distilled_scores, iteration: int, rank: int, world: int
) -> np.ndarray:
    """The kept mask for the next pass: the progressive rule, or a fixed mask (the oracle's)."""
    if config.get("fixed_keep") is not None:
        return np.asarray(config["fixed_keep"], dtype=bool)
    if blend_weight(iteration, schedule.iterations) >= 1.0:
        current = distilled_scores  # weighted 0: skip scoring (at iteration 0 they are equal anyway)
    else:
        current = selection_scores(network, config["tokens"], rank, world, config["top_fraction"])
    return select_samples(
        distilled_scores, current, np.asarray(config["class_ids"]), iteration, schedule.iterations, schedule.mad_k
    )


def _selection_epochs(
    config: dict[str, Any],
    schedule,
    network: torch.nn.Module,
    optimizer,
    start_epoch: int,
    distilled_scores: np.ndarray | None,
    history: list[np.ndarray],
    rank: int,
    world: int,
    reports: list[dict[str, float]],
    extra_state: dict[str, Any],
) -> None:
    """Stage 3's epochs from ``start_epoch``; the kept set is chosen again before every pass.

    An epoch (``iterations / epochs`` steps) is only the checkpoint interval: a pass that would
    cross an epoch's end stops there and the next epoch begins with a fresh selection, so a
    resumed run restarts exactly at a pass boundary. ``history`` gains the mask of every pass.
    """
    tokens = torch.from_numpy(np.array(config["tokens"]))
    total = schedule.iterations
    per_epoch = total // schedule.epochs
    for epoch in range(start_epoch, schedule.epochs):
        iteration = epoch * per_epoch
        end = total if epoch == schedule.epochs - 1 else iteration + per_epoch
        losses, passes, keep = [], 0, None
        while iteration < end:
            keep = _kept_set(config, schedule, network, distilled_scores, iteration, rank, world)
            history.append(keep)
            # Every score tied would keep nothing; train on all of them rather than stall.
            kept = np.flatnonzero(keep) if keep.any() else np.arange(len(keep))
            rng = np.random.default_rng([config["seed"], 10_000 + epoch, passes, rank])
            network.train()
            for batch in pass_batches(kept, rank, world, schedule.batch_size, rng)[: end - iteration]:
                set_lr(optimizer, schedule, iteration)
                p = hard_mining_fraction(iteration, schedule.hard_mining_p, schedule.hard_mining_ramp_iterations)
                encoded, decoded = network(tokens[batch])
                loss = global_cosine_hard_mining(encoded, decoded, p, schedule.hard_mining_factor)
                losses.append(_step(loss, network, optimizer, schedule.grad_clip))
                iteration += 1
            passes += 1
        reports.append(
            {
                "stage": SELECTION,
                "epoch": epoch,
                "passes": passes,
                "kept_fraction": float(np.mean(keep)) if keep is not None else float("nan"),
                "selection_loss": float(np.mean(losses)) if losses else float("nan"),
            }
        )
        report_epoch(
            reports[-1],
            {
                "stage": "selection",
                "model": unwrap(network).state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": history,
                "reports": reports,
                **extra_state,
            },
        )


def selection_loop(config: dict[str, Any]) -> None:
    """Stage 3 alone, from ``initial_state``: progressive selection (``distilled_scores``
    given), or training on a fixed kept set (``fixed_keep``).

    The kept masks of every pass are saved in the checkpoint (``history``) so the platform
    can judge the filter afterwards; the loop itself never sees which samples are noise.
    """
    rank, world = _worker_setup(config)
    schedule = config["schedule"]
    network = build_network(config["model"])
    network.load_state_dict(config["initial_state"])
    optimizer = _optimizer(network, schedule)
    start_epoch, state = resume(network, optimizer)
    history = list(state["history"]) if state else []
    reports = list(state.get("reports", [])) if state else []
    distilled = config.get("distilled_scores")
    _selection_epochs(
        config, schedule, prepare(network), optimizer, start_epoch, distilled, history, rank, world, reports, {}
    )


# ----------------------------------------------------------------------------- stages 2 + 3


def meds_loop(config: dict[str, Any]) -> None:
    """Stage 2, then stage 3 from the distilled weights, in one Train run (``selection`` None: stage 2 only).

    The checkpoint's ``stage`` says where a resumed run continues: inside stage 2 (weights and
    optimiser of stage 2), or inside stage 3 (its weights and fresh optimiser, the kept masks
    so far, and the distilled weights the selection rule compares against).
    """
    rank, world = _worker_setup(config)
    started = time.perf_counter()
    distil, select = config["distillation"], config["selection"]
    network = build_network(config["model"])
    state = restore_state()
    reports = list(state.get("reports", [])) if state else []
    if state is None or state["stage"] == "distillation":
        optimizer = _optimizer(network, distil)
        if state is not None:
            network.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        ddp_network = prepare(network)
        _distillation_epochs(
            config, distil, ddp_network, optimizer, state["epoch"] + 1 if state else 0, rank, world, reports
        )
        if select is None:
            return
        distilled, start_epoch, history = _clone_state(ddp_network), 0, []
        # Where this attempt's loop time splits between the stages (--profile-time).
        distillation_seconds = time.perf_counter() - started
        optimizer = _optimizer(unwrap(ddp_network), select)  # the release starts stage 3 with a fresh optimiser
        scorer = build_network(config["model"])
    else:
        network.load_state_dict(state["model"])
        optimizer = _optimizer(network, select)
        optimizer.load_state_dict(state["optimizer"])
        distilled, start_epoch, history = state["distilled"], state["epoch"] + 1, list(state["history"])
        distillation_seconds = 0.0  # stage 2 ran in an earlier attempt
        ddp_network = prepare(network)
        # The uninterrupted run built the scorer at the stage change, before stage 3's first
        # checkpoint saved the generators: a run resumed inside stage 3 must not draw its
        # initial weights (overwritten below anyway) from the restored generator again, or
        # every later dropout mask and batch shifts.
        with torch.random.fork_rng(devices=[]):
            scorer = build_network(config["model"])
    scorer.load_state_dict(distilled)
    distilled_scores = selection_scores(scorer, config["tokens"], rank, world, config["top_fraction"])
    extra = {"distilled": distilled, "distillation_seconds": distillation_seconds}
    _selection_epochs(
        config, select, ddp_network, optimizer, start_epoch, distilled_scores, history, rank, world, reports, extra
    )
