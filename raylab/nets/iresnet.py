"""IResNet: the ArcFace face encoder of insightface's ``arcface_torch``, as released checkpoints hold it.

ALSUV's white-box source encoder is an ArcFace IR-100 trained on MS1MV3 and shipped by
insightface as ``backbone.pth``: a plain state dict (no wrapper dict, no ``module.``
prefix) of their ``iresnet100``. This module is raylab's own implementation of that
architecture with the same parameter names and shapes, so such a file loads with
``strict=True`` and every missing or unexpected key is an error rather than a silently random
layer:

* stem: ``conv1`` (3x3, 3 -> 64, stride 1, no bias) -> ``bn1`` -> ``prelu`` (64 slopes);
* four stages ``layer1`` .. ``layer4`` of widths 64 / 128 / 256 / 512, each starting with a
  stride-2 block; a block ``layerS.B`` is ``bn1 -> conv1 (3x3) -> bn2 -> prelu -> conv2
  (3x3, stride) -> bn3`` plus the input, through ``downsample.0`` (1x1 conv, stride) and
  ``downsample.1`` (BN) in the first block of a stage (there is no activation after the sum);
* head: ``bn2`` (BN2d 512) -> flatten of the 7x7 map -> ``fc`` (25088 -> 512, with bias) ->
  ``features`` (BN1d 512). The released models were trained with dropout 0 before ``fc``,
  so there is none here (it has no parameters, so the layout does not depend on it).

Depths (blocks per stage): r18 ``(2, 2, 2, 2)``, r34 ``(3, 4, 6, 3)``, r50 ``(3, 4, 14, 3)``,
r100 ``(3, 13, 30, 3)``. Input: a 112 x 112 RGB face aligned as insightface aligns it,
normalised as ``(x / 255 - 0.5) / 0.5``, i.e. in [-1, 1]; output: the 512-d embedding
(not L2-normalised; ALSUV compares embeddings by cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)
INPUT_SIZE = (112, 112)


class IBasicBlock(nn.Module):
    """Pre-activation residual block ``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN`` (+ shortcut)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """The arcface_torch IResNet for 112 x 112 faces -> ``embedding_dim``-d embeddings.

    ``layers``: blocks per stage (see :data:`IRESNET_LAYERS`). The four stride-2 stages take a
    112 px face to a 7 x 7 map, which the fully connected head reads position by position
    (aligned faces: where a feature is matters), so the input size is fixed by the weights.
    """

    input_size = INPUT_SIZE

    def __init__(self, layers: Sequence[int] = IRESNET_LAYERS[100], embedding_dim: int = 512) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet takes four stages of >= 1 block each, got layers={list(layers)}")
        self.layers = tuple(layers)
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], eps=1e-5)
        self.prelu = nn.PReLU(STAGE_WIDTHS[0])
        inplanes = STAGE_WIDTHS[0]
        for index, (blocks, width) in enumerate(zip(layers, STAGE_WIDTHS, strict=True), start=1):
            stage = [IBasicBlock(inplanes, width, stride=2)] + [IBasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            inplanes = width
        side = INPUT_SIZE[0] // 2**4
        self.bn2 = nn.BatchNorm2d(STAGE_WIDTHS[-1], eps=1e-5)
        self.fc = nn.Linear(STAGE_WIDTHS[-1] * side * side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"IResNet expects 112x112 inputs, got {tuple(x.shape[2:])}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


def iresnet(depth: int, embedding_dim: int = 512) -> IResNet:
    """IResNet-``depth`` for ``depth`` in 18, 34, 50, 100 (arcface_torch's ``iresnet<depth>``)."""
    if depth not in IRESNET_LAYERS:
        raise ValueError(f"no IResNet-{depth}; depths: {sorted(IRESNET_LAYERS)}")
    return IResNet(IRESNET_LAYERS[depth], embedding_dim)


def load_state_strictly(model: nn.Module, path: str | Path, what: str) -> nn.Module:
    """Load the plain state dict in ``path`` into ``model`` with ``strict=True``; errors name the file.

    ``weights_only=True``: a weights file is data, never code to run. A file that is not a
    flat ``{name: tensor}`` dict (a training checkpoint wrapping it, a pickled module) or whose
    names or shapes differ from ``model`` is refused with the file, the expected layout and
    the first differing keys, because loading it partially would leave random layers in an
    encoder whose embeddings the attack then trusts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights {path} do not exist (relative names resolve against --weights-root)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        keys = list(state)[:5] if isinstance(state, dict) else []
        raise ValueError(
            f"{path}: expected a plain state dict of {what} (name -> tensor), got {type(state).__name__} {keys}"
        )
    load_state_dict_strictly(model, state, path, what)
    return model


def load_state_dict_strictly(model: nn.Module, state: dict, path: str | Path, what: str) -> None:
    """``model.load_state_dict(state, strict=True)``, re-raised as a ValueError naming
    ``path`` and the differing keys."""
    expected = model.state_dict()
    # BatchNorm fills a missing ``num_batches_tracked`` itself (older files lack it), as strict loading allows.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [
            f"{label} ({len(keys)}): {keys[:5]}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if keys
        ]
        raise ValueError(f"{path}: weights do not match {what}: {'; '.join(parts)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # dtype or other conversion failures
        raise ValueError(f"{path}: weights do not match {what}: {error}") from None
