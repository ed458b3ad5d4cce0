"""ALSUV latent searches on Ray: the same N searches with 1 and with 2 Ray workers.

:func:`raylab.methods.alsuv.attack.run_attack` cuts each target's N searches into tasks of
``searches_per_task`` and submits all targets' tasks at once. On a local
``ray.init(num_cpus=2)`` a task that reserves 2 CPUs runs alone ("1 worker") and one that
reserves 1 CPU runs beside another ("2 workers"); each task uses one torch thread. The
same searches, the same seeds: the benchmark also checks that both runs select the same
outputs (the searches are independent of how they are grouped into tasks).

Models: the CPU-size StyleGAN2 (32 px, random weights: the cost does not depend on the
weights) and the CPU-size IR-SE source / validation encoders. Default: 2 targets x 16
searches x 10 iterations in tasks of 4 (8 tasks); ``--quick``: 2 targets x 8 x 5.

Run: ``python benchmarks/alsuv_searches.py [--quick]`` (about 1-3 minutes on 2 cores). A
machine check first measures how well two plain processes run in parallel right now: on a
machine shared with other jobs that, not Ray, bounds the speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch


def _spin(seconds: float) -> int:
    end, count = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        count += 1
    return count


def parallel_capacity(seconds: float = 2.0) -> float:
    """Work two processes get done at once relative to one process alone (2.0 = two free cores)."""
    alone = _spin(seconds)
    with ProcessPoolExecutor(2) as pool:
        together = sum(pool.map(_spin, [seconds, seconds]))
    return together / alone


def build_models():
    from raylab.methods.alsuv.config import cpu_config
    from raylab.methods.alsuv.model.encoders import FaceEncoder, build_backbone
    from raylab.methods.alsuv.model.stylegan2 import Generator
    from raylab.methods.alsuv.search import FaceRenderer

    config = cpu_config()
    torch.manual_seed(0)
    generator = Generator(config.generator.model)
    renderer = FaceRenderer(
        generator,
        generator.mean_latent(2000),
        truncation=config.attack.truncation,
        crop=config.generator.crop,
        grayscale=config.generator.grayscale,
    )
    encoders = []
    for spec in (config.encoders.source, config.encoders.validation):
        encoder = FaceEncoder(build_backbone(spec), spec).eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        encoders.append(encoder)
    return config, renderer, encoders[0], encoders[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import ray

    from raylab.methods.alsuv.attack import METHODS, run_attack

    capacity = parallel_capacity()
    print(f"machine check: two processes get {capacity:.2f}x the work of one (2.00 = two free cores)")
    config, renderer, source, validation = build_models()
    searches, iterations = (8, 5) if args.quick else (16, 10)
    attack = dataclasses.replace(
        config.attack, num_searches=searches, searches_per_task=4, iterations=iterations, top_k=3
    )
    torch.manual_seed(1)
    targets = torch.randn(2, source.embedding_dim)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    run_attack(
        targets[:1], renderer, source, validation, dataclasses.replace(attack, num_searches=4, iterations=1), seed=0
    )  # warm-up
    times: dict[int, list[float]] = {1: [], 2: []}
    chosen: dict[int, list] = {}
    for _ in range(args.repeats):
        for workers in (1, 2):  # interleaved, so a change of machine load hits both
            start = time.perf_counter()
            results = run_attack(targets, renderer, source, validation, attack, seed=0, task_cpus=2.0 / workers)
            times[workers].append(time.perf_counter() - start)
            chosen[workers] = [[r["selections"][m].search_index for m in METHODS] for r in results]
    ray.shutdown()
    one, two = float(np.median(times[1])), float(np.median(times[2]))
    print(
        f"{len(targets)} targets x {searches} searches x {iterations} iterations, tasks of {attack.searches_per_task}: "
        f"1 worker {one:.1f} s, 2 workers {two:.1f} s (median of {args.repeats}), speed-up {one / two:.2f}x"
    )
    print(f"same selections with 1 and 2 workers: {chosen[1] == chosen[2]}")


if __name__ == "__main__":
    main()
