"""DCAE configuration: the network, the loss weights, training, selection and the protocol.

DCAE (Park, Jung and Teoh, ICPR 2020) has no public code, so no value below is "official":
each default is raylab's choice, stated with its reason in :mod:`raylab.methods.dcae` and
its README (``raylab/methods/dcae/README.md``). The class defaults are the full size (a
GPU run: width 64, latent 64, 200 epochs, 30 selection trials in rounds of 6);
:func:`cpu_config` is the size that runs on a 2-core laptop, every reduction listed in its
docstring. The job's profiles are ``cpu`` (:func:`cpu_config`, the default) and ``full``
(the class defaults). The per-dataset YAMLs in ``raylab/configs/dcae/`` spell out the CPU
size; ``mnist_full.yaml`` and ``cifar10_full.yaml`` spell out the full one (so either
works over any profile).

Methods are switches on one code path (:data:`METHODS`): what is trained (``TRAINED``) and
in which space the novelty score is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from raylab.config import require
from raylab.tasks.one_class.config import ProtocolConfig


@dataclass
class NetworkConfig:
    """Encoder, decoder and discriminators (channels and image size come from the data).

    ``downsamplings`` stride-2 convolutions take an image of side S to S / 2^n (S must be
    divisible by 2^n: 28 px MNIST allows 2, 32 px CIFAR up to 5). The image discriminator
    has ``downsamplings + 1`` internal levels (one per stride-2 block);
    their outputs are the feature maps of the multi-level reconstruction and of the score.
    """

    width: int = 64
    latent_dim: int = 64
    downsamplings: int = 3
    latent_hidden: int = 512
    # The image discriminator's base width; None = ``width``. Its feature maps are the score's
    # metric, so a wider D is a richer metric at the same encoder/decoder size.
    discriminator_width: int | None = None
    # Weight of each discriminator level in the feature distance; None = all levels, weight 1.
    feature_level_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("width", "latent_dim", "downsamplings", "latent_hidden"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(
            self.discriminator_width is None or self.discriminator_width >= 1,
            "discriminator_width",
            f"must be >= 1 or null, got {self.discriminator_width}",
        )
        weights = self.feature_level_weights
        require(
            weights is None or all(w >= 0 for w in weights), "feature_level_weights", f"must be >= 0, got {weights}"
        )


@dataclass
class LossWeights:
    """The encoder/decoder objective: a weighted sum of four terms (selected per class by Optuna).

    * ``feature``: multi-level reconstruction through the discriminator's internal layers;
    * ``pixel``: pixel reconstruction (MSE on [-1, 1] images);
    * ``image_adversarial``: the decoder makes reconstructions and decoded prior samples
      look real to the image discriminator (every latent point decodes to an in-class image);
    * ``latent_adversarial``: the encoder makes its codes indistinguishable from the uniform
      prior on the compact latent cube (no empty region, no collapse).
    """

    feature: float = 1.0
    pixel: float = 1.0
    image_adversarial: float = 0.05
    latent_adversarial: float = 0.05

    def __post_init__(self) -> None:
        for key in ("feature", "pixel", "image_adversarial", "latent_adversarial"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")


@dataclass
class TrainConfig:
    """Adam with beta1 = 0.5 and one constant learning rate for every network (the DCGAN recipe)."""

    epochs: int = 200
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    num_workers: int = 2
    # < 1 CPU per worker so that a Train run fits inside a Tune trial that reserves ~0 CPU.
    cpus_per_worker: float = 0.99
    checkpoints_to_keep: int = 1
    torch_threads: int = 1
    # The image discriminator's fakes: decoded prior draws, and with True also reconstructions.
    # False: D then learns what in-class images look like rather than what reconstruction
    # artefacts look like, and its features ranked novelties better on the development digits.
    reconstructions_as_fakes: bool = False

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "num_workers", "checkpoints_to_keep", "torch_threads"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(all(0 <= b < 1 for b in self.betas), "betas", f"must lie in [0, 1), got {self.betas}")
        require(self.cpus_per_worker > 0, "cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")


@dataclass
class SelectionConfig:
    """Optuna (TPE) over the loss weights, per normal class and seed, on in-class data only.

    ``val_fraction`` of the class's training images are held out; each trial trains DCAE on
    the rest for ``epochs`` epochs and is scored by the AUROC of its own novelty score
    between the held-out in-class images and pseudo-novelties made from them (the
    transforms in ``pseudo_novelties``). No novel-class image is ever seen. The first trial
    is the default :class:`LossWeights`; the selected weights are then trained on all of the
    class's training images.

    Each trial trains as a Ray task of its own, asking for ``cpus_per_trial`` CPUs (and the
    job's ``resources.accelerators_per_train_worker``), so on a cluster the trials spread over
    its workers. They run in rounds of ``max_concurrent``: Optuna proposes a round's
    candidates together and learns from their results in trial order. The round size is part
    of the search (a round of one is the sequential study; larger rounds propose from less
    feedback), so the selection is deterministic for a given seed and config on any cluster.
    """

    enabled: bool = True
    n_trials: int = 30
    epochs: int = 50
    max_concurrent: int = 6
    # < 1 CPU, like a Train worker, so a laptop's two trials can each run a selection task.
    cpus_per_trial: float = 0.99
    val_fraction: float = 0.2
    feature_range: tuple[float, float] = (0.1, 10.0)
    pixel_range: tuple[float, float] = (0.1, 10.0)
    image_adversarial_range: tuple[float, float] = (0.005, 0.5)
    latent_adversarial_range: tuple[float, float] = (0.005, 0.5)
    pseudo_novelties: tuple[str, ...] = ("quadrant_shuffle", "rotate90", "vflip")

    def __post_init__(self) -> None:
        require(self.n_trials >= 1, "n_trials", f"must be >= 1, got {self.n_trials}")
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.max_concurrent >= 1, "max_concurrent", f"must be >= 1, got {self.max_concurrent}")
        require(self.cpus_per_trial > 0, "cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        require(0.0 < self.val_fraction < 1.0, "val_fraction", f"must lie in (0, 1), got {self.val_fraction}")
        for key in ("feature_range", "pixel_range", "image_adversarial_range", "latent_adversarial_range"):
            low, high = getattr(self, key)
            require(
                0 < low <= high,
                key,
                f"must be (low, high) with 0 < low <= high (a log-uniform range), got {(low, high)}",
            )
        require(len(self.pseudo_novelties) >= 1, "pseudo_novelties", "must name at least one transform")


@dataclass
class QuickConfig:
    """What ``--quick`` keeps: the first seed, two normal classes, fewer epochs and trials, a
    test subsample (the job's ``quick`` hook writes these into the config it runs)."""

    normal_classes: tuple[int, ...] = (0, 1)
    epochs: int = 4
    selection_trials: int = 2
    selection_epochs: int = 2
    max_test_images: int = 1000

    def __post_init__(self) -> None:
        for key in ("epochs", "selection_trials", "selection_epochs", "max_test_images"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(len(self.normal_classes) >= 1, "normal_classes", "must list at least one class")


@dataclass
class DCAESweepConfig:
    dataset_options: dict[str, Any] = field(default_factory=dict)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    quick: QuickConfig = field(default_factory=QuickConfig)
    methods: tuple[str, ...] = ("dcae", "ae_pixel", "dcae_pixel_metric", "dcae_no_adv")
    seeds: tuple[int, ...] = (0, 1, 2)
    # None = every class of the dataset.
    normal_classes: tuple[int, ...] | None = None
    score_batch_size: int = 500
    reconstructions_per_side: int = 6
    # A seeded, class-stratified subsample of the test split (``--quick``); None = all of it.
    max_test_images: int | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        require(
            bool(self.methods) and not unknown, "methods", f"unknown {unknown} or none given; known: {sorted(METHODS)}"
        )
        require(len(self.seeds) >= 1, "seeds", "must list at least one seed")
        require(
            self.normal_classes is None or len(self.normal_classes) >= 1,
            "normal_classes",
            "must list a class, or be null for all",
        )
        require(self.score_batch_size >= 1, "score_batch_size", f"must be >= 1, got {self.score_batch_size}")
        require(
            self.reconstructions_per_side >= 1,
            "reconstructions_per_side",
            f"must be >= 1, got {self.reconstructions_per_side}",
        )
        require(
            self.max_test_images is None or self.max_test_images >= 1,
            "max_test_images",
            f"must be >= 1 or null, got {self.max_test_images}",
        )


ScoreSpace = Literal["discriminator", "pixel"]


@dataclass(frozen=True)
class TrainedVariant:
    """What one training run learns. ``image_gan``: train the image discriminator and use
    its feature maps in the reconstruction loss; ``latent_adversarial``: the encoder plays
    the latent game against the uniform prior; ``bounded_latent``: codes pass a tanh."""

    bounded_latent: bool
    image_gan: bool
    latent_adversarial: bool


# The trained models. ``ae`` is the plain autoencoder: unbounded latent, pixel loss only.
TRAINED: dict[str, TrainedVariant] = {
    "dcae": TrainedVariant(bounded_latent=True, image_gan=True, latent_adversarial=True),
    "dcae_no_adv": TrainedVariant(bounded_latent=True, image_gan=True, latent_adversarial=False),
    "ae": TrainedVariant(bounded_latent=False, image_gan=False, latent_adversarial=False),
}

# Method name -> (trained model, score space). dcae_pixel_metric reuses DCAE's weights.
METHODS: dict[str, tuple[str, ScoreSpace]] = {
    "dcae": ("dcae", "discriminator"),
    "dcae_pixel_metric": ("dcae", "pixel"),
    "dcae_no_adv": ("dcae_no_adv", "discriminator"),
    "ae_pixel": ("ae", "pixel"),
}


def trained_for(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The trained variants the given methods need, in a stable order; unknown names fail."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise KeyError(f"unknown DCAE methods {unknown}; known: {sorted(METHODS)}")
    needed = {METHODS[m][0] for m in methods}
    return tuple(name for name in TRAINED if name in needed)


def cpu_config() -> DCAESweepConfig:
    """The ``cpu`` profile: the laptop size (2 shared cores; ``raylab/configs/dcae/mnist.yaml``
    spells out the same values).

    Reductions from the full size: width 16 instead of 64, latent 16 instead of 64, two
    stride-2 stages (28 or 32 px -> 7 or 8), latent discriminator hidden 128 instead of 512;
    30 epochs instead of 200 with lr 1e-3 instead of 2e-4 and batch 32 instead of 64 (a
    class has a few hundred images: 30 epochs are only 240-470 steps; 30 is where the
    in-class pseudo-novelty objective of the default design stops rising,
    ``benchmarks/dcae_design.py``; ``dcae/cifar10.yaml`` trains 20, by the same rule); one
    Train worker per trial (two trials run in parallel instead of one trial on two workers,
    which keeps both cores busy).

    The loss-weight selection is off at this size: its affordable trials (4 of 4 epochs) rank
    weightings unlike the 30-epoch trainings they stand for (the designs' objective at epoch 5
    against epoch 30: Spearman 0.05 averaged over the MNIST classes), and with it the MNIST
    test mean fell from 0.951 to 0.929 (README). Switched on (``--set selection.enabled=true``)
    it runs 4 Optuna trials of 4 epochs instead of 30 of 50, one at a time, instead of rounds of 6.
    """
    return DCAESweepConfig(
        network=NetworkConfig(width=16, latent_dim=16, downsamplings=2, latent_hidden=128),
        train=TrainConfig(epochs=30, batch_size=32, lr=1e-3, num_workers=1),
        selection=SelectionConfig(enabled=False, n_trials=4, epochs=4, max_concurrent=1),
    )
