"""MeDS's reconstruction score network, Dinomaly-style (Guo et al., "Dinomaly", CVPR 2025).

A frozen encoder gives multi-level token features; they are fused, passed through a noisy
bottleneck (an MLP with dropout 0.2: Dinomaly's "noisy bottleneck" that stops the decoder
from learning the identity), and a stack of linear-attention transformer blocks decodes
them. Encoder levels are grouped; each group is reconstructed by the mean of a group of
decoder blocks. The anomaly map is ``mean over groups of (1 - cos(enc_g, dec_g))`` per
token: normal tokens reconstruct well, anomalous ones do not.

The module works on *cached* encoder tokens (``(B, N, D)``, the levels concatenated along
channels): the encoder is frozen and sees no augmentation, so running it once per image and
training only the decoder is the same computation, far cheaper. A group is a list of channel
slices that are averaged (e.g. the four 768-d ViT layers of a Dinomaly group) or a single
slice (one CNN stage).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ChannelSlices = Sequence[tuple[int, int]]


class LinearAttention(nn.Module):
    """Softmax-free attention with the ``elu + 1`` kernel, linear in the number of tokens.

    Dinomaly uses it because it cannot focus sharply on one token, which prevents the decoder
    from copying a token through (its "unfocusing" argument).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        context = torch.einsum("bhnd,bhne->bhde", k, v)
        normaliser = 1.0 / (torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2)) + 1e-6)
        out = torch.einsum("bhnd,bhde,bhn->bhne", q, context, normaliser)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = LinearAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReconstructionScoreNet(nn.Module):
    def __init__(
        self,
        groups: Sequence[ChannelSlices],
        in_dim: int,
        hidden_dim: int = 192,
        decoder_blocks: int = 4,
        heads: int = 4,
        bottleneck_ratio: int = 4,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if decoder_blocks % len(groups):
            raise ValueError(f"{decoder_blocks} decoder blocks cannot be split evenly into {len(groups)} groups")
        self.groups = [list(map(tuple, group)) for group in groups]
        self.input = nn.Linear(in_dim, hidden_dim)
        self.bottleneck = nn.Sequential(
            nn.Linear(hidden_dim, bottleneck_ratio * hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(bottleneck_ratio * hidden_dim, hidden_dim),
            nn.Dropout(dropout),
        )
        self.blocks = nn.ModuleList(DecoderBlock(hidden_dim, heads) for _ in range(decoder_blocks))
        self.blocks_per_group = decoder_blocks // len(groups)
        self.heads = nn.ModuleList(nn.Linear(hidden_dim, _group_width(group)) for group in self.groups)

    def encoder_groups(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([tokens[..., a:b] for a, b in group]).mean(0) for group in self.groups]

    def forward(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Tokens (B, N, D) -> (encoder groups, decoder reconstructions), each (B, N, C_g)."""
        x = self.bottleneck(self.input(tokens))
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        decoded = []
        for index, head in enumerate(self.heads):
            chunk = outputs[index * self.blocks_per_group : (index + 1) * self.blocks_per_group]
            decoded.append(head(torch.stack(chunk).mean(0)))
        return self.encoder_groups(tokens), decoded

    def anomaly_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token ``mean_g (1 - cos(enc_g, dec_g))``, shape (B, N)."""
        encoded, decoded = self(tokens)
        return token_distance(encoded, decoded)


def token_distance(encoded: Sequence[torch.Tensor], decoded: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([1 - F.cosine_similarity(e, d, dim=-1) for e, d in zip(encoded, decoded, strict=True)]).mean(0)


def _group_width(group: ChannelSlices) -> int:
    widths = {b - a for a, b in group}
    if len(widths) != 1:
        raise ValueError(f"slices averaged in one group must have one width, got {sorted(widths)}")
    return widths.pop()
