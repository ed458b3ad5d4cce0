"""PatchCore, the anomaly family's memory-bank baseline: the detector every noisy-data method
here is compared against (MeDS, TailedCore and SoftPatch score the same features beside it),
so it lives with the family and the methods reach it here, not in each other's packages.
The package exports the typed config (importable without torch); the detector is
:class:`raylab.tasks.anomaly.patchcore.model.PatchCore`, registered as ``patchcore``."""

from raylab.tasks.anomaly.patchcore.config import PatchCoreConfig

__all__ = ["PatchCoreConfig"]
