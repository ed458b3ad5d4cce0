"""TailSampler at tens of thousands of images: time, peak memory, and agreement across block sizes.

The similarity matrix is never held whole (blocks of rows, a per-column histogram for the
mode vote), so memory grows as block x N + N x U rather than N^2. This script measures it
on clustered synthetic embeddings (the sizes of a long tail: a few large classes, many
small ones) and compares two block sizes' predictions, which must be identical.

    python benchmarks/tail_sampler_scale.py --n 20000 --dim 320
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from raylab.methods.tailedcore.tail_sampler import TailSampler, TailSamplerConfig


def long_tail_sizes(n: int) -> list[int]:
    """Class sizes falling geometrically from n/4 down to 1, adding up to n."""
    sizes, size = [], max(1, n // 4)
    while sum(sizes) + size <= n and size >= 1:
        sizes.append(size)
        size = max(1, int(size * 0.6)) if size > 1 else 1
        if size == 1 and sizes.count(1) > 20:
            break
    sizes.append(n - sum(sizes)) if n > sum(sizes) else None
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    sizes = long_tail_sizes(args.n)
    centres = rng.normal(size=(len(sizes), args.dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    embeddings = (centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True) + 0.4 * rng.normal(size=(len(labels), args.dim)) / np.sqrt(args.dim)).astype(np.float32)
    results = {}
    for block in (512, 2048):
        start = time.perf_counter()
        results[block] = TailSampler(TailSamplerConfig(block_size=block)).predict(embeddings)
        print(f"N={len(labels)} D={args.dim} block={block}: {time.perf_counter() - start:.1f} s")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    same = np.array_equal(results[512].class_sizes, results[2048].class_sizes)
    full_matrix_mb = len(labels) ** 2 * 4 / 2**20
    print(f"peak RSS {peak_mb:.0f} MB (the full float32 similarity matrix alone would be {full_matrix_mb:.0f} MB); block sizes agree: {same}")
    truth = np.asarray(sizes)[labels]
    small = truth <= results[512].max_k
    predicted = results[512].is_tail
    print(f"classes {len(sizes)}, max_K {results[512].max_k}, tail precision {(predicted & small).sum() / max(1, predicted.sum()):.3f}, recall {(predicted & small).sum() / max(1, small.sum()):.3f}")


if __name__ == "__main__":
    main()
