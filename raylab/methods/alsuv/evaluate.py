"""Judging reconstructions on encoders the attack never used (the official ``test_utils.py``).

For each unseen encoder, thresholds come from all genuine / impostor pairs of the held-out
faces (flip-averaged embeddings, cosine): the threshold at each FAR
(:func:`raylab.eval.biometrics.threshold_at_far`) and the best-accuracy threshold (the one
maximising the *balanced* accuracy (TAR + TRR) / 2, since all-pairs sets have ten times
more impostor than genuine pairs, unlike LFW's balanced pair list). An attack succeeds
when the cosine between the reconstruction and a real image of the target exceeds it:

* type-1: against the very image whose template was attacked;
* type-2: against every other image of the same identity;
* ``rank1``: closed-set identification of the reconstruction among all held-out images
  (each identity scored by its best image; the target's own image is in the gallery, the
  official "inc" protocol); ``rank1_type2``: the same without the target's own image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raylab.eval.biometrics import identification_cmc, pair_scores, threshold_at_far
from raylab.methods.alsuv.model.encoders import FaceEncoder
from raylab.tasks.faces.embedding import embed
from raylab.tasks.faces.protocol import best_accuracy_threshold, far_label


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass
class EncoderReference:
    """An unseen encoder's view of the held-out faces: embeddings and decision thresholds."""

    name: str
    embeddings: np.ndarray
    identities: np.ndarray
    thresholds: dict[str, float]
    verification: dict[str, float]


def reference(
    encoder: FaceEncoder, canvas: np.ndarray, identities: np.ndarray, fars: Sequence[float], *, flip: bool = True
) -> EncoderReference:
    embeddings = embed(encoder, canvas, flip=flip)
    genuine, impostor = pair_scores(embeddings, identities)
    thresholds = {far_label(far): threshold_at_far(impostor, far) for far in fars}
    thresholds["acc"] = best_accuracy_threshold(genuine, impostor)
    verification = {f"tar_{key}": float(np.mean(genuine > t)) for key, t in thresholds.items()}
    verification |= {f"threshold_{key}": t for key, t in thresholds.items()}
    verification |= {"n_genuine": float(genuine.size), "n_impostor": float(impostor.size)}
    return EncoderReference(encoder.name, embeddings, np.asarray(identities), thresholds, verification)


def attack_metrics(
    ref: EncoderReference, attack_embeddings: np.ndarray, target_rows: Sequence[int]
) -> dict[str, float]:
    """Success rates (type-1, type-2 at each threshold) and rank-1 of reconstructions.

    ``attack_embeddings[i]`` is the reconstruction of held-out image ``target_rows[i]``.
    """
    rows = np.asarray(target_rows, dtype=np.int64)
    if attack_embeddings.shape != (len(rows), ref.embeddings.shape[1]):
        raise ValueError(
            f"expected {len(rows)} attack embeddings of dim {ref.embeddings.shape[1]}, got {attack_embeddings.shape}"
        )
    scores = _normalise(attack_embeddings) @ _normalise(ref.embeddings).T  # (targets, held-out)
    type1 = scores[np.arange(len(rows)), rows]
    same = ref.identities[None, :] == ref.identities[rows][:, None]
    same[np.arange(len(rows)), rows] = False
    type2 = scores[same]
    metrics: dict[str, float] = {}
    for key, threshold in ref.thresholds.items():
        metrics[f"type1_{key}"] = float(np.mean(type1 > threshold))
        metrics[f"type2_{key}"] = float(np.mean(type2 > threshold)) if type2.size else float("nan")
    metrics["rank1"] = float(
        identification_cmc(ref.embeddings, ref.identities, attack_embeddings, ref.identities[rows], max_rank=1)[0]
    )
    hits = []
    for i, row in enumerate(rows):
        keep = np.arange(len(ref.identities)) != row
        hits.append(
            identification_cmc(
                ref.embeddings[keep],
                ref.identities[keep],
                attack_embeddings[i : i + 1],
                ref.identities[[row]],
                max_rank=1,
            )[0]
        )
    metrics["rank1_type2"] = float(np.mean(hits))
    metrics["mean_type1_cosine"] = float(type1.mean())
    return metrics
