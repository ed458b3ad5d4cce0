"""Protocols: pure functions (corpus table, parameters, seed) -> corpus table + manifest."""

from raylab.data.protocols.longtail import LongTailProtocol, LongTailResult, apply_long_tail, protocol_from_name
from raylab.data.protocols.noise import NoiseProtocol, ProtocolResult, inject_noise
from raylab.data.protocols.subsample import spread_classes, subsample_corpus

__all__ = [
    "LongTailProtocol",
    "LongTailResult",
    "NoiseProtocol",
    "ProtocolResult",
    "apply_long_tail",
    "inject_noise",
    "protocol_from_name",
    "spread_classes",
    "subsample_corpus",
]
