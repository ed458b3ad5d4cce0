"""Periocular recognition on identities never seen in training.

Only the periocular embedding is used (as deployed: no face at test time), L2-normalised and
compared by cosine similarity (:mod:`raylab.eval.biometrics`, on the face family's
protocol, :mod:`raylab.tasks.faces`):

* identification: closed-set CMC with ``gallery_per_identity`` enrolled images per identity
  and every other image a probe, averaged over ``gallery_draws`` seeded gallery draws;
* verification: all pairs of test images, genuine = same identity, never a self-pair (the
  official script counts an image against itself as genuine, which lowers the EER), EER and
  TAR at FAR 1e-3 / 1e-2 / 1e-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raylab.eval.biometrics import identification_cmc, pair_scores, roc_curve_points, verification_metrics
from raylab.methods.ckd.config import ProtocolConfig
from raylab.tasks.faces.protocol import gallery_draws


@dataclass
class PeriocularEvaluation:
    metrics: dict[str, float]
    cmc: np.ndarray
    far: np.ndarray
    tar: np.ndarray


def evaluate_embeddings(
    embeddings: np.ndarray, identities: np.ndarray, protocol: ProtocolConfig, seed: int = 0
) -> PeriocularEvaluation:
    """Rank-k (mean over gallery draws), EER and TAR@FAR of test embeddings."""
    cmcs = [
        identification_cmc(embeddings[g], identities[g], embeddings[p], identities[p], max_rank=protocol.max_rank)
        for g, p in gallery_draws(identities, protocol.gallery_per_identity, protocol.gallery_draws, seed)
    ]
    cmc = np.mean(cmcs, axis=0)
    verification = verification_metrics(embeddings, identities, fars=(1e-3, 1e-2, 1e-1))
    genuine, impostor = pair_scores(embeddings, identities)
    far, tar, _ = roc_curve_points(genuine, impostor)
    metrics = {
        "rank1": float(cmc[0]),
        f"rank{protocol.max_rank}": float(cmc[-1]),
        "eer": verification["eer"],
        "tar_at_far1e-3": verification["tar@far=1e-3"],
        "tar_at_far1e-2": verification["tar@far=1e-2"],
        "tar_at_far1e-1": verification["tar@far=1e-1"],
        "n_genuine": verification["n_genuine"],
        "n_impostor": verification["n_impostor"],
    }
    return PeriocularEvaluation(metrics, cmc, far, tar)
