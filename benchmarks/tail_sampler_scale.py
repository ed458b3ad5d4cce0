"""TailSampler at tens of thousands of images: time and peak memory for one block size.

The similarity matrix is never held whole (blocks of rows, a per-column histogram for the
mode vote), so memory grows as block x N + N x U rather than N^2. This script measures one
block size per process (peak RSS is per process) on clustered synthetic embeddings with
long-tail class sizes; ``--save`` writes the predicted sizes so that runs with different
block sizes can be compared (they must be identical).

    python benchmarks/tail_sampler_scale.py --n 20000 --block 256 --save /tmp/b256.npy
    python benchmarks/tail_sampler_scale.py --n 20000 --block 2048 --save /tmp/b2048.npy
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from raylab.methods.tailedcore.tail_sampler import TailSampler, TailSamplerConfig


def long_tail_sizes(n: int, ratio: float = 0.6, singletons: int = 20) -> list[int]:
    """Class sizes falling geometrically (x0.6) down to 1, plus ``singletons`` one-image classes; total n."""
    sizes, size = [], 0.4 * (n - singletons)
    while size >= 1:
        sizes.append(int(size))
        size *= ratio
    sizes += [1] * singletons
    sizes[0] += n - sum(sizes)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--save", default=None, help="save the predicted sizes (.npy) to compare block sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    sizes = long_tail_sizes(args.n)
    centres = rng.normal(size=(len(sizes), args.dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    embeddings = (
        centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
        + 0.4 * rng.normal(size=(len(labels), args.dim)) / np.sqrt(args.dim)
    ).astype(np.float32)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    prediction = TailSampler(TailSamplerConfig(block_size=args.block)).predict(embeddings)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full_matrix_mb = len(labels) ** 2 * 4 / 2**20
    print(
        f"N={len(labels)} D={args.dim} block={args.block}: {seconds:.1f} s, peak RSS {peak_mb:.0f} MB "
        f"({peak_mb - before_mb:.0f} MB above the {before_mb:.0f} MB held before; the full float32 "
        f"similarity matrix alone would be {full_matrix_mb:.0f} MB)"
    )
    truth = np.asarray(sizes)[labels] <= prediction.max_k
    hits = (prediction.is_tail & truth).sum()
    print(
        f"classes {len(sizes)}, max_K {prediction.max_k}, "
        f"tail precision {hits / max(1, prediction.is_tail.sum()):.3f}, recall {hits / max(1, truth.sum()):.3f}"
    )
    if args.save:
        np.save(args.save, prediction.class_sizes)


if __name__ == "__main__":
    main()
