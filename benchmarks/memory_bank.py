"""Side-by-side timings for raylab.memory on one set of patch features, in one process.

(a) 1-NN search, PatchCore's scoring step: faiss flat L2 (``MemoryBank``) against
    anomalib's approach, chunked ``torch.cdist`` + ``topk``.
(b) Coreset subsampling, PatchCore's memory reduction: ``exact`` against ``approximate``
    greedy k-center, time and coverage radius (the k-center objective, original space).
(c) The batched greedy k-center of ``raylab.memory.coreset`` against the straightforward
    one-centre-per-pass loop on the same points and start: speed-up and identical picks.

Features: synthetic by default, shaped like CNN patch embeddings (152 dims; a mixture of
anisotropic Gaussians with a decaying spectrum, passed through a ReLU and average pooled
like backbone activations), or a real ``(N, D)`` array with ``--features path.npy``.

Run: ``python benchmarks/memory_bank.py [--quick] [--features path.npy]``.
Default about 2 minutes on 2 CPU cores; ``--quick`` under 30 seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
import torch

from raylab.memory import MemoryBank, coverage_radius, greedy_coreset
from raylab.memory.coreset import kcenter_greedy, kcenter_greedy_reference, random_projection

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one benchmark run."""

    n_features: int
    n_queries: int
    coreset_ratio: float
    naive_points: int
    naive_centres: int


DEFAULT = Sizes(n_features=200_000, n_queries=20_000, coreset_ratio=0.1, naive_points=200_000, naive_centres=2_000)
QUICK = Sizes(n_features=80_000, n_queries=10_000, coreset_ratio=0.1, naive_points=80_000, naive_centres=1_000)


def synthetic_patch_features(n: int, dim: int, seed: int) -> np.ndarray:
    """Patch-embedding-like data: 48 anisotropic Gaussian modes with power-law spectra.

    Real backbone patch features are non-negative (post-ReLU, average pooled), lie near a
    low-dimensional structure and come in modes (background, texture, edges); a coreset
    benchmark on isotropic noise would misjudge both the runtime and the coverage.
    """
    rng = np.random.default_rng(seed)
    n_modes, rank = 48, 24
    weights = rng.dirichlet(np.full(n_modes, 0.7))
    modes = rng.choice(n_modes, size=n, p=weights)
    centres = rng.gamma(1.0, 1.0, (n_modes, dim))
    spectrum = 1.0 / np.arange(1, rank + 1) ** 0.8
    out = np.empty((n, dim), dtype=np.float32)
    for mode in range(n_modes):
        rows = np.flatnonzero(modes == mode)
        basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T * spectrum[:, None] * 2.0
        latent = rng.standard_normal((rows.size, rank))
        noise = rng.standard_normal((rows.size, dim)) * 0.1
        out[rows] = np.maximum(centres[mode] + latent @ basis + noise, 0)
    return out


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cdist_topk(queries: torch.Tensor, memory: torch.Tensor, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """anomalib's PatchCore scoring: ``torch.cdist`` then ``topk(k=1, largest=False)``, chunked."""
    distances, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        values, ids = torch.cdist(queries[start : start + chunk], memory).topk(1, largest=False, dim=1)
        distances.append(values)
        indices.append(ids)
    return torch.cat(distances).numpy(), torch.cat(indices).numpy()


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n== {title}")
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def bench_search(features: np.ndarray, sizes: Sizes, rng: np.random.Generator) -> None:
    n_memory = max(1, int(len(features) * sizes.coreset_ratio))
    rows = rng.permutation(len(features))
    memory, queries = features[rows[:n_memory]], features[rows[n_memory : n_memory + sizes.n_queries]]
    bank = MemoryBank(features.shape[1], metric="l2", device="cpu")
    bank.add(memory)
    faiss_s, (faiss_sq, faiss_ids) = timed(lambda: bank.search(queries, k=1))
    torch_s, (torch_dist, torch_ids) = timed(lambda: cdist_topk(torch.from_numpy(queries), torch.from_numpy(memory)))
    agree = float(np.mean(faiss_ids == torch_ids))
    gap = float(np.max(np.abs(np.sqrt(np.maximum(faiss_sq, 0)) - torch_dist)))
    print_table(
        f"(a) 1-NN search: {len(queries)} queries x {n_memory} memory x {features.shape[1]} dims",
        ("method", "seconds", "queries/s"),
        [
            ("faiss IndexFlatL2 (MemoryBank)", f"{faiss_s:.2f}", f"{len(queries) / faiss_s:,.0f}"),
            ("torch.cdist + topk, chunked", f"{torch_s:.2f}", f"{len(queries) / torch_s:,.0f}"),
        ],
    )
    print(f"ratio cdist/faiss time: {torch_s / faiss_s:.2f}x   same neighbour: {agree:.2%}   max |dist gap|: {gap:.1e}")


def bench_coreset_variants(features: np.ndarray, sizes: Sizes) -> None:
    seconds: dict[str, float] = {}
    radius: dict[str, float] = {}
    radius_seconds: dict[str, float] = {}
    for method in ("exact", "approximate"):
        seconds[method], chosen = timed(partial(greedy_coreset, features, ratio=sizes.coreset_ratio, method=method))
        radius_seconds[method], radius[method] = timed(partial(coverage_radius, features, chosen))
    n_select = max(1, int(len(features) * sizes.coreset_ratio))
    print_table(
        f"(b) greedy coreset: {len(features)} x {features.shape[1]} -> {n_select} (projection 128, seed 0)",
        ("method", "select s", "coverage radius", "radius s"),
        [(m, f"{seconds[m]:.1f}", f"{radius[m]:.4f}", f"{radius_seconds[m]:.1f}") for m in seconds],
    )
    print(
        f"approximate/exact: time {seconds['approximate'] / seconds['exact']:.2f}x, "
        f"coverage radius {radius['approximate'] / radius['exact']:.3f}"
    )


def bench_batched_vs_naive(features: np.ndarray, sizes: Sizes) -> None:
    subset = features[: sizes.naive_points]
    projected = random_projection(torch.from_numpy(subset), 128, np.random.default_rng(0))
    points = (projected - projected.mean(dim=0)).contiguous()
    fast_s, fast = timed(lambda: kcenter_greedy(points, sizes.naive_centres, 0))
    naive_s, naive = timed(lambda: kcenter_greedy_reference(points.numpy(), sizes.naive_centres, 0))
    print_table(
        f"(c) exact greedy k-center: {len(subset)} points x 128 dims, {sizes.naive_centres} centres",
        ("implementation", "seconds", "ms / centre"),
        [
            ("straightforward loop (numpy)", f"{naive_s:.2f}", f"{1e3 * naive_s / sizes.naive_centres:.2f}"),
            ("batched (kcenter_greedy)", f"{fast_s:.2f}", f"{1e3 * fast_s / sizes.naive_centres:.2f}"),
        ],
    )
    print(f"speed-up: {naive_s / fast_s:.1f}x   {describe_agreement(points.numpy(), fast, naive)}")


def describe_agreement(points: np.ndarray, fast: np.ndarray, naive: np.ndarray) -> str:
    """Where two greedy orders part ways, show that both picks were equally far (a tie)."""
    differing = np.flatnonzero(fast != naive)
    if differing.size == 0:
        return f"identical picks: {len(fast)}/{len(fast)}"
    step = int(differing[0])
    before = points[naive[:step]].astype(np.float64)
    gaps = [np.sqrt(((before - points[pick]) ** 2).sum(axis=1)).min() for pick in (fast[step], naive[step])]
    return (
        f"identical for the first {step} picks; at step {step} both picks are at distance "
        f"{gaps[0]:.6f} vs {gaps[1]:.6f} (a float32 tie, relative gap {abs(gaps[0] - gaps[1]) / gaps[1]:.1e})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 30 s")
    parser.add_argument("--features", help="an (N, D) .npy array of real patch features")
    parser.add_argument("--max-rows", type=int, help="use at most this many rows (random subset)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sizes = QUICK if args.quick else DEFAULT
    rng = np.random.default_rng(args.seed)
    if args.features:
        features = np.ascontiguousarray(np.load(args.features, mmap_mode="r"), dtype=np.float32)
        source = args.features
    else:
        features = synthetic_patch_features(sizes.n_features, 152, args.seed)
        source = "synthetic patch-like mixture"
    if args.max_rows and args.max_rows < len(features):
        features = features[np.sort(rng.choice(len(features), args.max_rows, replace=False))]
    print(f"features: {source}, {features.shape[0]} x {features.shape[1]}, torch threads {torch.get_num_threads()}")

    bench_search(features, sizes, rng)
    bench_coreset_variants(features, sizes)
    bench_batched_vs_naive(features, sizes)


if __name__ == "__main__":
    main()
