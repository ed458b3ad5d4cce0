"""DCAE: Discriminative Compact AutoEncoder for one-class novelty detection (Park, Jung and
Teoh, "Discriminative Multi-level Reconstruction under Compact Latent Space for One-Class
Novelty Detection", ICPR 2020).

No official code exists; the abstract fixes three ideas and leaves the rest open:

(a) a compact latent space that represents the in-class data bijectively and without
    collapse, obtained by reconstructing through the internal layers of a GAN discriminator;
(b) out-class inputs land in the same compact space and are reconstructed poorly;
(c) the novelty score is the query-reconstruction dissimilarity in the discriminator's
    feature space.

raylab's choices for what the abstract leaves open, and why:

* **Compact set and how it is kept filled.** The encoder ends in tanh, so every code of
  every input, in-class or not, lies in the cube [-1, 1]^d (a hard, architectural bound: (b)
  holds by construction, no penalty can be traded away). Collapse is fought from both sides:
  a latent discriminator D_z plays the non-saturating GAN game between encoder codes and the
  uniform distribution on the cube (the encoder is pushed to use the whole cube, like an
  adversarial autoencoder / OCGAN's latent discriminator), and the decoder is trained so that
  decoded *uniform draws* fool the image discriminator D (every point of the cube decodes to
  an in-class-looking image). A uniform prior rather than a Gaussian because a bounded set
  needs a prior with the same support; an adversarial match rather than a divergence
  penalty (e.g. MMD) because it needs no kernel bandwidth and shares the GAN machinery.
* **Multi-level reconstruction (a).** The encoder/decoder loss is ``pixel`` x MSE +
  ``feature`` x d_D(x, G(E(x))), where d_D sums over every block of D the mean squared
  difference of the feature maps divided by that level's mean squared activation on
  in-class images (uniform level weights), + ``image_adversarial`` x (reconstructions and
  decoded prior draws fool D) + ``latent_adversarial`` x (codes fool D_z). D is trained
  only as a GAN discriminator (real images vs decoded prior draws;
  ``reconstructions_as_fakes`` adds the reconstructions as fakes), never by the
  reconstruction term, so it cannot learn to hide reconstruction errors; in the
  encoder/decoder step both discriminators are frozen functions.
* **Score (c).** d_D(x, G(E(x))) with the trained D (eval mode), the same distance as the
  loss, with the level scales measured once on the training images after training
  (:meth:`DCAE.calibrate`): dividing by each level's energy keeps the levels comparable,
  and a fixed scale keeps scores of different queries on one footing.
* **GAN stabilisers.** Spectral normalisation in D and D_z, the non-saturating logistic
  loss, Adam with beta1 = 0.5, one update of each network per step.
* **Loss weights.** Unknown in the paper; at the full size selected per normal class and
  seed by Optuna (TPE) on in-class data only: held-out training images against
  pseudo-novelties made from them (quadrant shuffle, quarter turn, vertical flip), see
  :mod:`.selection`. At the CPU size the selection is off: its affordable trials (4 epochs)
  rank weightings unlike the 30-epoch trainings they stand for (``benchmarks/dcae_design.py``).
* **Ablations from the same code** (:data:`.config.METHODS`): ``ae_pixel`` (same encoder
  and decoder, no tanh, no discriminators, pixel loss and pixel score),
  ``dcae_pixel_metric`` (the trained DCAE scored in pixels), ``dcae_no_adv`` (DCAE without
  the latent game; D and the decoded-prior term stay, so only D_z is removed).

Modules: ``config`` (typed settings, CPU size), ``model`` (plain torch modules and the
metric), ``losses``, ``training`` (one step; in-process and Ray Train loops), ``selection``,
``scorer`` (the deployable MLflow model), ``report`` and ``experiment`` (the ``dcae_sweep``
job, ``jobs/dcae_sweep.py``); the one-class protocol is the family's,
:mod:`raylab.tasks.one_class`. The package exports the typed config only, so the job's command
line does not load torch; the network and metric are :class:`.model.DCAE` and
:func:`.model.feature_distance`.
"""

from raylab.methods.dcae.config import (
    METHODS,
    TRAINED,
    DCAESweepConfig,
    LossWeights,
    NetworkConfig,
    TrainConfig,
    cpu_config,
)

__all__ = [
    "DCAESweepConfig",
    "LossWeights",
    "METHODS",
    "NetworkConfig",
    "TRAINED",
    "TrainConfig",
    "cpu_config",
]
