"""MeDS stage 1 (bootstrapped partial memories) on Ray: scaling and throughput.

(1) ``bootstrap_memory_scores`` with 1 Ray task against 2 Ray tasks on a local
    ``ray.init(num_cpus=2)``: wall time, speed-up, and a check that the two maps are
    bit-identical. Each task holds one Ray CPU and runs faiss with one OpenMP thread
    (``faiss.omp_set_num_threads(1)`` inside the task), so two tasks use the two cores
    without oversubscribing them.
(2) Throughput in patch comparisons per second -- for each bootstrap, (query patches) x
    (patches of the distinct drawn images), summed over bootstraps -- of the Ray version
    against the same work done in this process by faiss with its default threads.

Features: random non-negative vectors, L2-normalised, shaped like real patch embeddings
(default N=200 images x 14x14=196 patches x 152 dims; the cost does not depend on the
values), or real ``(N, h, w, D)`` features with ``--features path.npy``.

Run: ``python benchmarks/meds_partial_memories.py [--quick] [--features path.npy]``.
About 50 seconds on 2 idle CPU cores, ``--quick`` about 25 (Ray's start included); a
machine check first reports how well 2 plain processes run in parallel right now, since on
a shared machine that, not Ray, bounds the speed-up. Measured on 2 idle AMD EPYC cores
(default sizes): 1 task 4.94 s, 2 tasks 2.65 s (1.86x), in-process faiss with 2 threads
2.82 s (Ray / faiss throughput 1.07); maps of 1 and 2 tasks bit-identical.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np

from raylab.methods.meds.partial_memory import bootstrap_draws, bootstrap_memory_scores, l2_normalise


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one benchmark run."""

    images: int
    grid: int
    dim: int
    bootstraps: int
    rho: float
    repeats: int


DEFAULT = Sizes(images=200, grid=14, dim=152, bootstraps=8, rho=0.1, repeats=3)
QUICK = Sizes(images=160, grid=14, dim=152, bootstraps=4, rho=0.1, repeats=3)


def synthetic_features(sizes: Sizes, seed: int = 0) -> np.ndarray:
    """(N, P, D) unit vectors with non-negative entries, like post-ReLU backbone features."""
    rng = np.random.default_rng(seed)
    raw = rng.gamma(0.5, 1.0, size=(sizes.images, sizes.grid * sizes.grid, sizes.dim)).astype(np.float32)
    return l2_normalise(raw)


def load_features(path: str) -> np.ndarray:
    array = np.load(path)
    if array.ndim != 4:
        raise SystemExit(f"--features must hold an (N, h, w, D) array, got shape {array.shape}")
    return l2_normalise(array.reshape(array.shape[0], -1, array.shape[-1]))


def compared_pairs(features: np.ndarray, bootstraps: int, rho: float, seed: int) -> int:
    """Query-memory patch pairs of all bootstraps (memories hold the distinct drawn images)."""
    n, p, _ = features.shape
    return sum(n * p * len(np.unique(d)) * p for d in bootstrap_draws(n, bootstraps, rho, seed))


def interleaved_best_times(
    runs: dict[str, Callable[[], np.ndarray]], repeats: int
) -> dict[str, tuple[float, np.ndarray]]:
    """Fastest of ``repeats`` runs of each configuration, the configurations taking turns.

    Taking turns (rather than all repeats of one, then the next) exposes every
    configuration to the same background load on a shared machine; the minimum is the
    run least disturbed by it.
    """
    best: dict[str, tuple[float, np.ndarray]] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            result = run()
            seconds = time.perf_counter() - start
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, result)
    return best


def _count(n: int) -> float:
    """A pure-Python loop: CPU-bound, no shared state, no library threads."""
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - start


def parallel_capacity(iterations: int = 10_000_000, repeats: int = 3) -> float:
    """How much faster 2 plain processes finish a loop than 1 does (best times of 3), now.

    On a shared machine (other sessions' processes, or vCPUs that are hyperthread
    siblings) this is below 2 whatever Ray does; it bounds the speed-up measured below.
    """
    one, two = float("inf"), float("inf")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_count, [1000, 1000]))
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(_count, [iterations]))
            one = min(one, time.perf_counter() - start)
            start = time.perf_counter()
            list(pool.map(_count, [iterations // 2, iterations // 2]))
            two = min(two, time.perf_counter() - start)
    return one / two


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller problem, about 30 seconds")
    parser.add_argument("--features", default=None, help="real (N, h, w, D) patch features, .npy")
    parser.add_argument("--bootstraps", type=int, default=None, help="override B")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    features = load_features(args.features) if args.features else synthetic_features(sizes)
    bootstraps = args.bootstraps or sizes.bootstraps
    rho, seed = sizes.rho, 0
    n, p, d = features.shape
    pairs = compared_pairs(features, bootstraps, rho, seed)
    print(
        f"features: N={n} images x P={p} patches x D={d}; B={bootstraps}, rho={rho}; "
        f"{pairs / 1e9:.2f}e9 patch pairs, {2 * pairs * d / 1e12:.2f} TFLOP"
    )

    capacity = parallel_capacity()
    print(
        f"machine check: 2 plain processes run a CPU-bound loop {capacity:.2f}x as fast as 1 "
        "(about 2 on an idle 2-core machine)"
    )

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # Start both workers and import faiss in them before timing anything.
        bootstrap_memory_scores(features[:8], bootstraps=2, rho=rho, seed=seed, num_tasks=2)

        def ray_run(tasks: int) -> Callable[[], np.ndarray]:
            return lambda: bootstrap_memory_scores(features, bootstraps, rho, seed, num_tasks=tasks)

        def local_run() -> np.ndarray:
            return bootstrap_memory_scores(
                features, bootstraps, rho, seed, use_ray=False, local_threads=faiss.omp_get_max_threads()
            )

        # The in-process run uses faiss's default threads in this driver process while the
        # Ray workers sit idle, so it is timed in the same rounds without interference.
        timings = interleaved_best_times({"one": ray_run(1), "two": ray_run(2), "local": local_run}, sizes.repeats)
    finally:
        ray.shutdown()
    threads = faiss.omp_get_max_threads()
    (one_task, maps_one), (two_tasks, maps_two), (in_process, maps_local) = (
        timings["one"],
        timings["two"],
        timings["local"],
    )

    identical = bool(np.array_equal(maps_one, maps_two))
    local_gap = float(np.abs(maps_one - maps_local).max())
    rows = [
        ("Ray, 1 task (1 faiss thread)", one_task),
        ("Ray, 2 tasks (1 faiss thread each)", two_tasks),
        (f"in-process faiss ({threads} threads)", in_process),
    ]
    print()
    print(f"{'configuration':<38}{'wall s':>9}{'Gpairs/s':>10}{'vs 1 task':>11}{'vs faiss':>10}")
    for name, seconds in rows:
        print(
            f"{name:<38}{seconds:>9.2f}{pairs / seconds / 1e9:>10.2f}"
            f"{one_task / seconds:>10.2f}x{in_process / seconds:>9.2f}x"
        )
    print()
    print(
        f"speed-up 2 tasks / 1 task: {one_task / two_tasks:.2f}x (target >= 1.7x on 2 idle cores; "
        f"plain processes managed {capacity:.2f}x)"
    )
    print(f"throughput Ray (2 tasks) / in-process faiss ({threads} threads): {in_process / two_tasks:.2f}")
    print(f"maps of 1 and 2 tasks bit-identical: {identical}; max |Ray - in-process| = {local_gap:.1e}")
    if capacity < 1.7:
        print(
            "warning: other processes competed for the CPUs during the machine check, so the "
            "timings (the speed-up above all) may understate what an idle machine gives"
        )
    if not identical:
        raise SystemExit("maps differ between 1 and 2 Ray tasks")


if __name__ == "__main__":
    main()
