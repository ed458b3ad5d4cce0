"""The PatchCore locally aware patch embedding (Roth et al., CVPR 2022, Sec. 3.1).

Each tapped stage is averaged over a ``kernel x kernel`` neighbourhood (the "locally aware"
aggregation that gives every patch a receptive field beyond its own cell), the coarser maps
are bilinearly resized to the finest one and concatenated. With ``embed_dim`` set, channels
are adaptively average-pooled to that width, PatchCore's projection to 1024 dims for
WideResNet-50 (which has 512 + 1024 channels); EfficientNet-Lite0's 40 + 112 = 152 channels
are kept as they are.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbedder(nn.Module):
    def __init__(self, kernel: int = 3, embed_dim: int | None = None) -> None:
        super().__init__()
        self.kernel = kernel
        self.embed_dim = embed_dim

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Stage maps (B, C_i, h_i, w_i) -> patch embeddings (B, h, w, D) on the finest grid."""
        height, width = maps[0].shape[-2:]
        pooled = []
        for feature_map in maps:
            if self.kernel > 1:
                feature_map = F.avg_pool2d(feature_map, self.kernel, stride=1, padding=self.kernel // 2)
            if feature_map.shape[-2:] != (height, width):
                feature_map = F.interpolate(feature_map, size=(height, width), mode="bilinear", align_corners=False)
            pooled.append(feature_map)
        embedding = torch.cat(pooled, dim=1).permute(0, 2, 3, 1)
        if self.embed_dim is not None and self.embed_dim != embedding.shape[-1]:
            batch = embedding.shape[:3]
            embedding = F.adaptive_avg_pool1d(embedding.reshape(-1, 1, embedding.shape[-1]), self.embed_dim)
            embedding = embedding.reshape(*batch, self.embed_dim)
        return embedding


def pool_patch_grid(patches: np.ndarray, grid: int | None) -> np.ndarray:
    """Average-pool (N, h, w, D) patch grids to (N, grid, grid, D); ``None`` keeps them.

    The CPU configurations of MeDS use it to shrink the token count (and stage 1's
    quadratic cost) while keeping the same cached features.
    """
    if grid is None or patches.shape[1] == grid:
        return np.asarray(patches, dtype=np.float32)
    out = []
    for start in range(0, len(patches), 256):
        chunk = torch.from_numpy(np.asarray(patches[start : start + 256], dtype=np.float32)).permute(0, 3, 1, 2)
        out.append(F.adaptive_avg_pool2d(chunk, grid).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)
