"""Face encoders of the attack: architectures, input geometry and flip-averaged embeddings.

* :class:`MobileFaceNet`: the architecture of the pretrained CASIA-WebFace checkpoint
  (Chen et al. 2018; the layout of Xiaoccer/MobileFaceNet_Pytorch), written here so that
  ``../shared/weights/mobilefacenet_casia_webface.ckpt`` (``net_state_dict``) loads with
  ``strict=True``: a 3x3 stride-2 stem, a depthwise 3x3, 15 inverted-residual bottlenecks
  (expansion / width / repeats / stride = 2/64/5/2, 4/128/1/2, 2/128/6/1, 4/128/1/2,
  2/128/2/1) with PReLU, a 1x1 to 512, a linear global depthwise 7x6 convolution and a
  linear 1x1 to the 128-d embedding. Input 112x96 (h x w), ``(x - 127.5) / 128``.
* IR-SE ResNets (:mod:`raylab.nets.irse`) and timm ResNets, trained here with a margin loss.
* Pretrained encoders named by a ``weights`` file: insightface's ArcFace IResNets
  (:mod:`raylab.nets.iresnet`, ``kind: iresnet``, their ``backbone.pth`` layout) and timm
  models in timm's state-dict layout (``kind: timm``, e.g. a 512-d Swin-T), loaded strictly.
* :class:`FaceEncoder`: canvas in [-1, 1] -> centre crop -> resize to the encoder's input ->
  its normalisation -> embedding, with ALSUV's flip averaging
  ``0.5 E(x) + 0.5 E(flip(x))`` (``encoder/blackbox_encoder.py`` of the official code).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raylab.methods.alsuv.config import EncoderConfig, resolved_weights

MOBILEFACENET_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBlock(nn.Module):
    """conv (no bias) -> BN (-> PReLU unless ``linear``); depthwise when ``depthwise``."""

    def __init__(
        self, inp: int, oup: int, kernel, stride: int, padding: int, *, depthwise: bool = False, linear: bool = False
    ):
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, kernel, stride, padding, groups=inp if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(oup)
        self.prelu = None if linear else nn.PReLU(oup)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise 3x3 (stride) -> 1x1 project; identity when shapes agree."""

    def __init__(self, inp: int, oup: int, stride: int, expansion: int):
        super().__init__()
        hidden = inp * expansion
        self.connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.connect else self.conv(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet for 112x96 faces -> 128-d embedding (not normalised)."""

    input_size = (112, 96)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, depthwise=True)
        blocks, channels = [], 64
        for expansion, width, repeats, stride in MOBILEFACENET_SETTING:
            for i in range(repeats):
                blocks.append(Bottleneck(channels, width, stride if i == 0 else 1, expansion))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(128, 512, 1, 1, 0)
        self.linear7 = ConvBlock(512, 512, (7, 6), 1, 0, depthwise=True, linear=True)
        self.linear1 = ConvBlock(512, 128, 1, 1, 0, linear=True)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"MobileFaceNet expects 112x96 (h x w) inputs, got {tuple(x.shape[2:])}")
        x = self.blocks(self.dw_conv1(self.conv1(x)))
        return self.linear1(self.linear7(self.conv2(x))).flatten(1)


def load_mobilefacenet(path: str | Path) -> MobileFaceNet:
    """The pretrained MobileFaceNet from its checkpoint (``net_state_dict``), strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MobileFaceNet checkpoint {path} does not exist (see ../shared/data/README.md: weights)"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("net_state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise KeyError(
            f"{path}: expected a dict with 'net_state_dict', got {type(checkpoint).__name__} "
            f"{list(checkpoint)[:5] if isinstance(checkpoint, dict) else ''}"
        )
    model = MobileFaceNet()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match MobileFaceNet: {error}") from None
    return model.eval()


def build_backbone(config: EncoderConfig) -> nn.Module:
    """The bare network of ``config`` (random initialisation; seed it before calling)."""
    if config.kind == "mobilefacenet":
        if config.input_size != MobileFaceNet.input_size or config.embedding_dim != 128:
            raise ValueError(f"MobileFaceNet takes 112x96 inputs and gives 128-d embeddings, config says {config}")
        return MobileFaceNet()
    if config.kind == "irse":
        from raylab.nets.irse import IRSEConfig, IRSEResNet

        widths = tuple(max(4, round(w * config.width_multiplier)) for w in (64, 128, 256, 512)[: len(config.layers)])
        return IRSEResNet(
            IRSEConfig(
                layers=tuple(config.layers),
                widths=widths,
                stem_width=widths[0],
                input_size=tuple(config.input_size),
                embedding_dim=config.embedding_dim,
            )
        )
    if config.kind == "dlib":
        from raylab.methods.alsuv.model.dlib_encoder import DlibResNet

        if tuple(config.input_size) != DlibResNet.input_size or config.embedding_dim != 128:
            raise ValueError(f"dlib's encoder takes 150x150 chips and gives 128-d embeddings, config says {config}")
        return DlibResNet(config.weights)
    if config.kind == "timm":
        import timm

        return timm.create_model(config.timm_name, pretrained=False, num_classes=config.embedding_dim)
    if config.kind == "iresnet":
        from raylab.nets.iresnet import IResNet

        if tuple(config.input_size) != IResNet.input_size:
            raise ValueError(
                f"an IResNet takes 112x112 inputs (its head reads the 7x7 map), config says {tuple(config.input_size)}"
            )
        return IResNet(tuple(config.layers), config.embedding_dim)
    raise ValueError(f"unknown encoder kind {config.kind!r}; use irse, timm, iresnet or mobilefacenet")


class FaceEncoder(nn.Module):
    """Canvas images ``(n, 3, s, s)`` in [-1, 1] -> embeddings ``(n, d)`` of one encoder.

    The preprocessing is differentiable, so the same module is the white-box source encoder
    of the search (gradients flow to the latent) and a black-box evaluator (under no_grad).
    """

    def __init__(self, backbone: nn.Module, config: EncoderConfig, name: str = "encoder") -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.name = name

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def prepare(self, canvas: Tensor) -> Tensor:
        if canvas.ndim != 4 or canvas.shape[1] != 3:
            raise ValueError(f"{self.name}: expected canvas images (n, 3, h, w), got {tuple(canvas.shape)}")
        height, width = canvas.shape[2:]
        crop_h, crop_w = round(height * self.config.crop[0]), round(width * self.config.crop[1])
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        x = canvas[:, :, top : top + crop_h, left : left + crop_w]
        if (crop_h, crop_w) != tuple(self.config.input_size):
            shrinking = crop_h > self.config.input_size[0] or crop_w > self.config.input_size[1]
            x = F.interpolate(
                x, size=tuple(self.config.input_size), mode="bilinear", align_corners=False, antialias=shrinking
            )
        if self.config.normalisation == "mobilefacenet":
            x = ((x + 1.0) * 127.5 - 127.5) / 128.0
        return x

    def embed(self, x: Tensor) -> Tensor:
        out = self.backbone(x)
        if out.ndim != 2 or out.shape[1] != self.embedding_dim:
            raise ValueError(
                f"{self.name}: backbone gave embeddings of shape {tuple(out.shape)}, config says {self.embedding_dim}-d"
            )
        return out

    def forward(self, canvas: Tensor, flip: bool = True) -> Tensor:
        x = self.prepare(canvas)
        if not flip:
            return self.embed(x)
        both = self.embed(torch.cat([x, x.flip(3)]))
        return 0.5 * both[: len(x)] + 0.5 * both[len(x) :]


def make_encoder(
    config: EncoderConfig, *, name: str, state_dict: dict | None = None, weights_root: str | Path | None = None
) -> FaceEncoder:
    """A :class:`FaceEncoder` in eval mode with frozen weights, from a state dict or a weights file.

    An encoder with ``config.weights`` is loaded strictly from that file (relative names
    against ``weights_root``), or from ``state_dict`` when the caller already read it; either
    way a mismatch is an error naming the file, since a partly loaded encoder would embed
    with random layers.
    """
    if config.kind == "mobilefacenet":
        if config.weights is None:
            raise ValueError(f"{name}: a MobileFaceNet needs its pretrained weights file")
        backbone = load_mobilefacenet(resolved_weights(config.weights, weights_root))
    elif config.kind == "dlib":
        backbone = build_backbone(
            replace(
                config, weights=None if config.weights is None else str(resolved_weights(config.weights, weights_root))
            )
        )
    elif config.weights is not None:
        from raylab.nets.iresnet import load_state_dict_strictly, load_state_strictly

        path = resolved_weights(config.weights, weights_root)
        backbone = build_backbone(config)
        what = (
            f"the {name} encoder ({config.kind} {config.timm_name if config.kind == 'timm' else list(config.layers)})"
        )
        if state_dict is None:
            load_state_strictly(backbone, path, what)
        else:
            load_state_dict_strictly(backbone, state_dict, path, what)
    else:
        backbone = build_backbone(config)
        if state_dict is None:
            raise ValueError(f"{name}: a {config.kind} encoder needs trained weights (state_dict)")
        backbone.load_state_dict(state_dict, strict=True)
    encoder = FaceEncoder(backbone, config, name).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder
