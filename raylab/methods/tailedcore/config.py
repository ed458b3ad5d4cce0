"""Configurations of TailedCore and SoftPatch: the official defaults, and raylab's CPU size.

Defaults are the release's (jungyg/TailedCore ``configs/tailedcore_mvtec.yaml`` and
``src/sampler.py``): greedy coreset 10% on a 128-d projection, 1-NN, patchwise LOF with
k = 6 keeping 85%, TailSampler with the 15% trim and the 15% tail share, tail images
augmented by rotations every 15 degrees x horizontal flip (47 extra views each), maps
smoothed with a Gaussian of sigma 4. The release's coreset is the exact greedy k-center
(``GreedyCoresetSampler(brute=True)``: one random first centre), hence ``"exact"`` here;
the sweep gives its PatchCore baseline the same coreset so the three methods differ only
in what they put into memory. The features default to raylab's CPU backbone
(ImageNet EfficientNet-Lite0 stages 2 + 3); ``WIDE_RESNET50_PATCHCORE`` at 224 px is the
paper's embedder where its weights are available (``--profile full`` or ``--config tailedcore/full_wrn50``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raylab.config import require
from raylab.features.spec import FeatureSpec

TAIL_EMBEDDINGS = ("backbone_stage", "patch_mean")


@dataclass(frozen=True)
class PatchLOFConfig:
    n_neighbors: int = 6
    keep_fraction: float = 0.85
    projection_dim: int | None = 128
    tasks: int | None = None  # Ray tasks over position chunks; None: one per CPU when Ray runs, else local

    def __post_init__(self) -> None:
        require(self.n_neighbors >= 1, "n_neighbors", f"must be >= 1, got {self.n_neighbors}")
        require(0.0 < self.keep_fraction <= 1.0, "keep_fraction", f"must lie in (0, 1], got {self.keep_fraction}")
        require(self.tasks is None or self.tasks >= 1, "tasks", f"must be >= 1 or null, got {self.tasks}")


@dataclass(frozen=True)
class TailSamplerConfig:
    trim: float = 0.15  # share of the above-half-angle similarities trimmed from below
    tail_share: float = 0.15  # max_K: tail classes together hold at most this share of samples
    block_size: int = 1024
    device: str = "cpu"

    def __post_init__(self) -> None:
        require(0.0 <= self.trim < 1.0, "trim", f"must lie in [0, 1), got {self.trim}")
        require(0.0 < self.tail_share <= 1.0, "tail_share", f"must lie in (0, 1], got {self.tail_share}")
        require(self.block_size >= 1, "block_size", f"must be >= 1, got {self.block_size}")


@dataclass
class SoftPatchConfig:
    features: FeatureSpec = field(default_factory=FeatureSpec)
    lof: PatchLOFConfig = field(default_factory=PatchLOFConfig)
    coreset_ratio: float = 0.1
    coreset_method: Literal["exact", "approximate"] = "exact"
    coreset_projection_dim: int | None = 128
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        _check_memory(self.coreset_ratio, self.blur_sigma)


@dataclass
class TailedCoreConfig:
    features: FeatureSpec = field(default_factory=FeatureSpec)
    tail_sampler: TailSamplerConfig = field(default_factory=TailSamplerConfig)
    lof: PatchLOFConfig = field(default_factory=PatchLOFConfig)
    # The global embedding TailSampler reads. "backbone_stage" (the release): the output of
    # backbone stage ``embedding_stage``, average-pooled (the release taps WideResNet-50's
    # ``avgpool``, stage 4). "patch_mean": the mean of the image's memory patch features (the
    # stages the memory uses, after the neighbourhood aggregation). Why the second exists:
    # on longtail_mix's CPU features (EfficientNet-Lite0 at 112 px, a 4x4 last stage) a
    # synthetic defect moves the pooled last stage far enough that defect images form small
    # "classes" of their own, and TailSampler called ~45% of them tail (tail images skip the
    # LOF filter, so their defects became normal memory); on the mean of the memory's own
    # features it called none tail and found 7 of 8 true tail images (seeds 100-102,
    # benchmarks/tailsampler_variants.py). The default stays the release's; the CPU config
    # (configs/tailedcore/longtail_mix.yaml) chooses "patch_mean".
    tail_embedding: Literal["backbone_stage", "patch_mean"] = "backbone_stage"
    embedding_stage: int = 4  # read only with tail_embedding "backbone_stage"
    tail_rotation_step: int = 15  # degrees; 360 / step angles x (1 + hflip) views, minus the identity
    tail_hflip: bool = True
    coreset_ratio: float = 0.1  # for both the head and the tail memory
    coreset_method: Literal["exact", "approximate"] = "exact"
    coreset_projection_dim: int | None = 128
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        _check_memory(self.coreset_ratio, self.blur_sigma)
        require(
            0 < self.tail_rotation_step <= 360,
            "tail_rotation_step",
            f"must lie in (0, 360] degrees, got {self.tail_rotation_step}",
        )
        require(self.embedding_stage >= 0, "embedding_stage", f"must be >= 0, got {self.embedding_stage}")
        require(
            self.tail_embedding in TAIL_EMBEDDINGS,
            "tail_embedding",
            f"must be one of {TAIL_EMBEDDINGS}, got {self.tail_embedding!r}",
        )


def _check_memory(coreset_ratio: float, blur_sigma: float) -> None:
    require(0.0 < coreset_ratio <= 1.0, "coreset_ratio", f"must lie in (0, 1], got {coreset_ratio}")
    require(blur_sigma >= 0.0, "blur_sigma", f"must be >= 0, got {blur_sigma}")
