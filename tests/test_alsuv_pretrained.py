"""ALSUV's pretrained source and validation encoders: architecture, file layout and strict loading.

The paper-size config (``alsuv/ffhq256``) loads an ArcFace IR-100 (insightface arcface_torch's
``backbone.pth``) as the white-box source and a 512-d Swin-T (timm layout) as the validation
encoder from files the user names. Real checkpoints are hundreds of megabytes and not here,
so these tests check (1) that raylab's IResNet-100 has the released parameter count and key
set, derived below from insightface's published architecture rather than from raylab's code,
(2) that random-weight files written in the released layouts load strictly through the
packaged config's own encoder entries and embed faces, and (3) that a file with a missing or
renamed key is refused with an error naming the file, instead of leaving random layers in an
encoder whose embeddings the attack trusts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from raylab.config import from_mapping, read_yaml_mapping
from raylab.methods.alsuv.config import EncoderConfig
from raylab.methods.alsuv.model.encoders import build_backbone, make_encoder
from raylab.nets.iresnet import IRESNET_LAYERS, IResNet, iresnet
from raylab.testing.random_weights import arcface_iresnet_pth, timm_pth

FFHQ256 = Path(__file__).resolve().parents[1] / "raylab" / "configs" / "alsuv" / "ffhq256.yaml"
# insightface reports 65.2 M parameters for IR-100; the exact figure is recomputed from the
# published block structure in test_iresnet100_has_the_released_parameter_count_and_keys.
IR100_PARAMETERS = 65_156_160


def _packaged(role: str) -> EncoderConfig:
    """The ``alsuv/ffhq256`` config's own entry for ``role``, so the tests load what a user's run loads."""
    spec = read_yaml_mapping(FFHQ256)["encoders"][role]
    return from_mapping(EncoderConfig, spec, where=f"encoders.{role}")


def _released_iresnet_keys(layers: tuple[int, ...]) -> set[str]:
    """The state-dict keys of arcface_torch's ``iresnet`` as its source names them (not raylab's modules)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "prelu.weight", "fc.weight", "fc.bias"} | {
        f"{m}.{p}" for m in ("bn1", "bn2", "features") for p in bn
    }
    for stage, blocks in enumerate(layers, start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight", f"{prefix}.prelu.weight"}
            keys |= {f"{prefix}.{m}.{p}" for m in ("bn1", "bn2", "bn3") for p in bn}
            if block == 0:  # every stage starts with stride 2, so its first block has the projection shortcut
                keys |= {f"{prefix}.downsample.0.weight"} | {f"{prefix}.downsample.1.{p}" for p in bn}
    return keys


def _released_iresnet_parameters(layers: tuple[int, ...]) -> int:
    """Parameter count of arcface_torch's ``iresnet`` from its published shapes (112 px input, 512-d)."""
    total, inplanes = 3 * 64 * 9 + 2 * 64 + 64, 64  # stem conv, bn1, prelu
    for blocks, planes in zip(layers, (64, 128, 256, 512), strict=True):
        for block in range(blocks):
            total += 2 * inplanes + inplanes * planes * 9 + 2 * planes + planes + planes * planes * 9 + 2 * planes
            total += inplanes * planes + 2 * planes if block == 0 else 0
            inplanes = planes
    return total + 2 * 512 + 512 * 7 * 7 * 512 + 512 + 2 * 512  # bn2, fc, features


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """One folder with a random IR-100 ``backbone.pth`` and a random 512-d Swin-T state dict (written once)."""
    folder = tmp_path_factory.mktemp("alsuv-pretrained")
    arcface_iresnet_pth(folder / "ms1mv3_arcface_r100_backbone.pth", depth=100)
    timm_pth("swin_tiny_patch4_window7_224", folder / "swin_tiny_face_512.pth", seed=1, num_classes=512)
    return folder


def test_iresnet100_has_the_released_parameter_count_and_keys():
    assert (
        IRESNET_LAYERS[100] == (3, 13, 30, 3) and _released_iresnet_parameters(IRESNET_LAYERS[100]) == IR100_PARAMETERS
    )
    for depth, layers in IRESNET_LAYERS.items():
        with torch.device("meta"):
            model = iresnet(depth)
        assert set(model.state_dict()) == _released_iresnet_keys(layers), depth
        assert sum(p.numel() for p in model.parameters()) == _released_iresnet_parameters(layers), depth
    with torch.device("meta"):
        r100 = build_backbone(_packaged("source"))
    assert isinstance(r100, IResNet) and sum(p.numel() for p in r100.parameters()) == IR100_PARAMETERS
    assert tuple(r100.state_dict()["fc.weight"].shape) == (512, 512 * 7 * 7)


def test_iresnet100_file_loads_strictly_and_embeds(weights):
    path = weights / "ms1mv3_arcface_r100_backbone.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == _released_iresnet_keys(IRESNET_LAYERS[100])  # a plain state dict, no wrapper, no prefix
    encoder = make_encoder(_packaged("source"), name="source", weights_root=weights)  # relative name in the config
    backbone = encoder.backbone
    for key in ("layer3.29.bn3.running_var", "fc.weight", "features.running_mean", "prelu.weight"):
        assert torch.equal(backbone.state_dict()[key], state[key]), key
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    canvas = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        embeddings = encoder(canvas, flip=False)
    assert embeddings.shape == (2, 512) and torch.isfinite(embeddings).all()
    assert not torch.allclose(embeddings[0], embeddings[1])  # two faces, two embeddings


def test_iresnet_file_with_a_renamed_key_is_refused_naming_it(weights, tmp_path):
    state = torch.load(weights / "ms1mv3_arcface_r100_backbone.pth", map_location="cpu", weights_only=True)
    state["fc.biases"] = state.pop("fc.bias")
    renamed = tmp_path / "renamed_backbone.pth"
    torch.save(state, renamed)
    config = _packaged("source")
    with pytest.raises(ValueError, match=r"renamed_backbone\.pth: weights do not match") as error:
        make_encoder(replace(config, weights=str(renamed)), name="source")
    assert "missing keys (1): ['fc.bias']" in str(error.value) and "unexpected keys (1): ['fc.biases']" in str(
        error.value
    )

    wrapped = (
        tmp_path / "wrapped_backbone.pth"
    )  # a training checkpoint around the state dict is not the released layout
    torch.save({"state_dict": {"fc.bias": torch.zeros(512)}}, wrapped)
    with pytest.raises(ValueError, match=r"wrapped_backbone\.pth: expected a plain state dict"):
        make_encoder(replace(config, weights=str(wrapped)), name="source")
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        make_encoder(replace(config, weights="absent.pth"), name="source", weights_root=tmp_path)


def test_swin_tiny_file_loads_strictly_and_embeds(weights):
    config = _packaged("validation")
    assert (config.kind, config.timm_name, config.embedding_dim) == ("timm", "swin_tiny_patch4_window7_224", 512)
    assert tuple(config.input_size) == (224, 224)
    with torch.device("meta"):
        model = build_backbone(config)
    state = torch.load(weights / "swin_tiny_face_512.pth", map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(state) and tuple(state["head.fc.weight"].shape) == (512, 768)
    assert 27e6 < sum(p.numel() for p in model.parameters()) < 29e6  # Swin-T: 28 M with its 512-d head
    encoder = make_encoder(config, name="validation", weights_root=weights)
    assert torch.equal(
        encoder.backbone.state_dict()["layers.2.blocks.5.attn.qkv.weight"], state["layers.2.blocks.5.attn.qkv.weight"]
    )
    canvas = (
        torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    )  # upsampled to 224 by the encoder
    with torch.no_grad():
        embeddings = encoder(canvas)
    assert embeddings.shape == (2, 512) and torch.isfinite(embeddings).all()


def test_swin_file_with_a_missing_key_is_refused_naming_it(weights, tmp_path):
    state = torch.load(weights / "swin_tiny_face_512.pth", map_location="cpu", weights_only=True)
    del state["norm.weight"]
    broken = tmp_path / "swin_missing_norm.pth"
    torch.save(state, broken)
    config = _packaged("validation")
    with pytest.raises(
        ValueError, match=r"swin_missing_norm\.pth: weights do not match the validation encoder"
    ) as error:
        make_encoder(replace(config, weights=str(broken)), name="validation")
    assert "missing keys (1): ['norm.weight']" in str(error.value)
    # The same check holds when the caller read the file itself and passes the state dict.
    with pytest.raises(ValueError, match=r"swin_missing_norm\.pth: weights do not match"):
        make_encoder(replace(config, weights=str(broken)), name="validation", state_dict=state)
    # A 1000-class ImageNet head is a shape mismatch, not a silently truncated layer.
    imagenet = timm_pth("swin_tiny_patch4_window7_224", tmp_path / "swin_imagenet.pth")
    with pytest.raises(
        ValueError, match=r"swin_imagenet\.pth: .*shape mismatches \(2\): \['head.fc.bias', 'head.fc.weight'\]"
    ):
        make_encoder(replace(config, weights=str(imagenet)), name="validation")
