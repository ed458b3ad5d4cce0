"""Classifiers whose penultimate features and logits the OOD detectors read.

Every classifier here is an :class:`OODClassifier`: ``features(x)`` returns the penultimate
activations (after the last non-linearity and global pooling) and ``head`` is the final
``nn.Linear``, so ``logits = head(features(x))``. Keeping the head separate is what lets
ReAct clip the features and recompute the logits *after* extraction, without running the
network again.

* :class:`CifarResNet`: the CIFAR ResNets of He et al. (2016, section 4.2): a 3x3 stem,
  three stages of ``n`` BasicBlocks with 16/32/64 channels (stride 2 between stages), global
  average pooling and a linear layer; depth ``6n + 2`` (ResNet-20: n = 3, ResNet-56: n = 9).
  Shortcuts are option A (parameter-free): identity, or when the shape changes, spatial
  subsampling by 2 and zero-padding of the new channels. The module names follow the
  widely used checkpoint layout (``conv1, bn1, layer1..3.<i>.{conv1,bn1,conv2,bn2},
  linear``) so ``cifar10_resnet20.th`` / ``cifar10_resnet56.th`` load with ``strict=True``.
* :class:`TimmClassifier`: any timm classification model, weights from a local file.
* :class:`SmallCNN`: three conv-BN-ReLU blocks and a linear layer, for the embedded MNIST
  open-set benchmark where no pretrained classifier exists (trained with Ray Train).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raylab.features.backbones import load_state_dict_file, map_in_order
from raylab.tasks.ood.config import ClassifierConfig

CIFAR_RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


class OODClassifier(nn.Module):
    """A classifier split into a feature extractor and a final linear ``head``."""

    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class OptionAShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride`` and zero-pad the extra channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        # Split the new channels evenly before and after the old ones, as the original does.
        before = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, before, self.pad - before))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = OptionAShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(OODClassifier):
    """ResNet-(6n+2) for 32x32 inputs; ``features`` is the 64-d pooled output of stage 3."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for i in range(blocks_per_stage):
                stage.append(BasicBlock(planes, width, stride if i == 0 else 1))
                planes = width
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return out.mean(dim=(2, 3))


class SmallCNN(OODClassifier):
    """Three conv3x3-BN-ReLU blocks (32/64/128 channels; max-pool after the first two),
    global average pooling to a 128-d non-negative feature, and a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        blocks: list[nn.Module] = []
        channels = in_channels
        for i, out in enumerate(widths):
            blocks += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                blocks.append(nn.MaxPool2d(2))
            channels = out
        self.body = nn.Sequential(*blocks)
        self.linear = nn.Linear(channels, num_classes)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


class TimmClassifier(OODClassifier):
    """A timm classifier: ``features`` = ``forward_head(..., pre_logits=True)``, head = its classifier.

    Only models whose classifier is a single ``nn.Linear`` qualify (ReAct must be able to
    recompute logits from clipped features); others are rejected by name.
    """

    def __init__(self, name: str, num_classes: int) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        classifier = self.model.get_classifier()
        if not isinstance(classifier, nn.Linear):
            raise ValueError(f"timm model {name}: its classifier is {type(classifier).__name__}, not nn.Linear")

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.model.get_classifier()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def build_classifier(config: ClassifierConfig, state_dict: dict[str, Any] | None = None) -> OODClassifier:
    """The classifier of ``config`` in eval mode, with weights from ``state_dict`` or ``config.weights``.

    ``state_dict`` (a trained model's, e.g. from :mod:`.training`) takes precedence.
    Weight files are loaded with ``strict=True``: a file for another architecture is an
    error, never a partially initialised network.
    """
    model: OODClassifier
    if config.kind == "cifar_resnet":
        if config.arch not in CIFAR_RESNET_DEPTHS:
            raise ValueError(f"unknown CIFAR ResNet {config.arch!r}; known: {sorted(CIFAR_RESNET_DEPTHS)}")
        model = CifarResNet(CIFAR_RESNET_DEPTHS[config.arch], config.num_classes)
    elif config.kind == "small_cnn":
        model = SmallCNN(config.num_classes, width=config.width)
    elif config.kind == "timm":
        model = TimmClassifier(config.arch, config.num_classes)
    else:
        raise ValueError(f"unknown classifier kind {config.kind!r}; known: cifar_resnet, small_cnn, timm")
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    elif config.weights is not None:
        load_weights(model, Path(config.weights))
    return model.eval()


def load_weights(model: OODClassifier, path: Path) -> None:
    """Load a checkpoint file strictly (``state_dict``/``model`` wrappers and ``module.`` handled).

    For a timm model the keys are those of the wrapped timm network; a checkpoint written by
    another implementation of the same network is mapped by position with every shape checked.
    """
    if not path.is_file():
        raise FileNotFoundError(f"classifier weight file {path} does not exist")
    state = load_state_dict_file(path)
    target = model.model if isinstance(model, TimmClassifier) else model
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError:
        if not isinstance(model, TimmClassifier):
            raise
        target.load_state_dict(map_in_order(state, target), strict=True)
