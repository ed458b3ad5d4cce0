"""TailedCore and SoftPatch: unsupervised anomaly detection on long-tailed, noisy training sets.

The package exports the typed configs only (importable without torch); the methods are in
their modules: :mod:`.model` (``TailedCore``), :mod:`.softpatch` (``SoftPatch``),
:mod:`.tail_sampler` (``TailSampler``, ``TailPrediction``) and :mod:`.lof`
(``lof_keep_mask``, ``patchwise_lof_scores``).
"""

from raylab.methods.tailedcore.config import PatchLOFConfig, SoftPatchConfig, TailedCoreConfig, TailSamplerConfig

__all__ = ["PatchLOFConfig", "SoftPatchConfig", "TailSamplerConfig", "TailedCoreConfig"]
