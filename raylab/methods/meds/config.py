"""MeDS configuration: the official defaults (SirojbekSafarov/MeDS) and raylab's CPU size.

The defaults below are the paper's full-size recipe (DINOv2-reg ViT-B/14 tokens on a 28x28
grid, B = 100 bootstraps, 10k distillation and 10k selection iterations). :func:`cpu_config`
is the size that runs on a 2-core laptop, with every reduction stated:

* encoder: ImageNet EfficientNet-Lite0 stages 2 + 3 (40 + 112 channels, the cached
  foundation features) instead of DINOv2 ViT-B/14 (768 x 8 layers);
* token grid pooled from 28x28 to 14x14 (4x fewer tokens; 16x fewer patch pairs in stage 1);
* stage 1: B = 10 bootstraps instead of 100 (10x fewer);
* decoder: 2 linear-attention blocks of width 64 (2 heads) instead of 8 of width 768 (12);
* iterations: 400 distillation and 400 selection iterations (8 selection epochs of 50)
  instead of 10k each, with the warm-up and the hard-mining ramp scaled by the same 1/25.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raylab.methods.meds.partial_memory import PartialMemoryConfig


@dataclass
class DistillationConfig:
    """Stage 2: regress the stage-1 memory-score maps (loss = weight x MSE)."""

    hidden_dim: int = 768
    decoder_blocks: int = 8
    heads: int = 12
    bottleneck_ratio: int = 4
    dropout: float = 0.2
    iterations: int = 10_000
    batch_size: int = 16
    lr: float = 2e-3
    final_lr: float = 2e-4
    warmup_iterations: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    loss_weight: float = 10.0
    loss: str = "mse"
    epochs: int = 10


@dataclass
class SelectionConfig:
    """Stage 3: progressive selection (threshold median + (it/T) k MAD) and fine-tuning."""

    iterations: int = 10_000
    epochs: int = 10
    mad_k: float = 3.0
    hard_mining_p: float = 0.5
    hard_mining_ramp_iterations: int = 1_000
    hard_mining_factor: float = 0.0
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1


@dataclass
class MeDSConfig:
    stage1: PartialMemoryConfig = field(default_factory=PartialMemoryConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    # Encoder groups as channel slices of the cached tokens. The full-size default is the
    # DINOv2 layout (8 middle layers of 768 channels, two groups of four averaged layers).
    groups: tuple[tuple[tuple[int, int], ...], ...] = (
        ((0, 768), (768, 1536), (1536, 2304), (2304, 3072)),
        ((3072, 3840), (3840, 4608), (4608, 5376), (5376, 6144)),
    )
    token_grid: int | None = None
    blur_sigma: float = 4.0
    top_fraction: float = 0.01
    train_workers: int = 2
    # Each Ray Train worker reserves slightly under one CPU: inside a Tune trial, whose own
    # driver holds 0.01 CPU, two full-CPU workers would not fit a 2-CPU machine and the
    # worker group would wait forever.
    cpus_per_train_worker: float = 0.99


def cpu_config() -> MeDSConfig:
    """The laptop size (see the module docstring for each reduction)."""
    return MeDSConfig(
        stage1=PartialMemoryConfig(bootstraps=10, rho=0.1, pool_grid=None),
        distillation=DistillationConfig(
            hidden_dim=64, decoder_blocks=2, heads=2, iterations=400, warmup_iterations=4, epochs=4
        ),
        selection=SelectionConfig(iterations=400, epochs=8, hard_mining_ramp_iterations=40),
        groups=(((0, 40),), ((40, 152),)),
        token_grid=14,
    )
