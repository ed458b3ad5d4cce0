"""ALSUV configuration: the official defaults (jungyg/ALSUV ``main.py``) and raylab's CPU size.

The dataclass defaults are the paper's attack: N = 100 latent searches per target from
sampled W latents broadcast to W+, loss -cos with horizontal-flip averaging, Adam lr 0.1,
weight decay 5e-4, 100 iterations with the learning rate x0.1 at iteration 50, the averaged
latent over the last 70 iterates, truncation 0.8 towards the mean latent (fixed noise),
and the unsupervised validation of the top 10 by a held-out validation encoder. The
generator default is StyleGAN2 FFHQ-256 config-f loaded from a user's rosinality-layout
checkpoint (``generator.checkpoint``), cropped to its 192 px face region 10 px below the
centre and resized to the canvas; the searches run ten to a task (the official ``mini_batch``).
The canvas and encoder defaults are the laptop's (32 px); ``configs/alsuv/ffhq256.yaml``
puts the paper's sizes over them: a 112 px canvas, an ArcFace IR-100 source and a Swin-T
validation encoder loaded from the user's files, the pretrained MobileFaceNet and dlib ResNet
and an unseen ResNet-50 trained here as the evaluation encoders.

Sizes have one source of truth, :attr:`AlsuvConfig.face_size` (the canvas): real faces are
decoded to it, generated face crops are resized (down) to it, the evaluation and the figures
expect it; :class:`AlsuvConfig` refuses, naming the keys, a generator whose face crop cannot
meet the canvas.

:func:`cpu_config` is the size that runs on a 2-core laptop, where no FFHQ weights exist,
every reduction stated:

* generator: a StyleGAN2 trained here on the training identities' faces with Ray Train:
  32 x 32 px (not 256), style dim 128 (not 512), a 2-layer mapping network (not 8; the
  StyleGAN2-ADA CIFAR configuration's depth for small images), widths 64 at 4-16 px and
  32 at 32 px (not 512), for 12000 steps of batch 16 (192k images shown, not the 25M of a
  full StyleGAN2 run) with DiffAugment on the discriminator's inputs (300 training faces),
  no path-length regulariser and an EMA half-life of 1k images (10k in StyleGAN2) because
  the run is that short. The step count is the smallest tried whose generator passes the
  job's own gate (its pixel inversions pass MobileFaceNet at FAR 1e-2 for >= 0.5 of the
  targets): 1200 steps without DiffAugment reached 0.100, 6000 with it 0.300, 12000 0.533
  (``benchmarks/alsuv_generator_gate.py``, seed 0); the whole 32 px output is the face
  region (the training images are already face crops); ORL is grey, so the generator's
  output is used as grey (its channel mean), in training and in the attack;
* encoders: small IR-SE ResNets / a timm ResNet trained here on 32 x 32 faces (the paper's
  source is an ArcFace IR-100 and its validation encoder a Swin-T, both on 112 px faces);
* attack: N = 12 searches (not 100) of 30 iterations (not 100), in tasks of 6 (not 10);
  the learning-rate drop at half-way and the average over the last 70% are kept; top-k = 3
  (not 10: a tenth of 12 candidates would be one, which is best-by-source, so the pseudo
  target averages a quarter of the candidates instead of a tenth);
* targets: three images per held-out identity (30 on ORL; the paper attacks every test
  image), so that one target is 1/30 of a rate, not 1/10;
* the ``pixel_inversion`` ceiling: 12 starts x 150 Adam steps per target (the
  :class:`InversionConfig` defaults, kept at every size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from raylab.config import require

EncoderKind = Literal["irse", "timm", "mobilefacenet", "iresnet", "dlib"]
# Kinds whose weights are pretrained elsewhere and never trained here (dlib's come with its package).
PRETRAINED_KINDS = ("mobilefacenet", "dlib")
MarginLoss = Literal["arcface", "cosface"]
DiffAugmentPolicy = Literal["color", "translation", "cutout"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a StyleGAN2 generator; defaults are FFHQ-256 config-f as ALSUV uses it."""

    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    channel_base: int = 16384
    channel_max: int = 512
    lr_mlp: float = 0.01

    def __post_init__(self) -> None:
        log = math.log2(self.size)
        if self.size < 4 or log != int(log):
            raise ValueError(f"generator size must be a power of two >= 4, got {self.size}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of ``w`` vectors in W+ (one per synthesis layer input)."""
        return self.log_size * 2 - 2

    @property
    def num_layers(self) -> int:
        """Number of styled convolutions, hence of noise inputs."""
        return (self.log_size - 2) * 2 + 1

    def channels(self, resolution: int) -> int:
        return min(self.channel_max, self.channel_base * self.channel_multiplier // resolution)

    def architecture(self) -> tuple[int, int, int, tuple[int, ...]]:
        """``(size, style_dim, n_mlp, widths from 4 px up)``: what a checkpoint's shapes fix.

        Two configs with equal architectures build generators with identical tensor shapes,
        even when they spell the width table differently (base x multiplier).
        """
        widths = tuple(self.channels(2**k) for k in range(2, self.log_size + 1))
        return self.size, self.style_dim, self.n_mlp, widths


@dataclass(frozen=True)
class CanvasConfig:
    """Every face, real or generated, lives on one square RGB canvas in [-1, 1].

    Real images are centre-cropped to a square (ORL's 92 x 112 -> the central 92 x 92) and
    resized to ``size`` (grey images are repeated over three channels). Generated faces are
    brought to the same size (:attr:`AlsuvConfig.face_size`): a generator trained here is
    trained on exactly these canvases, and a loaded one's face crop is resized down to them,
    so a reconstruction and its target always have the same pixels per face.
    """

    size: int = 32


@dataclass(frozen=True)
class FaceCropConfig:
    """The face region of a generator output (the official post-processing for FFHQ-256).

    A square of ``size_fraction`` of the output, its centre ``v_offset_fraction`` of the
    output below the image centre, then each image rescaled to [-1, 1] by its own min / max.
    FFHQ-256: 192 / 256 and 10 / 256.
    """

    size_fraction: float = 192 / 256
    v_offset_fraction: float = 10 / 256


@dataclass(frozen=True)
class GanTrainConfig:
    """StyleGAN2 training (non-saturating logistic loss, lazy R1, optional path-length reg., EMA).

    Defaults follow the StyleGAN2 recipe (Adam lr 0.002, betas (0, 0.99), R1 every 16 steps,
    path length every 4 with weight 2, style mixing 0.9, x-flips); ``r1_gamma`` is the
    StyleGAN2-ADA heuristic 0.0002 res^2 / batch rounded, which is the right order for small
    images (10 is for 1024 px).

    ``diffaugment``: the DiffAugment policies (``color``, ``translation``, ``cutout``) applied
    to every image the discriminator sees, for training on a few hundred faces
    (:mod:`raylab.methods.alsuv.training.diffaugment`); empty is plain StyleGAN2.
    """

    iterations: int = 2000
    batch_size: int = 16
    lr: float = 0.002
    r1_gamma: float = 0.01
    d_reg_every: int = 16
    g_reg_every: int = 4
    path_length_weight: float = 2.0
    path_batch_shrink: int = 2
    mixing: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    xflip: bool = True
    num_workers: int = 2
    checkpoint_every: int = 250
    seed: int = 0
    diffaugment: tuple[DiffAugmentPolicy, ...] = ()

    def __post_init__(self) -> None:
        known = get_args(DiffAugmentPolicy)
        unknown = [name for name in self.diffaugment if name not in known]
        require(not unknown, "diffaugment", f"has unknown policies {unknown}; known: {list(known)}")


@dataclass(frozen=True)
class GeneratorSetup:
    """Which generator the attack uses: a user's checkpoint, or one trained here.

    ``checkpoint``: a rosinality-layout file (relative paths: against ``--weights-root``);
    ``None`` trains ``model`` with ``train`` on the training identities (cached).
    ``grayscale``: the faces are grey (ORL): the generator's output is shown to the
    discriminator, and to the encoders, as its channel mean.
    """

    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    checkpoint: str | None = "stylegan2-ffhq-256_550000.pt"
    grayscale: bool = False
    crop: FaceCropConfig = field(default_factory=FaceCropConfig)
    train: GanTrainConfig = field(default_factory=GanTrainConfig)

    @property
    def face_side(self) -> int:
        """Side in generator pixels of the face crop (FFHQ-256: 192), before it meets the canvas."""
        return round(self.model.size * self.crop.size_fraction)


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Margin-loss training of a face encoder (SGD, cosine schedule, x-flips)."""

    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pad: int = 2
    num_workers: int = 1
    # Optimiser steps per epoch at most; None takes every full batch of the training faces.
    # A budget knob (``--smoke`` sets it): it says how much work runs, not what is learnt.
    steps: int | None = None

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.steps is None or self.steps >= 1, "steps", f"must be >= 1 or null, got {self.steps}")


@dataclass(frozen=True)
class EncoderConfig:
    """One face encoder: architecture, input geometry and (for raylab-trained ones) its loss.

    ``input_size`` is (height, width); the canvas is centre-cropped to ``crop`` (fraction of
    its height, width) before resizing, which is how a 112 x 96 encoder gets an undistorted
    face. ``weights``: a state-dict file (relative: against ``--weights-root``); ``None``
    means the encoder is trained here with ``loss`` on the training identities.
    ``normalisation``: ``canvas`` feeds the [-1, 1] canvas as is; ``mobilefacenet`` feeds
    ``(x - 127.5) / 128`` of the 0-255 image.

    Pretrained kinds (``weights`` names the file, loaded with ``strict=True`` and
    ``weights_only=True``; a file whose keys or shapes differ is refused naming it):

    * ``iresnet``: insightface arcface_torch's IResNet (:mod:`raylab.nets.iresnet`), the file
      a plain state dict as their ``backbone.pth`` is (e.g. ArcFace IR-100 on MS1MV3, the
      paper's source encoder). ``layers`` sets the depth (r18/r34/r50/r100 =
      ``[2, 2, 2, 2]`` / ``[3, 4, 6, 3]`` / ``[3, 4, 14, 3]`` / ``[3, 13, 30, 3]``); widths are the
      released 64-512 (``width_multiplier`` is not read); input 112 x 112 in [-1, 1], which
      is arcface_torch's ``(x / 255 - 0.5) / 0.5``, so ``normalisation: canvas``.
    * ``timm`` with ``weights``: ``timm_name`` built with ``num_classes=embedding_dim`` and the
      file a state dict in timm's layout. The full config's validation encoder is
      ``swin_tiny_patch4_window7_224`` with a 512-d head at 224 x 224 (the official code
      upsamples the [-1, 1] face to 224 and feeds it as is). The paper's Swin-T
      (``Swin-T-MS1M.pt`` of the official code, a FaceX-Zoo ``SwinTransformer`` trained on
      MS1M) has the same trunk but a different head (LayerNorm -> flatten of the 7 x 7 x 768
      map -> Linear 37632 -> 512 -> BatchNorm1d, where timm mean-pools into Linear 768 -> 512)
      and Microsoft's original key layout, so that file does not load here as it is: the
      trunk converts with timm's ``swin_transformer.checkpoint_filter_fn``, the head does not
      (it must be retrained on the converted trunk, or another Swin-T face model in timm's
      layout used).
    """

    kind: EncoderKind = "irse"
    input_size: tuple[int, int] = (32, 32)
    crop: tuple[float, float] = (1.0, 1.0)
    embedding_dim: int = 128
    layers: tuple[int, ...] = (2, 2, 2, 2)
    width_multiplier: float = 0.25
    timm_name: str = "resnet10t"
    weights: str | None = None
    normalisation: Literal["canvas", "mobilefacenet"] = "canvas"
    loss: MarginLoss = "arcface"
    margin: float = 0.5
    scale: float = 32.0
    seed: int = 0
    train: EncoderTrainConfig = field(default_factory=EncoderTrainConfig)

    @property
    def trained_here(self) -> bool:
        """No weight file and not a pretrained kind: the job trains it on the training identities."""
        return self.weights is None and self.kind not in PRETRAINED_KINDS

    @property
    def network(self) -> object:
        """What decides its weights: a pretrained encoder's kind and file (its input geometry
        only changes what it is fed), every field of one trained here (same fields, same seed,
        same data: the same network)."""
        return self if self.trained_here else (self.kind, self.weights)


def mobilefacenet_encoder() -> EncoderConfig:
    """The pretrained CASIA-WebFace MobileFaceNet: 112 x 96 input of a 7:6 (h:w) face crop."""
    return EncoderConfig(
        kind="mobilefacenet",
        input_size=(112, 96),
        crop=(1.0, 96 / 112),
        embedding_dim=128,
        weights="mobilefacenet_casia_webface.ckpt",
        normalisation="mobilefacenet",
    )


def resolved_weights(weights: str, weights_root: str | Path | None) -> Path:
    """A weight file's path: relative names resolve against ``--weights-root``."""
    path = Path(weights)
    return Path(weights_root) / path if not path.is_absolute() and weights_root is not None else path


def dlib_encoder() -> EncoderConfig:
    """dlib's ResNet face encoder (pretrained, from PyPI): the whole canvas as its 150 px chip.

    ``weights`` may name a ``dlib_face_recognition_resnet_model_v1.dat``; unset, the file
    packaged by ``face-recognition-models`` is used (see :mod:`.model.dlib_encoder`).
    """
    return EncoderConfig(kind="dlib", input_size=(150, 150), crop=(1.0, 1.0), embedding_dim=128, normalisation="canvas")


def default_source() -> EncoderConfig:
    return EncoderConfig(kind="irse", layers=(2, 2, 2, 2), width_multiplier=0.25, loss="arcface", margin=0.5, seed=0)


def default_validation() -> EncoderConfig:
    """Different depth, width, loss and seed from the source (the paper's is another architecture)."""
    return EncoderConfig(kind="irse", layers=(1, 1, 1, 1), width_multiplier=0.375, loss="cosface", margin=0.35, seed=1)


def default_unseen() -> dict[str, EncoderConfig]:
    """Encoders used for evaluation only: the real MobileFaceNet and dlib's ResNet (both
    pretrained on other faces, black boxes here) and a timm ResNet trained here."""
    return {
        "mobilefacenet": mobilefacenet_encoder(),
        "dlib_resnet": dlib_encoder(),
        "resnet10t": EncoderConfig(kind="timm", timm_name="resnet10t", loss="arcface", margin=0.5, seed=2),
    }


@dataclass(frozen=True)
class EncoderSet:
    """The source (white-box, searches), validation (selection) and unseen (evaluation) encoders.

    A YAML ``unseen`` mapping replaces the default set (name -> encoder fields).

    ``epochs`` and ``steps`` cap the training of *every* encoder trained here (epochs, and
    optimiser steps per epoch; ``None``: each encoder's own ``train`` section). They are budget
    knobs in one place because a budget overlay cannot name the unseen encoders of every config.
    """

    source: EncoderConfig = field(default_factory=default_source)
    validation: EncoderConfig = field(default_factory=default_validation)
    unseen: dict[str, EncoderConfig] = field(default_factory=default_unseen)
    epochs: int | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        from raylab.config import from_mapping

        unseen = {
            name: spec
            if isinstance(spec, EncoderConfig)
            else from_mapping(EncoderConfig, spec, where=f"encoders.unseen.{name}")
            for name, spec in self.unseen.items()
        }
        require(bool(unseen), "unseen", "is empty: the attack must be judged on at least one unseen encoder")
        clash = sorted({"source", "validation"} & set(unseen))
        require(not clash, "unseen", f"names {clash} clash with the attack's own encoders")
        # Judging the attack on the network it searched or selected with is no transfer test.
        own = (self.source.network, self.validation.network)
        seen = {name: spec for name, spec in unseen.items() if spec.network in own}
        require(
            not seen,
            "unseen",
            f"{sorted(seen)} is the source or validation encoder itself; an unseen encoder must differ from both",
        )
        require(self.epochs is None or self.epochs >= 1, "epochs", f"must be >= 1 or null, got {self.epochs}")
        require(self.steps is None or self.steps >= 1, "steps", f"must be >= 1 or null, got {self.steps}")
        object.__setattr__(self, "unseen", unseen)

    def by_role(self) -> dict[str, EncoderConfig]:
        """``source``, ``validation`` and the unseen encoders by name, each with the set's caps applied."""
        return {
            name: self._capped(spec)
            for name, spec in {"source": self.source, "validation": self.validation, **self.unseen}.items()
        }

    def _capped(self, spec: EncoderConfig) -> EncoderConfig:
        train = spec.train
        epochs = train.epochs if self.epochs is None else min(train.epochs, self.epochs)
        steps = train.steps if self.steps is None else min(train.steps or self.steps, self.steps)
        return replace(spec, train=replace(train, epochs=epochs, steps=steps))


@dataclass(frozen=True)
class AttackConfig:
    """The latent searches and the selection among their results (official defaults)."""

    num_searches: int = 100
    searches_per_task: int = 10
    iterations: int = 100
    lr: float = 0.1
    weight_decay: float = 5e-4
    lr_decay_at: float = 0.5
    lr_gamma: float = 0.1
    average_fraction: float = 0.7
    truncation: float = 0.8
    mean_latent_samples: int = 10_000
    flip: bool = True
    top_k: int = 10

    def __post_init__(self) -> None:
        for key in ("num_searches", "searches_per_task", "iterations", "mean_latent_samples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(
            1 <= self.top_k <= self.num_searches,
            "top_k",
            f"must be in [1, num_searches={self.num_searches}], got {self.top_k}",
        )
        require(
            0.0 < self.average_fraction <= 1.0, "average_fraction", f"must be in (0, 1], got {self.average_fraction}"
        )
        require(0.0 <= self.lr_decay_at <= 1.0, "lr_decay_at", f"must be in [0, 1], got {self.lr_decay_at}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0.0 <= self.truncation <= 1.0, "truncation", f"must be in [0, 1], got {self.truncation}")

    @property
    def averaged_iterates(self) -> int:
        """How many final iterates are averaged (70 of 100 officially; at least 1)."""
        return max(1, round(self.average_fraction * self.iterations))

    @property
    def decay_iteration(self) -> int:
        """The step after which the learning rate is multiplied by ``lr_gamma`` (50 of 100)."""
        return round(self.lr_decay_at * self.iterations)


@dataclass(frozen=True)
class DataConfig:
    """Identity-disjoint protocol: fold ``fold`` of ``n_folds`` holds the target identities.

    The generator and every raylab-trained encoder see only the other folds' identities;
    the attack targets ``targets_per_identity`` images of each held-out identity (the first
    ones, in file order, in which the face check finds a face), and the verification
    thresholds come from all pairs of held-out images. ``images_per_identity`` keeps only
    the first that many images of every identity (all of them when ``None``): a budget knob
    that shrinks training, thresholds and evaluation together without changing who is held out.
    """

    dataset: str = "orl"
    n_folds: int = 4
    fold: int = 0
    split_seed: int = 0
    targets_per_identity: int = 1
    images_per_identity: int | None = None
    canvas: CanvasConfig = field(default_factory=CanvasConfig)

    def __post_init__(self) -> None:
        require(
            self.n_folds >= 2, "n_folds", f"must be >= 2 (one fold held out, the others trained on), got {self.n_folds}"
        )
        require(0 <= self.fold < self.n_folds, "fold", f"must be in [0, n_folds={self.n_folds}), got {self.fold}")
        require(
            self.targets_per_identity >= 1, "targets_per_identity", f"must be >= 1, got {self.targets_per_identity}"
        )
        require(
            self.images_per_identity is None or self.images_per_identity >= max(2, self.targets_per_identity),
            "images_per_identity",
            f"must be null or >= max(2, targets_per_identity={self.targets_per_identity}) "
            f"(genuine pairs need two images), got {self.images_per_identity}",
        )


@dataclass(frozen=True)
class EvaluationConfig:
    """Thresholds of the unseen encoders, and the rule that says whether a run can show anything.

    The summary's ``verdict`` (:func:`raylab.methods.alsuv.verdict.informative_verdict`) reads
    type-1 success at FAR ``verdict_far`` on ``verdict_encoder`` (a real, pretrained, black-box
    encoder: MobileFaceNet): the run is not informative when the generator's own pixel
    inversion of the targets (the ``pixel_inversion`` ceiling row) stays below
    ``verdict_ceiling`` there, or when every attack method sits at 0, since then no
    comparison of the attack methods on that encoder is possible.
    """

    fars: tuple[float, ...] = (1e-2, 1e-3)
    flip: bool = True
    verdict_encoder: str = "mobilefacenet"
    verdict_far: float = 1e-2
    verdict_ceiling: float = 0.5

    def __post_init__(self) -> None:
        require(
            self.verdict_far in self.fars,
            "verdict_far",
            f"must be one of fars {list(self.fars)}, got {self.verdict_far}",
        )
        require(0.0 < self.verdict_ceiling <= 1.0, "verdict_ceiling", f"must be in (0, 1], got {self.verdict_ceiling}")


@dataclass(frozen=True)
class InversionConfig:
    """The ``pixel_inversion`` ceiling row: each target *image* inverted into the generator.

    Per target, ``searches`` W latents (the seed's starts, mapped from ``z ~ N(0, I)``,
    broadcast to W+) are optimised with Adam (``lr``, x0.1 after ``lr_decay_at`` of the
    ``steps``) to minimise the pixel mean squared error between the rendered face (the
    attack's own renderer: truncation, fixed noise, face crop, canvas) and the target
    canvas; the start with the lowest final error is kept. It sees the image itself, which
    no attack does, so its success on the unseen encoders bounds what any latent search
    through this generator can reach: a generator that cannot reproduce a held-out face
    from its pixels cannot reproduce it from a template either.
    """

    searches: int = 12
    steps: int = 150
    lr: float = 0.05
    lr_decay_at: float = 0.75
    searches_per_task: int = 12

    def __post_init__(self) -> None:
        for key in ("searches", "steps", "searches_per_task"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0.0 <= self.lr_decay_at <= 1.0, "lr_decay_at", f"must be in [0, 1], got {self.lr_decay_at}")

    @property
    def decay_step(self) -> int:
        return round(self.lr_decay_at * self.steps)


@dataclass(frozen=True)
class QuickConfig:
    """What ``--quick`` shrinks (for a minutes-long smoke run, not for numbers)."""

    num_searches: int = 4
    searches_per_task: int = 2
    iterations: int = 8
    top_k: int = 2
    gan_iterations: int = 30
    encoder_epochs: int = 3
    max_targets: int = 3
    inversion_searches: int = 2
    inversion_steps: int = 10

    def __post_init__(self) -> None:
        keys = (
            "num_searches",
            "searches_per_task",
            "iterations",
            "top_k",
            "gan_iterations",
            "encoder_epochs",
            "max_targets",
        )
        for key in (*keys, "inversion_searches", "inversion_steps"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class AlsuvConfig:
    """The ``alsuv_attack`` job."""

    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorSetup = field(default_factory=GeneratorSetup)
    encoders: EncoderSet = field(default_factory=EncoderSet)
    attack: AttackConfig = field(default_factory=AttackConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    quick: QuickConfig = field(default_factory=QuickConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    # Attack only the first this many targets; None attacks every target (``--quick`` sets it).
    max_targets: int | None = None

    def __post_init__(self) -> None:
        require(
            self.max_targets is None or self.max_targets >= 1,
            "max_targets",
            f"must be >= 1 or null, got {self.max_targets}",
        )
        require(
            self.evaluation.verdict_encoder in self.encoders.unseen,
            "evaluation.verdict_encoder",
            f"is {self.evaluation.verdict_encoder!r}, not one of the unseen encoders {sorted(self.encoders.unseen)}",
        )
        self._check_face_sizes()

    @property
    def face_size(self) -> int:
        """The side every face is compared at: real canvases, generated faces, the report's cells.

        The one source of truth for ALSUV's sizes. The renderer brings each generated face
        crop to it, the evaluation checks reconstructions against it, the report draws every
        cell at it; encoders then resize it to their own inputs.
        """
        return self.data.canvas.size

    def _check_face_sizes(self) -> None:
        """Reject a canvas and a generator that cannot meet (checked before Ray starts).

        A generator trained here learns whole canvases, so its output must be the canvas and
        all of it the face. A loaded generator's face crop is resized *down* to the canvas;
        a crop smaller than the canvas would be blown up, leaving reconstructions blurrier
        than the real faces they are compared with, which is a mistyped size, not a choice.
        """
        setup, canvas = self.generator, self.data.canvas.size
        if setup.checkpoint is None:
            require(
                setup.model.size == canvas,
                "generator.model.size",
                f"is {setup.model.size} but data.canvas.size is {canvas}: "
                "a generator trained here learns the canvases, so they must agree",
            )
            require(
                (setup.crop.size_fraction, setup.crop.v_offset_fraction) == (1.0, 0.0),
                "generator.crop",
                "must be {size_fraction: 1.0, v_offset_fraction: 0.0} for a generator trained here "
                f"(its whole output is a canvas face), got {setup.crop}",
            )
        else:
            require(
                setup.face_side >= canvas,
                "data.canvas.size",
                f"is {canvas} but the generator's face crop is only {setup.face_side} px (generator.model.size "
                f"{setup.model.size} x generator.crop.size_fraction {setup.crop.size_fraction:g}): generated faces are "
                f"resized down to the canvas, never up; use a canvas of at most {setup.face_side}",
            )


def cpu_generator() -> GeneratorConfig:
    return GeneratorConfig(size=32, style_dim=128, n_mlp=2, channel_multiplier=1, channel_base=1024, channel_max=64)


def cpu_config() -> AlsuvConfig:
    """The laptop size (see the module docstring for every reduction)."""
    return AlsuvConfig(
        generator=GeneratorSetup(
            model=cpu_generator(),
            checkpoint=None,
            grayscale=True,
            crop=FaceCropConfig(size_fraction=1.0, v_offset_fraction=0.0),
            train=GanTrainConfig(
                iterations=12000,
                path_length_weight=0.0,
                ema_kimg=1.0,
                diffaugment=("color", "translation", "cutout"),
            ),
        ),
        data=DataConfig(targets_per_identity=3),
        attack=AttackConfig(num_searches=12, searches_per_task=6, iterations=30, top_k=3),
    )


def quick_config(config: AlsuvConfig) -> AlsuvConfig:
    """``config`` shrunk by its ``quick`` section."""
    q = config.quick
    attack = replace(
        config.attack,
        num_searches=q.num_searches,
        searches_per_task=q.searches_per_task,
        iterations=q.iterations,
        top_k=q.top_k,
    )
    generator = replace(
        config.generator,
        train=replace(config.generator.train, iterations=q.gan_iterations, checkpoint_every=q.gan_iterations),
    )

    def shrink(encoder: EncoderConfig) -> EncoderConfig:
        return replace(encoder, train=replace(encoder.train, epochs=min(encoder.train.epochs, q.encoder_epochs)))

    encoders = replace(
        config.encoders,
        source=shrink(config.encoders.source),
        validation=shrink(config.encoders.validation),
        unseen={name: shrink(e) for name, e in config.encoders.unseen.items()},
    )
    inversion = replace(
        config.inversion, searches=q.inversion_searches, steps=q.inversion_steps, searches_per_task=q.inversion_searches
    )
    return replace(
        config, attack=attack, generator=generator, encoders=encoders, inversion=inversion, max_targets=q.max_targets
    )
