"""Train one CKD variant on one fold and evaluate its periocular encoder on the unseen identities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raylab.methods.ckd.config import CKDConfig, ProtocolConfig, variant
from raylab.methods.ckd.evaluate import PeriocularEvaluation, embed, evaluate_embeddings
from raylab.methods.ckd.model import PeriocularEncoder
from raylab.methods.ckd.pairs import FoldRoles
from raylab.methods.ckd.training import TrainedCKD, train_ckd


@dataclass
class CKDRun:
    method: str
    trained: TrainedCKD
    encoder: PeriocularEncoder
    evaluation: PeriocularEvaluation
    example_input: np.ndarray  # two test periocular images, for tracing / model signatures


def run_ckd(
    roles: FoldRoles,
    config: CKDConfig,
    protocol: ProtocolConfig,
    method: str,
    *,
    seed: int = 0,
    num_workers: int | None = None,
    storage_path: str | None = None,
    callbacks: list[Any] | None = None,
) -> CKDRun:
    """Train ``method`` (``ckd`` or an ablation) on ``roles.fit``, pick on ``roles.val``, test on ``roles.test``."""
    chosen = variant(method)
    trained = train_ckd(
        roles.fit,
        roles.val,
        roles.num_classes,
        config,
        chosen,
        seed=seed,
        num_workers=num_workers,
        storage_path=storage_path,
        callbacks=callbacks,
    )
    encoder = PeriocularEncoder(trained.network(config, chosen)).eval()
    embeddings = embed(encoder, roles.test.periocular)
    evaluation = evaluate_embeddings(embeddings, roles.test.identities, protocol, seed=protocol.split_seed)
    evaluation.metrics["best_epoch"] = float(trained.best_epoch)
    evaluation.metrics["best_val_accuracy"] = trained.best_val_accuracy
    return CKDRun(method, trained, encoder, evaluation, np.ascontiguousarray(roles.test.periocular[:2]))
