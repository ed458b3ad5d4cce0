"""TailSampler: which training images belong to rare (tail) classes, without class labels.

TailedCore (Jung et al., CVPR 2025) pools the images of all product classes into one
training set and must protect the few images of rare classes, which a noise filter would
otherwise discard as outliers. TailSampler predicts every image's class size from the
global embeddings alone, under the paper's "symmetric" assumption (a class is a cap of
directions around its centre):

1. ``S`` = cosine self-similarity of the N global embeddings.
2. Per row ``i``: ``t_half = cos(arccos(min_j S_ij) / 2)`` (the intra-class radius is half
   the widest angle seen from ``i``); ``th_i`` = the 15% trim point of the row's values
   above ``t_half``: with ``m`` such values, the ``floor(0.85 m)``-th largest (the smallest
   of them when that floor is 0).
3. ``M_ij = [S_ij >= th_i]``, ``c_i = sum_j M_ij``; the class size of sample ``j`` is the
   mode of ``c_i`` over the rows ``i`` with ``M_ij = 1`` (the smallest value on ties).
4. The sizes, sorted ascending, are partitioned greedily into estimated classes (take the
   ``s`` smallest where ``s`` is the smallest size, call them one class of their rounded
   mean size, repeat; a remainder shorter than its smallest size joins the last class).
   ``max_K = min(elbow of the class-size curve, the largest class size K such that the
   classes of size <= K hold <= 15% of the samples)``; samples whose predicted size is
   <= ``max_K`` are *tail*.

This follows the spec and the release (``AdaptiveTailSampler(th_type="trim_min",
vote_type="mode")``) with one difference: the release quantises each row's similarities to
multiples of 1/N before taking the trim point (its ``_sort``), which moves ``th_i`` down by
less than 1/N; raylab uses the similarities as they are.

Scale: ``S`` is never held whole. Rows are processed in blocks of ``block_size`` (one
``block x N`` matrix product each, on the configured torch device); the mode vote is
accumulated as a per-column histogram over the distinct values of ``c`` (``N x U``
integers, U = number of distinct row counts), recomputing each row block exactly as in
the first pass so that thresholds and memberships agree bit for bit. Memory is
O(block x N + N x U); tens of thousands of images fit a laptop.

Degenerate inputs: a single image is one class of size 1 (tail). When all similarities of a
row are equal up to rounding (identical images), nothing lies strictly above ``t_half``:
the row then counts every sample, so N identical images form one class of size N. With a
single predicted class, ``max_K`` equals its size and every image is tail: the rule has
nothing to compare against, and TailedCore then keeps all images (and their augmented
views) in its tail memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raylab.methods.tailedcore.config import TailSamplerConfig  # defined there: typed configs import it without torch


@dataclass
class TailPrediction:
    class_sizes: np.ndarray  # (N,) predicted size of each sample's class (mode vote)
    row_counts: np.ndarray  # (N,) c_i
    thresholds: np.ndarray  # (N,) th_i
    class_partition: np.ndarray  # estimated class sizes, descending
    elbow_k: int
    share_k: int
    max_k: int
    is_tail: np.ndarray  # (N,) bool

    @property
    def tail_indices(self) -> np.ndarray:
        return np.flatnonzero(self.is_tail)


class TailSampler:
    def __init__(self, config: TailSamplerConfig | None = None) -> None:
        self.config = config or TailSamplerConfig()
        if not 0 <= self.config.trim < 1 or not 0 < self.config.tail_share <= 1:
            raise ValueError(f"trim must be in [0, 1) and tail_share in (0, 1], got {self.config}")

    def predict(self, embeddings: np.ndarray) -> TailPrediction:
        """``embeddings``: (N, D) global embeddings of the training images."""
        x = _normalised(embeddings, self.config.device)
        thresholds, counts = row_thresholds_and_counts(x, self.config.trim, self.config.block_size)
        sizes = vote_class_sizes(x, thresholds, counts, self.config.block_size)
        partition = partition_class_sizes(sizes)
        elbow_k = elbow_value(partition)
        share_k = largest_k_within_share(partition, self.config.tail_share)
        max_k = min(elbow_k, share_k)
        return TailPrediction(
            class_sizes=sizes,
            row_counts=counts.cpu().numpy(),
            thresholds=thresholds.cpu().numpy(),
            class_partition=partition,
            elbow_k=elbow_k,
            share_k=share_k,
            max_k=max_k,
            is_tail=sizes <= max_k,
        )


def _normalised(embeddings: np.ndarray, device: str) -> torch.Tensor:
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"TailSampler needs a non-empty (N, D) matrix of global embeddings, got shape {array.shape}")
    x = torch.as_tensor(array, dtype=torch.float32, device=device)
    if not torch.isfinite(x).all():
        raise ValueError("global embeddings contain NaN or infinite values")
    norms = x.norm(dim=1)
    if (norms == 0).any():
        raise ValueError(
            f"global embeddings of samples {torch.nonzero(norms == 0).flatten().tolist()[:10]} are all zero: "
            "no direction to compare"
        )
    return x / norms[:, None]


def _similarity_rows(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of S, computed the same way in every pass (bitwise-equal values)."""
    return (x[start:stop] @ x.T).clamp_(-1.0, 1.0)


def row_thresholds_and_counts(x: torch.Tensor, trim: float, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3: ``th_i`` and ``c_i`` for every row, one block of rows at a time."""
    n = x.shape[0]
    thresholds = torch.empty(n, dtype=x.dtype, device=x.device)
    counts = torch.empty(n, dtype=torch.int64, device=x.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sims = _similarity_rows(x, start, stop)
        widest = sims.min(dim=1).values
        half = torch.cos(torch.arccos(widest.double()) / 2).to(sims.dtype)
        above = (sims > half[:, None]).sum(dim=1)
        keep = torch.floor(above.double() * (1.0 - trim)).long()
        rank = torch.where(keep > 0, keep, above)  # the rank-th largest value (1-based)
        ordered = sims.sort(dim=1, descending=True).values
        picked = ordered.gather(1, (rank - 1).clamp(min=0)[:, None])[:, 0]
        threshold = torch.where(above > 0, picked, widest)  # nothing above t_half: count everything
        thresholds[start:stop] = threshold
        counts[start:stop] = (sims >= threshold[:, None]).sum(dim=1)
    return thresholds, counts


_VOTE_ROWS = 128


def vote_class_sizes(x: torch.Tensor, thresholds: torch.Tensor, counts: torch.Tensor, block_size: int) -> np.ndarray:
    """Step 3's vote: per column j, the mode of c_i over rows i with S_ij >= th_i."""
    n = x.shape[0]
    values, ranks = torch.unique(counts, sorted=True, return_inverse=True)
    width = len(values)
    histogram = torch.zeros(n * width, dtype=torch.int64, device=x.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        members = _similarity_rows(x, start, stop) >= thresholds[start:stop, None]
        for first in range(0, stop - start, _VOTE_ROWS):  # bounds the (row, column) index pairs held at once
            rows, columns = torch.nonzero(members[first : first + _VOTE_ROWS], as_tuple=True)
            keys = columns * width + ranks[start + first : stop][rows]
            histogram.index_add_(0, keys, torch.ones_like(keys))
    modes = histogram.view(n, width).argmax(dim=1)  # first maximum = smallest value on ties
    return values[modes].cpu().numpy().astype(np.int64)


def partition_class_sizes(sizes: np.ndarray) -> np.ndarray:
    """Step 4: greedy partition of the per-sample sizes into estimated classes (descending)."""
    remaining = np.maximum(np.sort(np.rint(np.asarray(sizes, dtype=np.float64)).astype(np.int64)), 1)
    classes: list[int] = []
    while len(remaining) > 0:
        smallest = int(remaining[0])
        if len(remaining) < smallest and classes:
            classes[-1] += len(remaining)
            break
        size = min(int(np.round(remaining[:smallest].mean())), len(remaining))
        classes.append(size)
        remaining = remaining[size:]
    return np.sort(np.asarray(classes, dtype=np.int64))[::-1]


def elbow_value(values: np.ndarray) -> int:
    """The value at the elbow of the descending curve: farthest from the first-to-last chord."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    points = np.stack([np.arange(len(ordered), dtype=np.float64), ordered], axis=1)
    chord = points[-1] - points[0]
    length = float(np.hypot(*chord))
    if length == 0.0:
        return int(ordered[0])
    offsets = points - points[0]
    distances = np.abs(offsets[:, 0] * chord[1] - offsets[:, 1] * chord[0]) / length
    return int(ordered[int(distances.argmax())])


def largest_k_within_share(class_sizes: np.ndarray, share: float) -> int:
    """The largest class size K whose classes of size <= K hold at most ``share`` of all samples.

    As in the release: with the smallest classes' cumulative count first exceeding
    ``int(share x total)`` after k classes, K is the size of the k-th smallest class (the
    smallest class when even it exceeds the budget).
    """
    descending = np.sort(np.asarray(class_sizes, dtype=np.int64))[::-1]
    budget = int(descending.sum() * share)
    cumulative = np.cumsum(descending[::-1])
    within = int(np.argmax(cumulative > budget)) if (cumulative > budget).any() else len(cumulative)
    index = min(len(descending) - within, len(descending) - 1)
    return int(descending[index])
