"""PatchCore. The package exports the typed config (importable without torch); the method is
:class:`raylab.methods.patchcore.model.PatchCore`."""

from raylab.methods.patchcore.config import PatchCoreConfig

__all__ = ["PatchCoreConfig"]
