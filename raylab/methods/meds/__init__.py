"""MeDS: Memory-Distilled Selection."""

from raylab.methods.meds.partial_memory import (
    PartialMemoryConfig,
    PartialMemoryDetector,
    bootstrap_draws,
    bootstrap_memory_scores,
    memory_score_maps,
    partial_memory_scores_chunk,
)

__all__ = [
    "PartialMemoryConfig",
    "PartialMemoryDetector",
    "bootstrap_draws",
    "bootstrap_memory_scores",
    "memory_score_maps",
    "partial_memory_scores_chunk",
]
