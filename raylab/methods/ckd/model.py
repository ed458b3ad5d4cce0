"""CKD's two-branch network (and its ablations) as a plain ``nn.Module``.

Built from :mod:`raylab.nets.irse` blocks. With ``share_trunk`` the stem and stages 1-3
are one set of weights run on ``[face, periocular]`` streams; their BatchNorm normalises
with statistics over both modalities (``joint_bn``, CKD's feature-level consistency) or per
modality (the same module applied to each in turn, as the official ablation does). Each
branch then has its own stage 4, ``BN -> FC -> BN`` embedding head and linear classifier.
Without ``share_trunk`` the two branches are separate networks (the "nothing shared"
ablation); without a face branch it is a periocular network alone.

Only the periocular embedding is used at test time (:class:`PeriocularEncoder`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from raylab.methods.ckd.config import NetworkConfig, Variant
from raylab.nets.irse import EmbeddingHead, IRSEStem, init_face_weights, make_stage, stage_output_size


class CKDOutputs(NamedTuple):
    face_embedding: Tensor | None
    periocular_embedding: Tensor
    face_logits: Tensor | None
    periocular_logits: Tensor


def _trunk(config: NetworkConfig, joint_bn: bool) -> nn.Sequential:
    """Stem and all stages but the last, on streams."""
    layers: list[nn.Module] = [IRSEStem(3, config.widths[0], joint_bn=joint_bn)]
    channels = config.widths[0]
    for blocks, width in zip(config.layers[:-1], config.widths[:-1], strict=True):
        layers.append(make_stage(channels, width, blocks, joint_bn=joint_bn, se_reduction=config.se_reduction))
        channels = width
    return nn.Sequential(*layers)


class Branch(nn.Module):
    """A modality's own last stage, embedding head and classifier."""

    def __init__(self, config: NetworkConfig, input_size: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        stages = len(config.layers)
        self.stage = make_stage(
            config.widths[-2], config.widths[-1], config.layers[-1], se_reduction=config.se_reduction
        )
        map_size = (stage_output_size(input_size[0], stages), stage_output_size(input_size[1], stages))
        self.head = EmbeddingHead(config.widths[-1], map_size, config.embedding_dim)
        self.classifier = nn.Linear(config.embedding_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.head(self.stage([x])[0])


class CKDNet(nn.Module):
    """``forward(face, periocular) -> CKDOutputs``; ``face`` is ``None`` for periocular-only."""

    def __init__(self, config: NetworkConfig, num_classes: int, variant: Variant) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"CKD needs at least 2 training identities, got {num_classes}")
        self.variant = variant
        self.trunk: nn.Sequential | None = None
        self.face_trunk: nn.Sequential | None = None
        self.periocular_trunk: nn.Sequential | None = None
        if variant.share_trunk:
            self.trunk = _trunk(config, variant.joint_bn)
        else:
            self.periocular_trunk = _trunk(config, joint_bn=False)
            if variant.use_face:
                self.face_trunk = _trunk(config, joint_bn=False)
        self.face = Branch(config, config.face_size, num_classes) if variant.use_face else None
        self.periocular = Branch(config, config.periocular_size, num_classes)
        init_face_weights(self)

    def trunk_maps(self, face: Tensor | None, periocular: Tensor) -> tuple[Tensor | None, Tensor]:
        if self.trunk is not None:
            if face is None:
                return None, self.trunk([periocular])[0]
            face_map, periocular_map = self.trunk([face, periocular])
            return face_map, periocular_map
        assert self.periocular_trunk is not None
        face_map = self.face_trunk([face])[0] if face is not None and self.face_trunk is not None else None
        return face_map, self.periocular_trunk([periocular])[0]

    def forward(self, face: Tensor | None, periocular: Tensor) -> CKDOutputs:
        if face is not None and self.face is None:
            raise ValueError("this network has no face branch (periocular-only variant); pass face=None")
        if face is None and self.face is not None:
            raise ValueError("this network trains a face branch: pass the face batch")
        face_map, periocular_map = self.trunk_maps(face, periocular)
        periocular_embedding = self.periocular.head(self.periocular.stage([periocular_map])[0])
        periocular_logits = self.periocular.classifier(periocular_embedding)
        if face_map is None or self.face is None:
            return CKDOutputs(None, periocular_embedding, None, periocular_logits)
        face_embedding = self.face.head(self.face.stage([face_map])[0])
        return CKDOutputs(face_embedding, periocular_embedding, self.face.classifier(face_embedding), periocular_logits)

    def periocular_embedding(self, periocular: Tensor) -> Tensor:
        """The periocular embedding alone (the test-time path; in eval mode no face is needed)."""
        return self.periocular.embed(self.trunk_maps(None, periocular)[1])


class PeriocularEncoder(nn.Module):
    """The deployable part of a trained :class:`CKDNet`: periocular images -> embeddings.

    Holds the (shared or periocular) trunk and the periocular stage and head only; the face
    branch and the classifiers are training-time scaffolding.
    """

    def __init__(self, net: CKDNet) -> None:
        super().__init__()
        trunk = net.trunk if net.trunk is not None else net.periocular_trunk
        assert trunk is not None
        self.trunk = trunk
        self.stage = net.periocular.stage
        self.head = net.periocular.head

    def forward(self, periocular: Tensor) -> Tensor:
        return self.head(self.stage(self.trunk([periocular]))[0])


def build_ckd_net(config: NetworkConfig, num_classes: int, variant: Variant, seed: int | None = None) -> CKDNet:
    """A freshly initialised network (``seed`` makes the initial weights reproducible)."""
    if seed is None:
        return CKDNet(config, num_classes, variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CKDNet(config, num_classes, variant)
