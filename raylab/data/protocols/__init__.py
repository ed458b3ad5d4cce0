"""Protocols: pure functions (corpus table, parameters, seed) -> corpus table + manifest."""

from raylab.data.protocols.noise import NoiseProtocol, ProtocolResult, inject_noise
from raylab.data.protocols.subsample import subsample_corpus

__all__ = ["NoiseProtocol", "ProtocolResult", "inject_noise", "subsample_corpus"]
