"""Side-by-side timings for raylab.memory on one set of patch features, in one process.

(a) 1-NN search, PatchCore's scoring step: faiss flat L2 (``MemoryBank``) against
    anomalib's approach, chunked ``torch.cdist`` + ``topk``.
(b) Coreset subsampling, PatchCore's memory reduction: ``exact`` against ``approximate``
    greedy k-center, time and coverage radius (the k-center objective, original space).
(c) The batched greedy k-center of ``raylab.memory.coreset`` against the straightforward
    one-centre-per-pass loop on the same points and start, at PatchCore's 10%: speed-up
    (the loop's first steps timed and extrapolated) and identical picks.

Features: synthetic by default, shaped like CNN patch embeddings (152 dims; a mixture of
anisotropic Gaussians with a decaying spectrum, clipped at zero like post-ReLU
activations), or a real ``(N, D)`` array with ``--features path.npy``.

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
    naive_steps: int


DEFAULT = Sizes(n_features=200_000, n_queries=20_000, coreset_ratio=0.1, naive_steps=300)
QUICK = Sizes(n_features=60_000, n_queries=10_000, coreset_ratio=0.1, naive_steps=200)


@dataclass(frozen=True)
class Timing:
    """Wall-clock and process CPU seconds of one call.

    CPU seconds (all threads) are printed beside wall seconds because these machines are
    shared: when other work competes for the cores, wall time inflates while CPU time shows
    what the call itself cost.
    """

    wall: float
    cpu: float

    def cells(self) -> tuple[str, str]:
        return f"{self.wall:.2f}", f"{self.cpu:.2f}"


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


def timed(fn: Callable[[], T]) -> tuple[Timing, T]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


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
    faiss_t, (faiss_sq, faiss_ids) = timed(lambda: bank.search(queries, k=1))
    torch_t, (torch_dist, torch_ids) = timed(lambda: cdist_topk(torch.from_numpy(queries), torch.from_numpy(memory)))
    agree = float(np.mean(faiss_ids == torch_ids))
    gap = float(np.max(np.abs(np.sqrt(np.maximum(faiss_sq, 0)) - torch_dist)))
    print_table(
        f"(a) 1-NN search: {len(queries)} queries x {n_memory} memory x {features.shape[1]} dims",
        ("method", "wall s", "cpu s", "queries/s"),
        [
            ("faiss IndexFlatL2 (MemoryBank)", *faiss_t.cells(), f"{len(queries) / faiss_t.wall:,.0f}"),
            ("torch.cdist + topk, chunked", *torch_t.cells(), f"{len(queries) / torch_t.wall:,.0f}"),
        ],
    )
    print(
        f"cdist/faiss: wall {torch_t.wall / faiss_t.wall:.2f}x, cpu {torch_t.cpu / faiss_t.cpu:.2f}x   "
        f"same neighbour: {agree:.2%}   max |dist gap|: {gap:.1e}"
    )


def bench_coreset_variants(features: np.ndarray, sizes: Sizes) -> None:
    timing: dict[str, Timing] = {}
    radius: dict[str, float] = {}
    radius_timing: dict[str, Timing] = {}
    for method in ("exact", "approximate"):
        timing[method], chosen = timed(partial(greedy_coreset, features, ratio=sizes.coreset_ratio, method=method))
        radius_timing[method], radius[method] = timed(partial(coverage_radius, features, chosen))
    n_select = max(1, int(len(features) * sizes.coreset_ratio))
    print_table(
        f"(b) greedy coreset: {len(features)} x {features.shape[1]} -> {n_select} (projection 128, seed 0)",
        ("method", "select wall s", "select cpu s", "coverage radius", "radius wall s"),
        [(m, *timing[m].cells(), f"{radius[m]:.4f}", f"{radius_timing[m].wall:.2f}") for m in timing],
    )
    print(
        f"approximate/exact: cpu time {timing['approximate'].cpu / timing['exact'].cpu:.2f}x, "
        f"coverage radius {radius['approximate'] / radius['exact']:.3f}"
    )


def bench_batched_vs_naive(features: np.ndarray, sizes: Sizes) -> None:
    """Full batched run against the straightforward loop's first steps, extrapolated.

    Every step of the straightforward loop is one identical pass over all points, so its
    per-step cost times the number of centres is its total; the picks of those first steps
    are compared with the batched ones.
    """
    n_select = max(1, int(len(features) * sizes.coreset_ratio))
    projected = random_projection(torch.from_numpy(features), 128, np.random.default_rng(0))
    points = (projected - projected.mean(dim=0)).contiguous()
    fast_t, fast = timed(lambda: kcenter_greedy(points, n_select, 0))
    steps = min(sizes.naive_steps, n_select)
    naive_t, naive = timed(lambda: kcenter_greedy_reference(points.numpy(), steps, 0))
    scale = n_select / steps
    naive_total = Timing(naive_t.wall * scale, naive_t.cpu * scale)
    print_table(
        f"(c) exact greedy k-center: {len(features)} points x 128 dims -> {n_select} centres",
        ("implementation", "wall s", "cpu s", "ms / centre (wall)"),
        [
            (
                f"straightforward loop (numpy), {steps} steps x {scale:.1f}",
                *naive_total.cells(),
                f"{1e3 * naive_t.wall / steps:.2f}",
            ),
            ("batched (kcenter_greedy), measured", *fast_t.cells(), f"{1e3 * fast_t.wall / n_select:.2f}"),
        ],
    )
    print(
        f"speed-up: wall {naive_total.wall / fast_t.wall:.1f}x, cpu {naive_total.cpu / fast_t.cpu:.1f}x   "
        f"{describe_agreement(points.numpy(), fast[:steps], naive)}"
    )


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
