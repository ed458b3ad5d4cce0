"""TailedCore (Jung et al., "TailedCore: Few-Shot Sampling for Unsupervised Long-Tail Noisy
Anomaly Detection", CVPR 2025).

One memory for all classes, built from an unlabelled, long-tailed and noisy training set:

* **tail memory**: TailSampler predicts which images belong to rare classes (from global
  embeddings, :mod:`raylab.methods.tailedcore.tail_sampler`: the release's pooled last
  backbone stage, or with ``tail_embedding="patch_mean"`` the mean of the memory's patch
  features, see :func:`tail_sampler_input`); all patches of those images
  plus the patches of their augmented views (rotations every 15 degrees x horizontal flip,
  :mod:`raylab.methods.tailedcore.views`) -> greedy coreset (10%). Rare classes are thus
  kept whole instead of being filtered out as outliers, and their few images are made to
  cover the orientations a test image may have.
* **head memory**: patchwise LOF over *all* training images (k = 6, keep the 85% lowest,
  the SoftPatch filter that removes injected defects) -> greedy coreset (10%).
* memory = the union; a test patch scores its squared L2 distance to the nearest memory
  patch (faiss flat), image score = largest patch score, map = upsampled patch grid +
  Gaussian blur (sigma 4). No soft weights (those are SoftPatch's).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raylab.features import FeatureSpec
from raylab.memory import MemoryBank
from raylab.methods.tailedcore.config import TailedCoreConfig
from raylab.methods.tailedcore.lof import lof_keep_mask, patchwise_lof_scores
from raylab.methods.tailedcore.softpatch import coreset_rows, flat_patches
from raylab.methods.tailedcore.tail_sampler import TailPrediction, TailSampler
from raylab.tasks.anomaly.detectors import register_detector
from raylab.tasks.anomaly.memory_detector import MemoryBankDetector

if TYPE_CHECKING:
    import torch

# Given training-image indices, each image's augmented-view patch grids, (V, h, w, D), in
# order, one image at a time. Read twice (to project, then to gather the selected rows), so
# it must give the same arrays both times (RotationFlipViews reads them from its cache).
ViewSource = Callable[[np.ndarray], Iterable[np.ndarray]]


# Built for patches alone, TailSampler reads each image's mean patch feature: the default,
# the backbone stage's pooled embedding, is an input only the experiment extracts.
@register_detector(
    "tailedcore",
    build=lambda seed, image_size: TailedCore(
        TailedCoreConfig(features=FeatureSpec(image_size=image_size), tail_embedding="patch_mean"), seed=seed
    ),
)
class TailedCore(MemoryBankDetector):
    def __init__(self, config: TailedCoreConfig | None = None, seed: int = 0) -> None:
        self.config = config or TailedCoreConfig()
        self.seed = seed
        self.bank: MemoryBank | None = None
        self.tail: TailPrediction | None = None
        self.head_kept: np.ndarray | None = None  # (N, h, w) patches that passed the LOF filter
        self.memory_sizes: dict[str, int] = {}

    def fit(
        self,
        train_patches: np.ndarray,
        embeddings: np.ndarray | None = None,
        views: ViewSource | None = None,
        known_tail: np.ndarray | None = None,
    ) -> TailedCore:
        """Build the pooled memory.

        Args:
            train_patches: (N, h, w, D) patch embeddings of all training images, all classes.
            embeddings: (N, E) pooled backbone-stage embeddings of the same images, TailSampler's
                input with ``tail_embedding="backbone_stage"`` (unused, may be None, with
                ``"patch_mean"``: TailSampler then reads the mean of ``train_patches``).
            views: augmented-view patches of given images; ``None`` disables augmentation.
            known_tail: (N,) bool, the true tail images, bypassing TailSampler: an ablation
                that measures what TailSampler's errors cost, never part of the method.
        """
        train_patches = np.asarray(train_patches)
        self.tail = predict_tail(self.config, train_patches, embeddings)
        if known_tail is not None:
            self.tail.is_tail = np.asarray(known_tail, dtype=bool).copy()
        tail_indices = self.tail.tail_indices

        scores = patchwise_lof_scores(train_patches, self.config.lof, seed=self.seed)
        self.head_kept = lof_keep_mask(scores, self.config.lof.keep_fraction)
        head = flat_patches(train_patches)[self.head_kept.reshape(-1)]
        head_memory = head[coreset_rows(head, self.config, self.seed)]
        self.memory_sizes = {"head_candidates": len(head), "head": len(head_memory), "tail_images": len(tail_indices)}
        del head  # the head candidates are the largest array here after the training patches

        parts = [head_memory]
        if len(tail_indices):

            def tail_chunks() -> Iterator[np.ndarray]:
                yield train_patches[tail_indices]
                if views is not None:
                    yield from views(tail_indices)

            view_chunks = 0 if views is None else len(tail_indices)
            tail_memory, candidates = tail_coreset(tail_chunks, self.config, self.seed, view_chunks)
            parts.insert(0, tail_memory)
            self.memory_sizes.update({"tail_candidates": candidates, "tail": len(tail_memory)})
        memory = np.concatenate(parts)
        del parts
        self.bank = MemoryBank(memory.shape[1], metric="l2")
        self.bank.add(memory)
        return self

    def patch_scores(self, patches: np.ndarray) -> np.ndarray:
        distances, _ = self.nearest(patches)
        return distances[:, 0].reshape(patches.shape[:3])

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.bank is None or self.tail is None:
            raise RuntimeError("fit before saving")
        self.bank.save(directory / "memory_bank")
        np.save(directory / "tail_mask.npy", self.tail.is_tail)
        np.save(directory / "predicted_class_sizes.npy", self.tail.class_sizes)
        summary = {
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "memory_sizes": self.memory_sizes,
            "tail_max_k": self.tail.max_k,
            "class_partition": self.tail.class_partition.tolist(),
        }
        (directory / "tailedcore.json").write_text(json.dumps(summary, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TailedCore:
        """Read a detector written by :meth:`save`: it scores exactly as the saved one did. The
        tail prediction is not restored (scoring needs only the memory); it stays in the
        folder's ``tail_mask.npy`` and ``predicted_class_sizes.npy`` for inspection."""
        from raylab.config import from_mapping

        directory = Path(directory)
        saved = json.loads((directory / "tailedcore.json").read_text())
        model = cls(
            from_mapping(TailedCoreConfig, saved["config"], where=str(directory / "tailedcore.json")),
            seed=saved["seed"],
        )
        model.bank = MemoryBank.load(directory / "memory_bank")
        model.memory_sizes = dict(saved["memory_sizes"])
        return model


def tail_sampler_input(
    config: TailedCoreConfig, train_patches: np.ndarray, embeddings: np.ndarray | None
) -> np.ndarray:
    """The (N, E) global embeddings TailSampler reads under ``config.tail_embedding``.

    ``"patch_mean"`` averages each image's memory patch features over the grid: the class
    evidence of every position, in which a defect covering a few patches is a small share
    (see :class:`~raylab.methods.tailedcore.config.TailedCoreConfig` for why it exists).
    """
    if config.tail_embedding == "patch_mean":
        return np.asarray(train_patches, dtype=np.float32).mean(axis=(1, 2))
    if embeddings is None:
        raise ValueError('tail_embedding "backbone_stage" needs the pooled backbone-stage embeddings; none were given')
    if len(train_patches) != len(embeddings):
        raise ValueError(f"{len(train_patches)} patch grids but {len(embeddings)} global embeddings")
    return np.asarray(embeddings)


def predict_tail(config: TailedCoreConfig, train_patches: np.ndarray, embeddings: np.ndarray | None) -> TailPrediction:
    """TailSampler's prediction on the embedding the config names: the one place TailedCore and
    the sweep's ``tailsampler`` row both take it from, so the row measures what TailedCore used."""
    return TailSampler(config.tail_sampler).predict(tail_sampler_input(config, train_patches, embeddings))


def tail_coreset(
    chunks: Callable[[], Iterable[np.ndarray]], config: TailedCoreConfig, seed: int, view_chunks: int = 0
) -> tuple[np.ndarray, int]:
    """The greedy coreset of the tail candidates, read as a stream of patch-grid chunks.

    ``chunks()`` yields ``(m, h, w, D)`` arrays: the tail images, then ``view_chunks`` of
    equal size (one per image, its views); it is called twice. The paper-size tail
    candidates are ~9 GB (60 tail images x 48 grids x 784 patches x 1024 dims), and the
    exact greedy coreset only ever reads their 128-d random projection (1.1 GB). So the
    first pass projects each chunk as it arrives into a preallocated array, the selection
    runs on that, and the second pass copies out just the selected rows: the full
    candidates are never in memory at once. The projection
    matrix and the first centre come from the same seeded draws, in the same order, as
    :func:`raylab.memory.coreset.greedy_coreset`, so the selection is the one it makes on
    the concatenated candidates (up to float rounding of the chunked matrix product).

    Without a projection, or with the approximate coreset, the candidates are selected in
    memory by ``greedy_coreset`` itself (those variants read more than the projection).

    Returns ``(selected rows (k, D) float32, number of candidates)``.
    """
    import torch

    from raylab.memory.coreset import kcenter_greedy

    dim = config.coreset_projection_dim
    first_chunk = next(iter(chunks()))
    full_dim = first_chunk.shape[-1]
    if config.coreset_method != "exact" or dim is None or dim >= full_dim:
        flat = np.concatenate([flat_patches(chunk) for chunk in chunks()])
        return flat[coreset_rows(flat, config, seed)], len(flat)

    rng = np.random.default_rng(seed)
    matrix = torch.as_tensor(rng.standard_normal((full_dim, dim)) / math.sqrt(dim), dtype=torch.float32)
    projected = _project_chunks(chunks(), matrix, view_chunks)
    count = len(projected)
    projected.sub_(projected.mean(dim=0, dtype=torch.float64).to(projected.dtype))  # centring: see greedy_coreset
    rows = np.sort(kcenter_greedy(projected, max(1, int(count * config.coreset_ratio)), int(rng.integers(count))))
    del projected

    selected = np.empty((len(rows), full_dim), dtype=np.float32)
    offset, filled = 0, 0
    for chunk in chunks():
        flat = np.asarray(chunk, dtype=np.float32).reshape(-1, full_dim)
        start, stop = np.searchsorted(rows, [offset, offset + len(flat)])
        selected[filled : filled + stop - start] = flat[rows[start:stop] - offset]
        filled += stop - start
        offset += len(flat)
    if offset != count:
        raise RuntimeError(f"the tail candidates changed between reads: {count} rows, then {offset}")
    return selected, count


def _project_chunks(chunks: Iterable[np.ndarray], matrix: torch.Tensor, view_chunks: int) -> torch.Tensor:
    """``concatenate(chunks) @ matrix`` without the concatenation, into one preallocated array.

    The first chunk is the tail images themselves; the ``view_chunks`` that follow are one
    image's views each, all of one size, so the first of them sizes the whole array.
    """
    import torch

    iterator = iter(chunks)
    first = torch.from_numpy(flat_patches(next(iterator))) @ matrix
    if view_chunks == 0:
        return first
    out: torch.Tensor | None = None
    position, seen = len(first), 0
    for chunk in iterator:
        # One image's views, copied out of the (read-only) cache map: 154 MB at the paper's size.
        flat = torch.from_numpy(np.array(chunk, dtype=np.float32).reshape(-1, matrix.shape[0]))
        if out is None:
            out = torch.empty((len(first) + view_chunks * len(flat), matrix.shape[1]), dtype=torch.float32)
            out[: len(first)] = first
            del first
        if position + len(flat) > len(out):
            raise RuntimeError(f"expected {view_chunks} view chunks of {len(flat)} rows each, got more rows")
        torch.matmul(flat, matrix, out=out[position : position + len(flat)])
        position, seen = position + len(flat), seen + 1
    if out is None or seen != view_chunks or position != len(out):
        raise RuntimeError(f"expected {view_chunks} view chunks of equal size, got {seen}")
    return out
