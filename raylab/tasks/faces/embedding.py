"""Embeddings of a set of face images, as every face protocol takes them.

An encoder is judged in eval mode (BatchNorm on its running statistics) without gradients,
in batches so a whole test set never sits in one forward pass; arguments of the encoder's
own forward (ALSUV's flip averaging) pass through unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def embed(encoder: torch.nn.Module, images: np.ndarray, *, batch_size: int = 64, **forward: Any) -> np.ndarray:
    """``(n, d)`` embeddings of ``images`` ``(n, c, h, w)``; ``forward`` goes to ``encoder(...)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    encoder.eval()
    batches = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            batches.append(encoder(batch, **forward).numpy())
    return np.concatenate(batches)
