"""Memory banks and coreset subsampling shared by the memory-based methods.

:class:`MemoryBank` is the exact faiss nearest-neighbour store that PatchCore, SoftPatch,
TailedCore, MeDS and NNGuide score against; :func:`greedy_coreset` is PatchCore's greedy
k-center subsampling that keeps such a bank small.
"""

from raylab.memory.bank import MemoryBank, gpu_available, nearest_neighbour_distances
from raylab.memory.coreset import coverage_radius, greedy_coreset, kcenter_greedy, random_projection

__all__ = [
    "MemoryBank",
    "coverage_radius",
    "gpu_available",
    "greedy_coreset",
    "kcenter_greedy",
    "nearest_neighbour_distances",
    "random_projection",
]
