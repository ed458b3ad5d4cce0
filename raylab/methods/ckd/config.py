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

:func:`cpu_config` (the job's ``cpu`` profile, its default; ``raylab/configs/ckd/orl.yaml``
spells it out for ORL) is the CPU-sized variant: inputs at a quarter of the official side
(face 32x32, periocular 12x32, the same 3:8 band aspect), stage widths at a quarter
(16-32-64-128, embedding still 512-d), 30 epochs, lr 0.01 (lr 0.1 does not train from scratch
on ORL's 240 training images: measured, see raylab/methods/ckd/README.md), one Train worker, one fold. The
class defaults are the full-size official path (the ``full`` profile;
``raylab/configs/ckd/orl_full.yaml`` applies them to ORL with all four folds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from raylab.config import require

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
            raise ValueError(
                "without a face branch there is nothing to share or distil: set share_trunk, f2p, p2f False"
            )
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
        require(
            len(self.layers) >= 2 and len(self.layers) == len(self.widths),
            "layers",
            f"need >= 2 stages with one width each, got layers={self.layers} widths={self.widths}",
        )
        require(min(self.layers) >= 1, "layers", f"every stage needs >= 1 block, got {self.layers}")
        # Measured with torch 2.14 (CPU): oneDNN's strided 1x1 convolution backward
        # corrupts the heap (the process aborts) when a stage has fewer than 8 channels.
        require(
            min(self.widths) >= 8,
            "widths",
            f"stage widths must be >= 8 (torch's CPU convolution backward crashes below), got {self.widths}",
        )
        require(
            self.embedding_dim >= 1 and self.se_reduction >= 1,
            "embedding_dim",
            f"embedding_dim and se_reduction must be >= 1, got {self.embedding_dim}, {self.se_reduction}",
        )
        for key in ("face_size", "periocular_size"):
            require(min(getattr(self, key)) >= 1, key, f"must be (height, width) >= 1, got {getattr(self, key)}")


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
            require(0.0 <= top < bottom <= 1.0, name, f"must satisfy 0 <= top < bottom <= 1, got {(top, bottom)}")
        require(self.std > 0, "std", f"must be > 0, got {self.std}")


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
    # Optimizer steps per epoch; None = every full batch of the fit pairs (the protocol). A
    # budget key: ``--smoke`` caps it to prove a full-size run end to end in seconds.
    steps: int | None = None

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "num_workers", "threads_per_worker", "checkpoints_to_keep"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.steps is None or self.steps >= 1, "steps", f"must be >= 1 or null (every batch), got {self.steps}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, "momentum", f"must lie in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(
            all(0 < f <= 1 for f in self.milestones),
            "milestones",
            f"must be fractions of the epochs in (0, 1], got {self.milestones}",
        )
        require(0 < self.gamma <= 1, "gamma", f"must lie in (0, 1], got {self.gamma}")
        require(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        require(self.tau > 0, "tau", f"must be > 0, got {self.tau}")
        require(self.cpus_per_worker > 0, "cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")

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

    def __post_init__(self) -> None:
        require(self.n_folds >= 2, "n_folds", f"must be >= 2 (identity-disjoint folds), got {self.n_folds}")
        bad = [f for f in self.folds if not 0 <= f < self.n_folds]
        require(bool(self.folds) and not bad, "folds", f"must be fold indices in [0, {self.n_folds}), got {self.folds}")
        for key in ("val_per_identity", "gallery_per_identity", "gallery_draws", "max_rank"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


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

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(bool(self.folds), "folds", "must list at least one fold")
        _require_methods(self.methods, "methods")


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
        _require_methods(self.methods, "methods")
        require(len(self.seeds) >= 1, "seeds", "must list at least one seed")
        require(self.max_concurrent >= 1, "max_concurrent", f"must be >= 1, got {self.max_concurrent}")
        bad = [f for f in self.quick.folds if not 0 <= f < self.protocol.n_folds]
        require(not bad, "quick.folds", f"must be fold indices in [0, {self.protocol.n_folds}), got {self.quick.folds}")


def _require_methods(methods: tuple[str, ...], key: str) -> None:
    unknown = sorted(set(methods) - set(VARIANTS))
    require(bool(methods) and not unknown, key, f"unknown {unknown} or none given; known: {sorted(VARIANTS)}")


def cpu_config() -> CKDJobConfig:
    """The ``cpu`` profile (2 shared cores; ``raylab/configs/ckd/orl.yaml`` spells out the same sizes).

    Reductions from the official sizes: inputs at a quarter of the side (face 32x32,
    periocular 12x32), stage widths at a quarter (16-32-64-128, the 512-d embedding kept), 30
    epochs instead of 90 (same milestone fractions), lr 0.01 instead of 0.1, one Train worker
    per trial (two trials side by side), fold 0 only.
    """
    return CKDJobConfig(
        ckd=CKDConfig(
            network=NetworkConfig(widths=(16, 32, 64, 128), face_size=(32, 32), periocular_size=(12, 32)),
            train=TrainConfig(epochs=30, lr=0.01, batch_size=16, num_workers=1),
        ),
        protocol=ProtocolConfig(folds=(0,)),
    )


def with_epochs(config: CKDConfig, epochs: int) -> CKDConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
