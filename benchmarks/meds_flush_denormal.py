"""MeDS stage 3 on a CPU: how much does flushing denormal floats to zero speed up a training step?

A Ray Train worker runs MeDS's stage-3 steps single-threaded on cached tokens. After some
training, the decoder's tiny activations, gradients and Adam moments become denormal floats,
which x86 CPUs handle in slow microcode. This script reproduces one worker's stage-3 loop in
a single process on real tokens (magnetic tile, the sweep's CPU configuration: EfficientNet-
Lite0 tokens pooled to 14x14, the CPU decoder, the released stage-3 recipe and hard-mining
loss): it trains ``--distil`` stage-2 steps (onto a cheap stand-in for the stage-1 maps) and
``--warm`` stage-3 steps to reach a trained state (flushing on, to be quick), then
times ``--steps`` steps from that same state and the same batches twice, first with flushing
off, then on, and prints the ratio. It also counts the denormal values in the weights and
Adam moments at that state. No Ray Train (only the cached features are read through Ray).

Run::

    python benchmarks/meds_flush_denormal.py --data-root ../shared/data

Measured on 2 cores shared with another job (1-min load 5.6 at the start, 4.5 at the end):
400 stage-2 + 200 stage-3 warm-up steps, then 60 timed steps each way: denormal share 0,
114.3 ms per step without flushing, 133.9 ms with, ratio 0.85 (noise from the shared
cores: without denormals flushing cannot help). A first run without the stage-2 warm-up
(300 stage-3 steps from a fresh network): share 0, 99.0 vs 100.3 ms, ratio 0.99. The 10x
an earlier audit saw is not reproduced here; the flag stays as a guard (it costs nothing).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from raylab.config import load_config
from raylab.data import load_corpus
from raylab.data.protocols import NoiseProtocol, inject_noise
from raylab.experiment.runner import packaged_config
from raylab.experiment.session import init_ray
from raylab.features.cache import cached_patch_features
from raylab.features.patch_embed import pool_patch_grid
from raylab.methods.meds.experiment import MeDSSweepConfig
from raylab.methods.meds.losses import distillation_loss, global_cosine_hard_mining, hard_mining_fraction
from raylab.methods.meds.model import ReconstructionScoreNet, token_distance
from raylab.methods.meds.training import set_lr
from raylab.tasks.anomaly.benchmark import class_splits
from raylab.train.optim import StableAdamW, warm_cosine_lr


def training_tokens(data_root: str | None) -> tuple[np.ndarray, MeDSSweepConfig]:
    """The magnetic-tile training tokens (noise 0) as the sweep's CPU configuration pools them."""
    config = load_config(MeDSSweepConfig, packaged_config("meds", "magnetic_tile"))
    corpus = load_corpus("magnetic_tile", data_root)
    init_ray()
    features = cached_patch_features(corpus, config.features)
    split = class_splits(inject_noise(corpus, NoiseProtocol(0.0, 0)).table, config.features.image_size)[0]
    grid = pool_patch_grid(features.take(split.train_ids), config.meds.token_grid)
    n, h, w, d = grid.shape
    return np.ascontiguousarray(grid.reshape(n, h * w, d)), config


def stage3_steps(network, optimizer, tokens, schedule, first: int, count: int, seed: int) -> float:
    """``count`` stage-3 steps from iteration ``first``; seconds per step."""
    rng = np.random.default_rng(seed)
    network.train()
    started = time.perf_counter()
    for iteration in range(first, first + count):
        batch = torch.from_numpy(tokens[rng.choice(len(tokens), schedule.batch_size, replace=False)])
        set_lr(optimizer, schedule, iteration)
        encoded, decoded = network(batch)
        p = hard_mining_fraction(iteration, schedule.hard_mining_p, schedule.hard_mining_ramp_iterations)
        loss = global_cosine_hard_mining(encoded, decoded, p, schedule.hard_mining_factor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), schedule.grad_clip)
        optimizer.step()
    return (time.perf_counter() - started) / count


def distil_steps(network, optimizer, tokens, schedule, count: int, seed: int) -> None:
    """Stage 2's regression for ``count`` steps, onto a cheap stand-in for the stage-1 maps
    (each token's cosine distance to the class's mean token: like the memory scores, a
    distance to what is common), so that stage 3 starts from distilled-like weights."""
    mean = torch.nn.functional.normalize(torch.from_numpy(tokens).mean((0, 1)), dim=0)
    rng = np.random.default_rng(seed)
    network.train()
    for iteration in range(count):
        batch = torch.from_numpy(tokens[rng.choice(len(tokens), schedule.batch_size, replace=False)])
        target = 1 - torch.nn.functional.normalize(batch, dim=-1) @ mean
        lr = warm_cosine_lr(
            iteration, base_lr=schedule.lr, final_lr=schedule.final_lr, warmup=schedule.warmup_iterations, total=count
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        encoded, decoded = network(batch)
        loss = distillation_loss(token_distance(encoded, decoded), target, schedule.loss_weight, schedule.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), schedule.grad_clip)
        optimizer.step()


def denormal_share(network, optimizer) -> float:
    """Share of the weights and Adam moments that are non-zero but below float32's normal range."""
    tiny = torch.finfo(torch.float32).tiny
    tensors = list(network.parameters()) + [
        v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    ]
    values = torch.cat([t.detach().flatten().float() for t in tensors])
    return float(((values != 0) & (values.abs() < tiny)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--distil", type=int, default=400, help="stage-2 steps before stage 3 (flushing on)")
    parser.add_argument("--warm", type=int, default=200, help="stage-3 steps trained before timing (flushing on)")
    parser.add_argument("--steps", type=int, default=60, help="steps timed, once without and once with flushing")
    args = parser.parse_args()
    tokens, config = training_tokens(args.data_root)
    meds = config.meds
    d = meds.distillation
    torch.set_num_threads(1)  # as in a Ray Train worker
    torch.manual_seed(0)
    network = ReconstructionScoreNet(
        meds.groups, tokens.shape[-1], d.hidden_dim, d.decoder_blocks, d.heads, d.bottleneck_ratio, d.dropout
    )
    torch.set_flush_denormal(True)
    distil_steps(
        network, StableAdamW(network.parameters(), lr=d.lr, weight_decay=d.weight_decay), tokens, d, args.distil, seed=0
    )
    schedule = meds.selection
    optimizer = StableAdamW(network.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
    stage3_steps(network, optimizer, tokens, schedule, 0, args.warm, seed=1)
    snapshot = (copy.deepcopy(network.state_dict()), copy.deepcopy(optimizer.state_dict()))
    timings = {}
    for flush in (False, True):
        network.load_state_dict(snapshot[0])
        optimizer.load_state_dict(snapshot[1])
        torch.set_flush_denormal(flush)
        torch.manual_seed(1)
        timings[flush] = stage3_steps(network, optimizer, tokens, schedule, args.warm, args.steps, seed=2)
        if not flush:
            share = denormal_share(network, optimizer)
    print(
        f"tokens {tokens.shape}, decoder {d.hidden_dim}x{d.decoder_blocks}, batch {schedule.batch_size}, "
        f"{args.distil} stage-2 + {args.warm} stage-3 warm-up steps, {args.steps} timed steps each, 1 thread"
    )
    print(f"denormal share of weights + Adam moments after the unflushed steps: {share:.2e}")
    print(
        f"per step: {timings[False] * 1e3:.1f} ms without flushing, {timings[True] * 1e3:.1f} ms with, "
        f"ratio {timings[False] / timings[True]:.2f}"
    )


if __name__ == "__main__":
    main()
