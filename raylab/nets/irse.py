"""IR-SE ResNets: pre-activation residual blocks with squeeze-and-excitation, for faces.

The face-recognition ResNet family of ArcFace/insightface ("improved residual", IR) and
the backbone of CKD (jungyg/periocular_CKD, ``models/blocks.py``): each block is
``BN -> act -> conv3x3 -> BN -> act -> conv3x3(stride) -> SE`` plus a shortcut
(``conv1x1(stride) -> BN`` where the shape changes), the network is a 3x3 stem
(``conv -> BN -> act``, stride 1) and four stages that each halve the resolution, and the
embedding head is ``BN2d -> flatten -> FC -> BN1d`` (no global pooling: face crops are
aligned, so where a feature is matters).  IR-SE ResNet-18 is ``layers=(2, 2, 2, 2)`` with
widths ``(64, 128, 256, 512)``; a 128x128 face ends as an 8x8 map, a 48x128 eye band as 3x8,
a 112x112 face as 7x7.

Every block works on *streams*: a list of image batches of possibly different sizes (a face
batch and a periocular batch) that go through the same weights.  This is what lets CKD share
the early layers between its two branches, and in particular its BatchNorm:
:class:`StreamBatchNorm2d` either computes its statistics over all streams jointly (every
pixel of the face maps and of the periocular maps of the batch, as if concatenated; CKD's
"shared BN") or per stream (the same module applied to each stream in turn, CKD's
"per-modality BN" ablation).  With a single stream both are plain ``BatchNorm2d``, so
:class:`IRSEResNet` is also an ordinary standalone face encoder, ``forward(x) -> (n, 512)``.
The state-dict names are those of plain modules (``layer1.0.bn1.weight``...), nothing here
depends on Ray or on training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Streams = list[Tensor]
Activation = Literal["relu", "prelu"]


def stage_output_size(size: int, num_stages: int) -> int:
    """Spatial size after ``num_stages`` stride-2 stages (3x3 pad 1 and 1x1 pad 0: ceil(size/2))."""
    for _ in range(num_stages):
        size = (size - 1) // 2 + 1
    return size


class StreamBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over one or more streams of ``(n_i, C, h_i, w_i)`` maps.

    ``joint=True``: the batch statistics (and the running averages they update) are taken
    over every position of every stream together, so two modalities are normalised into one
    common feature distribution.  ``joint=False``: each stream is normalised with its own
    batch statistics (weights and running averages are still this one module's).
    """

    def __init__(self, num_features: int, joint: bool = True, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.joint = joint

    def forward(self, streams: Streams) -> Streams:  # type: ignore[override]
        if len(streams) == 1 or not self.joint or not self.training:
            # In eval mode the running statistics make every position independent, so joint
            # and per-stream normalisation coincide; skip the reshapes.
            return [super(StreamBatchNorm2d, self).forward(x) for x in streams]
        channels = streams[0].shape[1]
        flat = [x.transpose(0, 1).reshape(1, channels, 1, -1) for x in streams]
        joint = super().forward(torch.cat(flat, dim=3))
        out: Streams = []
        start = 0
        for x in streams:
            n, c, h, w = x.shape
            part = joint[..., start : start + n * h * w]
            out.append(part.reshape(c, n, h, w).transpose(0, 1))
            start += n * h * w
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, joint={self.joint}"


def _activation(kind: Activation, channels: int) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=False)
    if kind == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"unknown activation {kind!r}; use 'relu' or 'prelu'")


class SEModule(nn.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from their global average."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class IRSEBlock(nn.Module):
    """One pre-activation IR-SE block on streams (convolutions and SE shared by all streams)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        joint_bn: bool = True,
        se_reduction: int = 16,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        self.bn1 = StreamBatchNorm2d(in_channels, joint=joint_bn)
        self.act1 = _activation(activation, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = StreamBatchNorm2d(out_channels, joint=joint_bn)
        self.act2 = _activation(activation, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False)
        self.se = SEModule(out_channels, se_reduction) if se_reduction > 0 else nn.Identity()
        self.shortcut_conv: nn.Conv2d | None = None
        self.shortcut_bn: StreamBatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            self.shortcut_bn = StreamBatchNorm2d(out_channels, joint=joint_bn)

    def forward(self, streams: Streams) -> Streams:
        out = [self.conv1(self.act1(x)) for x in self.bn1(streams)]
        out = [self.se(self.conv2(self.act2(x))) for x in self.bn2(out)]
        if self.shortcut_conv is not None and self.shortcut_bn is not None:
            residual = self.shortcut_bn([self.shortcut_conv(x) for x in streams])
        else:
            residual = streams
        return [o + r for o, r in zip(out, residual, strict=True)]


def make_stage(
    in_channels: int,
    out_channels: int,
    blocks: int,
    *,
    stride: int = 2,
    joint_bn: bool = True,
    se_reduction: int = 16,
    activation: Activation = "relu",
) -> nn.Sequential:
    """``blocks`` IR-SE blocks, the first one changing width and resolution."""
    layers = [
        IRSEBlock(
            in_channels if i == 0 else out_channels,
            out_channels,
            stride if i == 0 else 1,
            joint_bn=joint_bn,
            se_reduction=se_reduction,
            activation=activation,
        )
        for i in range(blocks)
    ]
    return nn.Sequential(*layers)


class IRSEStem(nn.Module):
    """``conv3x3(stride 1) -> BN -> act`` on streams."""

    def __init__(self, in_channels: int, width: int, *, joint_bn: bool = True, activation: Activation = "relu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = StreamBatchNorm2d(width, joint=joint_bn)
        self.act = _activation(activation, width)

    def forward(self, streams: Streams) -> Streams:
        return [self.act(x) for x in self.bn1([self.conv1(x) for x in streams])]


class EmbeddingHead(nn.Module):
    """``BN2d -> flatten -> FC -> BN1d``: the fixed-size face embedding of a final feature map."""

    def __init__(
        self, channels: int, map_size: tuple[int, int], embedding_dim: int = 512, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.map_size = tuple(map_size)
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels * map_size[0] * map_size[1], embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.map_size:
            raise ValueError(
                f"embedding head expects {self.map_size[0]}x{self.map_size[1]} feature maps, got "
                f"{x.shape[2]}x{x.shape[3]}: the input image size differs from the network's input_size"
            )
        return self.features(self.fc(self.dropout(self.bn(x)).flatten(1)))


@dataclass(frozen=True)
class IRSEConfig:
    """Shape of an IR-SE ResNet; the defaults are IR-SE ResNet-18 on 128x128 RGB faces."""

    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 64
    input_size: tuple[int, int] = (128, 128)  # (height, width)
    in_channels: int = 3
    embedding_dim: int = 512
    se_reduction: int = 16
    activation: Activation = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.widths) or not self.layers:
            raise ValueError(f"layers {self.layers} and widths {self.widths} must be non-empty and of equal length")
        if min(self.input_size) < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")

    def map_size(self, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        height, width = input_size or self.input_size
        stages = len(self.layers)
        return stage_output_size(height, stages), stage_output_size(width, stages)


def init_face_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan out), unit BN, N(0, 0.01) linear layers (CKD's init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class IRSEResNet(nn.Module):
    """A standalone IR-SE ResNet face encoder: ``forward(images) -> embeddings (n, embedding_dim)``.

    ``num_classes`` adds a linear identity classifier on the embedding (for training with
    cross-entropy); :meth:`logits` uses it, :meth:`forward` never does.
    """

    def __init__(self, config: IRSEConfig = IRSEConfig(), num_classes: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.stem = IRSEStem(config.in_channels, config.stem_width, activation=config.activation)
        stages = []
        channels = config.stem_width
        for blocks, width in zip(config.layers, config.widths, strict=True):
            stages.append(
                make_stage(channels, width, blocks, se_reduction=config.se_reduction, activation=config.activation)
            )
            channels = width
        self.stages = nn.ModuleList(stages)
        self.head = EmbeddingHead(channels, config.map_size(), config.embedding_dim, config.dropout)
        self.classifier = nn.Linear(config.embedding_dim, num_classes) if num_classes else None
        init_face_weights(self)

    def feature_maps(self, streams: Sequence[Tensor]) -> Streams:
        """The last stage's maps of each stream (all streams through the same weights)."""
        out = self.stem(list(streams))
        for stage in self.stages:
            out = stage(out)
        return out

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.feature_maps([images])[0])

    def logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(embeddings, class logits)``; needs ``num_classes``."""
        if self.classifier is None:
            raise RuntimeError("this IRSEResNet has no classifier (built with num_classes=None)")
        embeddings = self(images)
        return embeddings, self.classifier(embeddings)


def ir_se_resnet18(
    input_size: tuple[int, int] = (128, 128),
    *,
    width_multiplier: float = 1.0,
    embedding_dim: int = 512,
    num_classes: int | None = None,
    **overrides,
) -> IRSEResNet:
    """IR-SE ResNet-18 (``[2, 2, 2, 2]``); ``width_multiplier`` < 1 gives a narrower CPU-sized net."""
    widths = tuple(max(1, int(round(w * width_multiplier))) for w in (64, 128, 256, 512))
    config = IRSEConfig(
        layers=(2, 2, 2, 2),
        widths=widths,
        stem_width=widths[0],
        input_size=tuple(input_size),  # type: ignore[arg-type]
        embedding_dim=embedding_dim,
        **overrides,
    )
    return IRSEResNet(config, num_classes=num_classes)
