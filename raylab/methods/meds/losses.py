"""The two training objectives of MeDS's reconstruction network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def distillation_loss(
    predicted_map: torch.Tensor, memory_map: torch.Tensor, weight: float = 10.0, kind: str = "mse"
) -> torch.Tensor:
    """Stage 2: ``weight x MSE(a(x), S_M(x))`` (or L1), regressing the stage-1 map per token."""
    if kind == "mse":
        return weight * F.mse_loss(predicted_map, memory_map)
    if kind == "l1":
        return weight * F.l1_loss(predicted_map, memory_map)
    raise ValueError(f"unknown distillation loss {kind!r}; use 'mse' or 'l1'")


def hard_mining_fraction(iteration: int, final_p: float, ramp_iterations: int) -> float:
    """Dinomaly's schedule: the share of easy tokens muted ramps linearly from 0 to ``final_p``."""
    if ramp_iterations <= 0:
        return final_p
    return final_p * min(1.0, iteration / ramp_iterations)


def global_cosine_hard_mining(
    encoded: Sequence[torch.Tensor], decoded: Sequence[torch.Tensor], p: float, factor: float = 0.0
) -> torch.Tensor:
    """Dinomaly's global cosine loss with hard mining.

    Per group, the loss is ``1 - cos`` between the *whole* flattened encoder and decoder maps
    of each image (global: it constrains the map's overall direction, not each token, so the
    decoder does not learn to copy tokens). Hard mining: the gradient reaching the decoder
    from the ``p`` share of tokens that are already reconstructed best is multiplied by
    ``factor``, focusing training on the hard tokens.
    """
    total = encoded[0].new_zeros(())
    for target, output in zip(encoded, decoded, strict=True):
        target = target.detach()
        with torch.no_grad():
            point_distance = 1 - F.cosine_similarity(target, output, dim=-1)
        total = total + (1 - F.cosine_similarity(target.flatten(1), output.flatten(1), dim=-1)).mean()
        if p > 0 and output.requires_grad:
            keep = max(1, int(point_distance.numel() * (1 - p)))
            threshold = torch.topk(point_distance.flatten(), k=keep).values[-1]
            scale = torch.where(point_distance < threshold, factor, 1.0).unsqueeze(-1)
            output.register_hook(lambda grad, scale=scale: grad * scale)
    return total / len(encoded)
