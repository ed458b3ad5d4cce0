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
from raylab.features.backbones import FeatureSpec
from raylab.methods.tailedcore.lof import PatchLOFConfig
from raylab.methods.tailedcore.tail_sampler import TailSamplerConfig


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
    # The global embedding TailSampler reads: the backbone's last stage, average-pooled
    # (the release taps WideResNet-50's ``avgpool``).
    embedding_stage: int = 4
    tail_rotation_step: int = 15  # degrees; 360 / step angles x (1 + hflip) views, minus the identity
    tail_hflip: bool = True
    coreset_ratio: float = 0.1  # for both the head and the tail memory
    coreset_method: Literal["exact", "approximate"] = "exact"
    coreset_projection_dim: int | None = 128
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        _check_memory(self.coreset_ratio, self.blur_sigma)
        require(0 < self.tail_rotation_step <= 360, "tail_rotation_step", f"must lie in (0, 360] degrees, got {self.tail_rotation_step}")
        require(self.embedding_stage >= 0, "embedding_stage", f"must be >= 0, got {self.embedding_stage}")


def _check_memory(coreset_ratio: float, blur_sigma: float) -> None:
    require(0.0 < coreset_ratio <= 1.0, "coreset_ratio", f"must lie in (0, 1], got {coreset_ratio}")
    require(blur_sigma >= 0.0, "blur_sigma", f"must be >= 0, got {blur_sigma}")
