"""TailedCore and SoftPatch: unsupervised anomaly detection on long-tailed, noisy training sets."""

from raylab.methods.tailedcore.config import SoftPatchConfig, TailedCoreConfig
from raylab.methods.tailedcore.lof import PatchLOFConfig, lof_keep_mask, patchwise_lof_scores
from raylab.methods.tailedcore.model import TailedCore
from raylab.methods.tailedcore.softpatch import SoftPatch
from raylab.methods.tailedcore.tail_sampler import TailPrediction, TailSampler, TailSamplerConfig

__all__ = [
    "PatchLOFConfig",
    "SoftPatch",
    "SoftPatchConfig",
    "TailPrediction",
    "TailSampler",
    "TailSamplerConfig",
    "TailedCore",
    "TailedCoreConfig",
    "lof_keep_mask",
    "patchwise_lof_scores",
]
