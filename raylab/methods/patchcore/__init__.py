from raylab.methods.patchcore.config import PatchCoreConfig
from raylab.methods.patchcore.model import PatchCore

__all__ = ["PatchCore", "PatchCoreConfig"]
