"""Typed configuration of CKD (consistent knowledge distillation, face -> periocular).

Official defaults (jungyg/periocular_CKD ``models/ckdnet.py``, ``helper/loops.py``,
``configs/ckd.yaml``) are the class defaults:

* network: IR-SE ResNet-18 (``[2, 2, 2, 2]``, widths 64-128-256-512), stem and stages 1-3
  shared between the face and periocular branches with BatchNorm statistics over both
  modalities, separate stage 4, ``BN -> FC -> BN`` 512-d embedding and classifier per branch;
* inputs: face 128x128, periocular 48x128, mean 0.5 / std 0.5, random horizontal flip of
  the pair;
* loss: ``CE(face) + CE(periocular) + tau^2 KL(p_face || p_peri) + tau^2 KL(p_peri || p_face)``
  with detached targets, tau = 2.5, KL batchmean;
* SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 16, 90 epochs, lr / 10 at epochs
  30 / 60 / 80 (expressed here as fractions 1/3, 2/3, 8/9 of the epochs, so a schedule
  scaled to a smaller dataset keeps its shape); best checkpoint by periocular top-1 on
  validation.

``configs/ckd/orl.yaml`` is the CPU-sized variant the ORL job uses by default: inputs at a
quarter of the official side (face 32x32, periocular 12x32, the same 3:8 band aspect), stage
widths at a quarter (16-32-64-128, embedding still 512-d), 30 epochs, lr 0.01 (lr 0.1 does
not train from scratch on ORL's 240 training images: measured, see the README), one fold.
The class defaults are the full-size official path (``configs/ckd/orl_full.yaml`` applies
them to ORL with all four folds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

VariantName = Literal["ckd", "per_modality_bn", "no_sharing", "f2p_only", "periocular_only"]


@dataclass(frozen=True)
class Variant:
    """The switches that make CKD or one of its ablations.

    ``share_trunk``: stem and stages 1-3 are one set of weights for both modalities (else two
    separate networks). ``joint_bn``: the shared layers' BatchNorm statistics are computed
    over the face and periocular maps together (else per modality). ``use_face``: train a
    face branch at all. ``f2p`` / ``p2f``: the face -> periocular and periocular -> face
    KL terms.
    """

    share_trunk: bool = True
    joint_bn: bool = True
    use_face: bool = True
    f2p: bool = True
    p2f: bool = True

    def __post_init__(self) -> None:
        if not self.use_face and (self.f2p or self.p2f or self.share_trunk):
            raise ValueError("without a face branch there is nothing to share or distil: set share_trunk, f2p, p2f False")
        if self.joint_bn and not self.share_trunk:
            raise ValueError("joint_bn needs share_trunk (separate networks have no common BatchNorm)")


VARIANTS: dict[str, Variant] = {
    "ckd": Variant(),
    "per_modality_bn": Variant(joint_bn=False),
    "no_sharing": Variant(share_trunk=False, joint_bn=False),
    "f2p_only": Variant(p2f=False),
    "periocular_only": Variant(share_trunk=False, joint_bn=False, use_face=False, f2p=False, p2f=False),
}


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown CKD variant {name!r}; known: {sorted(VARIANTS)}") from None


@dataclass(frozen=True)
class NetworkConfig:
    """IR-SE ResNet shape and input sizes (height, width)."""

    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    embedding_dim: int = 512
    se_reduction: int = 16
    face_size: tuple[int, int] = (128, 128)
    periocular_size: tuple[int, int] = (48, 128)

    def __post_init__(self) -> None:
        if len(self.layers) < 2 or len(self.layers) != len(self.widths):
            raise ValueError(f"need >= 2 stages with one width each, got layers={self.layers} widths={self.widths}")
        if min(self.widths) < 8:
            # Measured with torch 2.14 (CPU): oneDNN's strided 1x1 convolution backward
            # corrupts the heap (the process aborts) when a stage has fewer than 8 channels.
            raise ValueError(f"stage widths must be >= 8 (torch's CPU convolution backward crashes below), got {self.widths}")


@dataclass(frozen=True)
class PairConfig:
    """How a face image becomes a (face, periocular) pair.

    The periocular image is a fixed horizontal band of the *aligned* face image: rows
    ``band_rows`` (fractions of the image height), the full width. The face image is rows
    ``face_rows`` (full width). Defaults fit ORL (92x112, frontal and roughly centred: the
    eyes lie in rows ~30-60); for other aligned sets set them to where the eyes are.
    """

    face_rows: tuple[float, float] = (0.07, 0.89)
    band_rows: tuple[float, float] = (0.24, 0.56)
    mean: float = 0.5
    std: float = 0.5
    hflip: bool = True

    def __post_init__(self) -> None:
        for name in ("face_rows", "band_rows"):
            top, bottom = getattr(self, name)
            if not 0.0 <= top < bottom <= 1.0:
                raise ValueError(f"{name} must satisfy 0 <= top < bottom <= 1, got {(top, bottom)}")


@dataclass(frozen=True)
class TrainConfig:
    """SGD with step decay; ``milestones`` are fractions of ``epochs`` (official 30/60/80 of 90)."""

    epochs: int = 90
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (1 / 3, 2 / 3, 8 / 9)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    tau: float = 2.5
    num_workers: int = 2
    cpus_per_worker: float = 0.99
    threads_per_worker: int = 1
    checkpoints_to_keep: int = 1

    def milestone_epochs(self) -> tuple[int, ...]:
        return tuple(int(round(f * self.epochs)) for f in self.milestones)

    def lr_at(self, epoch: int, step_fraction: float = 0.0) -> float:
        """Step decay at the milestones, after a linear warm-up over ``warmup_epochs`` (0: none)."""
        progress = epoch + step_fraction
        if progress < self.warmup_epochs:
            return self.lr * (progress + 1e-3) / self.warmup_epochs
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestone_epochs())


@dataclass(frozen=True)
class ProtocolConfig:
    """Identity-disjoint folds; validation images of training identities; gallery/probe draws.

    ``val_per_identity`` images of every training identity are held out for the periocular
    validation accuracy that picks the best checkpoint. On the test identities, the rank-1
    is averaged over ``gallery_draws`` seeded draws of ``gallery_per_identity`` gallery
    images per identity (the rest are probes); verification uses all test images.
    """

    n_folds: int = 4
    folds: tuple[int, ...] = (0, 1, 2, 3)
    split_seed: int = 0
    val_per_identity: int = 2
    gallery_per_identity: int = 1
    gallery_draws: int = 10
    max_rank: int = 5


@dataclass(frozen=True)
class CKDConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class QuickConfig:
    """What ``--quick`` shrinks: epochs, folds and methods."""

    epochs: int = 4
    folds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = ("ckd", "periocular_only")


@dataclass(frozen=True)
class CKDJobConfig:
    """The ``ckd_train`` job: CKD and its ablations on identity-disjoint folds x seeds."""

    ckd: CKDConfig = field(default_factory=CKDConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    methods: tuple[str, ...] = ("ckd", "periocular_only", "per_modality_bn", "no_sharing", "f2p_only")
    seeds: tuple[int, ...] = (0,)
    max_concurrent: int = 2
    quick: QuickConfig = field(default_factory=QuickConfig)

    def __post_init__(self) -> None:
        for name in self.methods:
            variant(name)


def with_epochs(config: CKDConfig, epochs: int) -> CKDConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
