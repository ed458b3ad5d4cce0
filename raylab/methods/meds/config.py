"""MeDS configuration: the official defaults (SirojbekSafarov/MeDS) and raylab's CPU size.

The defaults below are the paper's full-size recipe (DINOv2-reg ViT-B/14 tokens on a 28x28
grid, B = 100 bootstraps, 10k distillation and 10k selection iterations). :func:`cpu_config`
is the size that runs on a 2-core laptop, with every reduction stated:

* encoder: ImageNet EfficientNet-Lite0 stages 2 + 3 (40 + 112 channels, the cached
  foundation features) instead of DINOv2 ViT-B/14 (768 x 8 layers);
* token grid pooled from 28x28 to 14x14 (4x fewer tokens; 16x fewer patch pairs in stage 1);
* stage 1: B = 10 bootstraps instead of 100 (10x fewer);
* decoder: 2 linear-attention blocks of width 64 (2 heads) instead of 8 of width 768 (12),
  chosen on validation data (``benchmarks/meds_decoder_selection.py``: held-out training
  images and synthetic defects; wider, deeper or longer-trained decoders did no better there);
* iterations: 400 distillation iterations (1/25 of 10k) and 800 stage-3 iterations (1/12.5
  of 10k; stage 3 is the final detector's whole training, so it gets the larger share),
  each with its warm-up (100 at full size) and stage 3's hard-mining ramp (1k) scaled by
  the same factor as its iterations: 4 and 8 warm-up iterations, an 80-iteration ramp.
  Everything else in stage 3 is the release's (lr 2e-3 -> 2e-4, p 0.5, factor 0.1, batch
  16, re-selection before every pass over the kept set).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from raylab.config import require


@dataclass
class PartialMemoryConfig:
    """Stage-1 settings.

    ``bootstraps`` (B) and ``rho`` (fraction of images per partial memory) default to the
    paper's values. ``pool_grid`` average-pools each image's ``h x w`` patch grid to
    ``pool_grid x pool_grid`` before stage 1 (the pooled features are re-normalised) and
    the resulting score maps are bilinearly upsampled back to ``h x w``; ``None`` keeps
    the full grid, as the paper does.

    The cost grows with the square of the patches per image and linearly with B, so the
    CPU size (:func:`~raylab.methods.meds.config.cpu_config`: B=10 on 14x14 token grids
    pooled from 28x28, 16x fewer patch pairs and 10x fewer bootstraps) is what fits on a
    2-core machine; the defaults are for GPUs.
    """

    bootstraps: int = 100
    rho: float = 0.1
    pool_grid: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        require(
            not isinstance(self.bootstraps, bool) and int(self.bootstraps) == self.bootstraps and self.bootstraps >= 1,
            "bootstraps",
            f"must be a positive integer, got {self.bootstraps!r}",
        )
        require(0.0 < float(self.rho) <= 1.0, "rho", f"must lie in (0, 1], got {self.rho!r}")
        require(
            self.pool_grid is None or (int(self.pool_grid) == self.pool_grid and self.pool_grid >= 1),
            "pool_grid",
            f"must be null or a positive integer, got {self.pool_grid!r}",
        )


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
    """Stage 3 as released: the full reconstruction training from the distilled weights.

    Each pass over the kept set starts with a fresh selection (threshold ``median + (it/T) k
    MAD`` per class on the blended score); the network trains with Dinomaly's global cosine
    loss, whose hard mining mutes (multiplies by ``hard_mining_factor``) the gradient of the
    ``p`` best-reconstructed tokens, ``p`` ramping to ``hard_mining_p`` over
    ``hard_mining_ramp_iterations``; a fresh StableAdamW with lr ``lr -> final_lr`` warm-cosine.
    Values: ``step_3_data_selection_with_distilled_model.py`` (10k iterations, batch 16,
    lr 2e-3 -> 2e-4 with 100 warm-up iterations, p 0.5 over 1k iterations, factor 0.1,
    wd 1e-4, grad clip 0.1, k = 3). ``epochs`` is only the checkpoint and report interval
    (the release has none; a pass that reaches an epoch's end stops there and the next epoch
    selects again).
    """

    iterations: int = 10_000
    epochs: int = 10
    mad_k: float = 3.0
    hard_mining_p: float = 0.5
    hard_mining_ramp_iterations: int = 1_000
    hard_mining_factor: float = 0.1
    batch_size: int = 16
    lr: float = 2e-3
    final_lr: float = 2e-4
    warmup_iterations: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 0.1

    def __post_init__(self) -> None:
        require(
            self.iterations >= 1 and 1 <= self.epochs <= self.iterations,
            "epochs",
            f"must lie in [1, iterations], got {self.epochs} for {self.iterations} iterations",
        )
        require(0.0 <= self.hard_mining_p < 1.0, "hard_mining_p", f"must lie in [0, 1), got {self.hard_mining_p!r}")


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
    # The release trains stages 2 and 3 as one network on every class's training images
    # (multi-class, as Dinomaly does); stage 1's maps and stage 3's selection stay per class.
    # True trains a network per class instead (a Train run each), e.g. when one class's
    # tokens are all that fit in a worker's memory.
    network_per_class: bool = False
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
        selection=SelectionConfig(iterations=800, epochs=8, warmup_iterations=8, hard_mining_ramp_iterations=80),
        groups=(((0, 40),), ((40, 152),)),
        token_grid=14,
    )


def with_decoder_size(config: MeDSConfig, size: str) -> MeDSConfig:
    """``config`` with the decoder and its training length of ``size`` = ``WIDTHxBLOCKS@ITERATIONS``.

    ``ITERATIONS`` are stage 3's (the final detector's training); stage 2 gets half of them,
    and the warm-ups and the hard-mining ramp keep the share of their run that the release's
    have (1% warm-up, a ramp over 10% of stage 3), as :func:`cpu_config` does. Heads are
    width / 32, at least 2. The one way a size is spelled, for studies that compare sizes.
    """
    try:
        shape, iterations_text = size.split("@")
        width, blocks = (int(part) for part in shape.split("x"))
        iterations = int(iterations_text)
    except ValueError as error:
        raise ValueError(f"decoder size {size!r} is not WIDTHxBLOCKS@ITERATIONS (e.g. 64x2@800)") from error
    require(min(width, blocks, iterations) >= 2, "decoder size", f"{size!r}: width, blocks, iterations must be >= 2")
    distillation = replace(
        config.distillation,
        hidden_dim=width,
        decoder_blocks=blocks,
        heads=max(2, width // 32),
        iterations=iterations // 2,
        warmup_iterations=max(1, iterations // 200),
        epochs=min(config.distillation.epochs, iterations // 2),
    )
    selection = replace(
        config.selection,
        iterations=iterations,
        warmup_iterations=max(1, iterations // 100),
        hard_mining_ramp_iterations=max(1, iterations // 10),
        epochs=min(config.selection.epochs, iterations),
    )
    return replace(config, distillation=distillation, selection=selection)
