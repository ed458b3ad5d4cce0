"""Post-hoc OOD detectors on a classifier's penultimate features and logits.

One interface for all of them: a frozen config's ``fit(source, head)`` returns a
:class:`FittedDetector` (bank, statistics, ReAct threshold; nothing else is kept anywhere),
whose ``confidence(outputs)`` scores new samples. Features and logits are extracted once
(:mod:`raylab.tasks.ood.outputs`) and every detector reads the same :class:`ModelOutputs`.

Score direction: inside this module, OpenOOD's convention, **higher = more in-distribution**
(a confidence). raylab's metrics use higher = more OOD; the single conversion is
:func:`raylab.tasks.ood.benchmark.ood_scores`.

Detectors (``z`` = L2-normalised penultimate feature, ``f`` = logits):

* MSP: ``max softmax(f)``.  MaxLogit: ``max f``.  Energy: ``T logsumexp(f / T)`` (the
  negative free energy).
* KNN (Sun et al. 2022): ``-||z_q - z_(k)||``, the distance to the k-th nearest bank entry.
* NNGuide (Park et al. 2023): bank entries scaled by their base confidence,
  ``z~_i = c(x_i) z_i``; guidance ``G(q) = mean of the top-k <z_q, z~_i>``; score
  ``G(q) * c(q)`` with ``c`` = energy by default (MSP, max-logit offered).
* ReAct (Sun et al. 2021), an option of every detector: features are clipped at the
  ``p``-th percentile of the fit set's activations (all entries of all fit features, the
  same threshold for every detector fitted on that set) and logits recomputed by the linear
  head, before anything else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from raylab.memory.bank import MemoryBank
from raylab.tasks.ood.config import (
    BaseScore,
    DetectorConfig,
    EnergyConfig,
    KNNConfig,
    MaxLogitConfig,
    MSPConfig,
    NNGuideConfig,
)


@dataclass(frozen=True)
class ModelOutputs:
    """Penultimate features ``(n, d)`` and logits ``(n, c)`` of ``n`` samples."""

    features: np.ndarray
    logits: np.ndarray

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.logits.ndim != 2 or len(self.features) != len(self.logits):
            raise ValueError(
                f"features (n, d) and logits (n, c) must match; got {self.features.shape} and {self.logits.shape}"
            )

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, rows: np.ndarray) -> ModelOutputs:
        return ModelOutputs(self.features[rows], self.logits[rows])


@dataclass(frozen=True)
class LinearHead:
    """The classifier's final layer, ``logits = features @ weight.T + bias``."""

    weight: np.ndarray
    bias: np.ndarray

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (features.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias).astype(np.float32)


def base_confidence(logits: np.ndarray, kind: BaseScore, temperature: float = 1.0) -> np.ndarray:
    """Classifier confidence per row, higher = more ID (float64).

    ``energy``: ``T * logsumexp(f / T)``, which is >= max logit and can be negative when
    every logit is; ``msp``: ``exp(max f - logsumexp f)`` in (0, 1]; ``maxlogit``: ``max f``.
    """
    values = np.asarray(logits, dtype=np.float64)
    if kind == "energy":
        return temperature * logsumexp(values / temperature, axis=1)
    if kind == "msp":
        return np.exp(values.max(axis=1) - logsumexp(values, axis=1))
    if kind == "maxlogit":
        return values.max(axis=1)
    raise ValueError(f"unknown base score {kind!r}; known: energy, msp, maxlogit")


def l2_normalise(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (``max(norm, eps)``, as ``torch.nn.functional.normalize``)."""
    values = np.asarray(features, dtype=np.float32)
    return values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), eps)


def sample_bank(n: int, ratio: float, seed: int, at_least: int = 1) -> np.ndarray:
    """Sorted indices of ``floor(ratio * n)`` of ``n`` fit samples, uniformly without replacement.

    As in the official code (``np.random.choice(n, int(n * ratio), replace=False)``); too few
    entries for the detector's ``k`` is an error, never a silently enlarged bank.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"bank_ratio must be in (0, 1], got {ratio}")
    size = int(np.floor(ratio * n + 1e-9))
    if size < at_least:
        raise ValueError(f"bank_ratio={ratio} of {n} fit samples gives a bank of {size}, fewer than k={at_least}")
    if size == n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


@dataclass(frozen=True)
class ReAct:
    """Clip features at ``threshold`` and recompute logits with the linear head."""

    threshold: float
    head: LinearHead

    @classmethod
    def fit(cls, features: np.ndarray, percentile: float, head: LinearHead | None) -> ReAct:
        if head is None:
            raise ValueError("ReAct needs the classifier's linear head to recompute logits from clipped features")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"react_percentile must be in (0, 100], got {percentile}")
        return cls(float(np.percentile(features, percentile)), head)

    def __call__(self, outputs: ModelOutputs) -> ModelOutputs:
        clipped = np.minimum(outputs.features, np.float32(self.threshold))
        return ModelOutputs(clipped, self.head(clipped))


class FittedDetector(ABC):
    """A detector fitted on one source set; ``confidence`` is higher for more ID samples."""

    def __init__(self, config: DetectorConfig, react: ReAct | None) -> None:
        self.config = config
        self.react = react

    def confidence(self, outputs: ModelOutputs) -> np.ndarray:
        return self._confidence(self.prepare(outputs))

    def prepare(self, outputs: ModelOutputs) -> ModelOutputs:
        """The outputs every score of this detector is computed from (ReAct-clipped if configured)."""
        return self.react(outputs) if self.react else outputs

    @abstractmethod
    def _confidence(self, outputs: ModelOutputs) -> np.ndarray: ...


class LogitDetector(FittedDetector):
    """MSP, MaxLogit and Energy: a function of the logits alone."""

    def _confidence(self, outputs: ModelOutputs) -> np.ndarray:
        config = self.config
        if isinstance(config, MSPConfig):
            return base_confidence(outputs.logits, "msp")
        if isinstance(config, MaxLogitConfig):
            return base_confidence(outputs.logits, "maxlogit")
        assert isinstance(config, EnergyConfig)
        return base_confidence(outputs.logits, "energy", config.temperature)


class KNNDetector(FittedDetector):
    """Negative Euclidean distance to the k-th nearest normalised bank feature."""

    def __init__(self, config: KNNConfig, react: ReAct | None, source: ModelOutputs) -> None:
        super().__init__(config, react)
        rows = sample_bank(len(source), config.bank_ratio, config.bank_seed, at_least=config.k)
        bank_features = l2_normalise(source.features[rows])
        self.bank = MemoryBank(bank_features.shape[1], metric="l2", device="auto")
        self.bank.add(bank_features)
        self.bank_rows = rows

    def _confidence(self, outputs: ModelOutputs) -> np.ndarray:
        squared, _ = self.bank.search(l2_normalise(outputs.features), k=self.config.k)
        return -np.sqrt(np.maximum(squared[:, -1].astype(np.float64), 0.0))


class NNGuideDetector(FittedDetector):
    """Guided confidence ``G(q) * c(q)``; see the module docstring and :meth:`components`.

    Sign guard. The product is a sensible confidence only when both factors are
    non-negative: a negative bank confidence flips its bank vector (top-k then prefers the
    *least* similar entries), and a negative query confidence makes stronger guidance
    *lower* the score. MSP is always positive; energy and max-logit are not (a network whose
    logits are all negative for an input gives negative energy). ``sign_guard``:

    * ``"monotone"`` (default): confidences are shifted by
      ``offset = min(0, min over the bank of c)``, so every bank scale ``c_i - offset`` is
      >= 0; a query with ``c' = c(q) - offset >= 0`` scores ``max(G(q), 0) * c'``, one with
      ``c' < 0`` scores ``c'`` itself (guidance dropped: it is already less confident than
      every bank entry, and the negative value ranks it below every non-negative score,
      ordered by its confidence). The score is then non-decreasing in both ``G`` and ``c``,
      and it equals the official score whenever the bank's and the query's confidences are
      >= 0 and ``G >= 0`` (always true for post-ReLU features, as in every model here).
    * ``"error"``: raise if any bank or query confidence is negative.
    * ``"off"``: the official code's raw ``G * c`` (for reproducing it; can invert rankings).
    """

    def __init__(self, config: NNGuideConfig, react: ReAct | None, source: ModelOutputs) -> None:
        super().__init__(config, react)
        rows = sample_bank(len(source), config.bank_ratio, config.bank_seed, at_least=config.k)
        bank = source.subset(rows)
        confidences = base_confidence(bank.logits, config.base_score)
        self.negative_bank = int(np.sum(confidences < 0))
        if config.sign_guard == "error" and self.negative_bank:
            raise ValueError(
                f"NNGuide: {self.negative_bank} of {len(bank)} bank samples have negative {config.base_score} "
                "confidence; use sign_guard='monotone' (or a positive base score such as msp)"
            )
        self.offset = min(0.0, float(confidences.min())) if config.sign_guard == "monotone" else 0.0
        scaled = l2_normalise(bank.features) * (confidences - self.offset)[:, None].astype(np.float32)
        self.bank = MemoryBank(scaled.shape[1], metric="ip", device="auto")
        self.bank.add(scaled)
        self.bank_rows = rows

    def components(self, outputs: ModelOutputs) -> dict[str, np.ndarray]:
        """``base`` (c(q), unshifted), ``guidance`` (G(q)) and ``confidence`` per query.

        Inputs are the raw outputs (ReAct, if configured, is applied here first).
        """
        return self._components(self.prepare(outputs))

    def _confidence(self, outputs: ModelOutputs) -> np.ndarray:
        return self._components(outputs)["confidence"]

    def _components(self, outputs: ModelOutputs) -> dict[str, np.ndarray]:
        config = self.config
        base = base_confidence(outputs.logits, config.base_score)
        similarities, _ = self.bank.search(l2_normalise(outputs.features), k=config.k)
        guidance = similarities.astype(np.float64).mean(axis=1)
        shifted = base - self.offset
        if config.sign_guard == "off":
            confidence = guidance * shifted
        elif config.sign_guard == "error":
            if np.any(shifted < 0):
                raise ValueError(
                    f"NNGuide: {int(np.sum(shifted < 0))} queries have negative {config.base_score} confidence; "
                    "use sign_guard='monotone'"
                )
            confidence = guidance * shifted
        else:
            confidence = np.where(shifted >= 0, np.maximum(guidance, 0.0) * shifted, shifted)
        return {"base": base, "guidance": guidance, "confidence": confidence}


def fit_detector(config: DetectorConfig, source: ModelOutputs, head: LinearHead | None = None) -> FittedDetector:
    """Fit ``config`` on ``source`` (the ID training outputs); ``head`` is needed for ReAct only.

    Every call builds a new detector from scratch: nothing is cached between calls, so a
    changed hyperparameter always takes effect.
    """
    if len(source) == 0:
        raise ValueError("cannot fit a detector on an empty source set")
    react = ReAct.fit(source.features, config.react_percentile, head) if config.react_percentile is not None else None
    fit_source = react(source) if react else source
    if isinstance(config, (MSPConfig, MaxLogitConfig, EnergyConfig)):
        return LogitDetector(config, react)
    if isinstance(config, KNNConfig):
        return KNNDetector(config, react, fit_source)
    if isinstance(config, NNGuideConfig):
        return NNGuideDetector(config, react, fit_source)
    raise TypeError(f"not a detector config: {type(config).__name__}")
