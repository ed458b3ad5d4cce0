"""Backbones, patch embeddings, Ray Data extraction and the feature cache."""

from raylab.features.backbones import BackboneSpec, FeatureSpec, create_backbone
from raylab.features.cache import cached_patch_features, feature_key
from raylab.features.extract import FeatureSet, PatchFeatureExtractor, extract_patch_features
from raylab.features.patch_embed import PatchEmbedder

__all__ = [
    "BackboneSpec",
    "FeatureSet",
    "FeatureSpec",
    "PatchEmbedder",
    "PatchFeatureExtractor",
    "cached_patch_features",
    "create_backbone",
    "extract_patch_features",
    "feature_key",
]
