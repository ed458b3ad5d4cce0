"""Backbones, patch embeddings, Ray Data extraction and the feature cache.

The package exports only the torch-free specs (:mod:`.spec`), so typed configs and job
command lines import it cheaply; the rest is imported from its module:
:mod:`.backbones` (``create_backbone``), :mod:`.patch_embed` (``PatchEmbedder``),
:mod:`.extract` (``FeatureSet``, ``PatchFeatureExtractor``, ``extract_patch_features``) and
:mod:`.cache` (``cached_patch_features``, ``feature_key``).
"""

from raylab.features.spec import BackboneSpec, FeatureSpec

__all__ = ["BackboneSpec", "FeatureSpec"]
