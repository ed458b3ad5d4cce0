"""Training DCAE and its ablations: one plain-PyTorch step, run in-process or on Ray Train.

One training step of a variant (:class:`VariantTrainer`), on a batch x of in-class images
and a batch u of draws from the uniform prior on the latent cube [-1, 1]^d:

1. encode z = E(x) and decode once: G([z; u]) -> reconstructions x_r and samples x_g;
2. image discriminator D: real x against fake x_g (detached; with
   ``reconstructions_as_fakes`` also x_r);
3. latent discriminator D_z: real u against fake z (detached);
4. encoder + decoder: ``pixel`` MSE(x_r, x) + ``feature`` d_D(x, x_r) (the multi-level
   distance on D's internal feature maps, :func:`~raylab.methods.dcae.model.feature_distance`,
   with D's features of x as a fixed target and their batch energy as the level scales)
   + ``image_adversarial`` (x_r and x_g fool D) + ``latent_adversarial`` (z fools D_z).

D is updated only by its own real/fake loss, never by the reconstruction term: a
discriminator trained to make reconstructions look close would learn to ignore exactly the
differences the score must see. In step 4 the discriminators are frozen functions
(:func:`frozen`). Every module that goes through DDP is called once per backward pass (real
and fake batches are concatenated), which DDP requires.

Variants switch terms off (:data:`~raylab.methods.dcae.config.TRAINED`): ``dcae_no_adv``
drops D_z, ``ae`` drops both discriminators and the tanh bound. All variants of one run see
the same batches and the same prior draws in the same order.

Randomness comes only from generators seeded by (seed, epoch, step, rank), never from
global state, so a run resumed from its checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raylab.methods.dcae.config import LossWeights, NetworkConfig, TrainConfig, TrainedVariant
from raylab.methods.dcae.losses import discriminator_loss, fooling_loss, to_unit_range
from raylab.methods.dcae.model import DCAE, feature_distance

FINAL_STATE = "final_state_e{epochs}.pt"
VariantSpec = tuple[TrainedVariant, LossWeights]


def build_model(network: NetworkConfig, variant: TrainedVariant, channels: int, image_size: int) -> DCAE:
    return DCAE(
        channels,
        image_size,
        width=network.width,
        latent_dim=network.latent_dim,
        downsamplings=network.downsamplings,
        latent_hidden=network.latent_hidden,
        bounded_latent=variant.bounded_latent,
        image_gan=variant.image_gan,
        latent_adversarial=variant.latent_adversarial,
        feature_level_weights=network.feature_level_weights,
        discriminator_width=network.discriminator_width,
    )


class VariantTrainer:
    """Optimisers and the training step of one variant; modules may be DDP-wrapped by ``wrap``."""

    def __init__(self, model: DCAE, weights: LossWeights, train: TrainConfig) -> None:
        self.model = model
        self.weights = weights
        self.encoder: torch.nn.Module = model.encoder
        self.decoder: torch.nn.Module = model.decoder
        self.image_discriminator: torch.nn.Module | None = model.image_discriminator
        self.latent_discriminator: torch.nn.Module | None = model.latent_discriminator
        adam = dict(lr=train.lr, betas=tuple(train.betas))
        autoencoder = list(model.encoder.parameters()) + list(model.decoder.parameters())
        self.optimizers: dict[str, torch.optim.Optimizer] = {"autoencoder": torch.optim.Adam(autoencoder, **adam)}
        if model.image_discriminator is not None:
            self.optimizers["image_discriminator"] = torch.optim.Adam(model.image_discriminator.parameters(), **adam)
        if model.latent_discriminator is not None:
            self.optimizers["latent_discriminator"] = torch.optim.Adam(model.latent_discriminator.parameters(), **adam)
        self.reconstructions_as_fakes = train.reconstructions_as_fakes
        self.device = torch.device("cpu")

    def wrap(self, prepare: Callable[[torch.nn.Module], torch.nn.Module], device: torch.device) -> None:
        """Move to ``device`` and wrap each module (e.g. with the harness's ``prepare`` for DDP)."""
        self.device = device
        self.encoder = prepare(self.encoder)
        self.decoder = prepare(self.decoder)
        if self.image_discriminator is not None:
            self.image_discriminator = prepare(self.image_discriminator)
        if self.latent_discriminator is not None:
            self.latent_discriminator = prepare(self.latent_discriminator)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])

    def train(self) -> None:
        self.model.train()

    def step(self, images: torch.Tensor, prior: torch.Tensor) -> dict[str, float]:
        """One update of every network of the variant on ``images`` (in [-1, 1]) and ``prior`` draws."""
        w = self.weights
        n = len(images)
        codes = self.encoder(images)
        gan = self.image_discriminator is not None
        decoded = self.decoder(torch.cat([codes, prior]) if gan else codes)
        reconstructions, samples = decoded[:n], decoded[n:]
        metrics: dict[str, float] = {}

        if gan:
            fakes = (
                [reconstructions.detach(), samples.detach()] if self.reconstructions_as_fakes else [samples.detach()]
            )
            logits, _ = self.image_discriminator(torch.cat([images, *fakes]))
            loss_d = discriminator_loss(logits[:n], logits[n:])
            self._update("image_discriminator", loss_d)
            metrics["image_discriminator"] = loss_d.item()
        if self.latent_discriminator is not None:
            logits = self.latent_discriminator(torch.cat([prior, codes.detach()]))
            loss_z = discriminator_loss(logits[:n], logits[n:])
            self._update("latent_discriminator", loss_z)
            metrics["latent_discriminator"] = loss_z.item()

        pixel = F.mse_loss(reconstructions, images)
        loss = w.pixel * pixel if gan else pixel  # the plain AE has the pixel loss only
        metrics["pixel"] = pixel.item()
        if gan:
            with frozen(self.model.image_discriminator) as critic:
                with torch.no_grad():
                    _, targets = critic(images)
                logits, features = critic(torch.cat([reconstructions, samples]))
            feature = feature_distance(targets, [f[:n] for f in features], self.model.feature_level_weights).mean()
            adversarial = fooling_loss(logits)
            loss = loss + w.feature * feature + w.image_adversarial * adversarial
            metrics["feature"] = feature.item()
            metrics["image_adversarial"] = adversarial.item()
        if self.latent_discriminator is not None:
            with frozen(self.model.latent_discriminator) as critic:
                latent = fooling_loss(critic(codes))
            loss = loss + w.latent_adversarial * latent
            metrics["latent_adversarial"] = latent.item()
        self._update("autoencoder", loss)
        metrics["loss"] = loss.item()
        return metrics

    def _update(self, name: str, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """The bare module (never its DDP wrapper) with its parameters frozen.

    The encoder/decoder step only needs gradients *through* a discriminator, not of its
    weights: freezing skips the weight gradients (most of the step's cost), and calling the
    unwrapped module keeps DDP out of a pass whose discriminator gradients are never used.
    """
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def make_trainers(
    variants: Mapping[str, VariantSpec],
    network: NetworkConfig,
    train: TrainConfig,
    channels: int,
    image_size: int,
    seed: int,
) -> dict[str, VariantTrainer]:
    """Fresh variants; initial weights depend only on (seed, variant position), so every worker agrees."""
    trainers = {}
    for index, (name, (variant, weights)) in enumerate(variants.items()):
        torch.manual_seed(seed * 1_000 + index)
        trainers[name] = VariantTrainer(build_model(network, variant, channels, image_size), weights, train)
    return trainers


def run_epoch(
    trainers: Mapping[str, VariantTrainer],
    images: torch.Tensor,
    epoch: int,
    *,
    seed: int,
    batch_size: int,
    latent_dim: int,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """One pass over this worker's shard of a seeded permutation; mean metrics per variant.

    Every worker runs the same number of steps (collectives stay aligned) and drops its last
    incomplete batch. ``<variant>/first_step_loss`` is the loss of the epoch's first step.
    """
    per_worker = max(1, batch_size // world)
    order = torch.randperm(len(images), generator=_generator(seed, epoch))[rank::world]
    steps = max(1, (len(images) // world) // per_worker)
    for trainer in trainers.values():
        trainer.train()
    sums: dict[str, dict[str, float]] = {name: {} for name in trainers}
    first: dict[str, float] = {}
    for step in range(steps):
        rows = order[step * per_worker : (step + 1) * per_worker]
        batch = images[rows]
        prior = torch.rand(len(rows), latent_dim, generator=_generator(seed, epoch, step, rank)) * 2 - 1
        for name, trainer in trainers.items():
            metrics = trainer.step(batch.to(trainer.device), prior.to(trainer.device))
            if step == 0:
                first[name] = metrics["loss"]
            for key, value in metrics.items():
                sums[name][key] = sums[name].get(key, 0.0) + value
    out = {f"{name}/{key}": value / steps for name, values in sums.items() for key, value in values.items()}
    out.update({f"{name}/first_step_loss": value for name, value in first.items()})
    return out


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume, wrap for DDP, run the epochs, checkpoint every epoch."""
    import ray
    import ray.train
    import ray.train.torch

    from raylab.train import prepare, report_epoch, restore_state

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train: TrainConfig = config["train"]
    torch.set_num_threads(train.torch_threads)
    images = to_unit_range(torch.from_numpy(np.array(ray.get(config["images"]))))
    trainers = make_trainers(
        config["variants"], config["network"], train, images.shape[1], images.shape[-1], config["seed"]
    )
    state = restore_state()
    start, history = 0, []
    if state is not None:
        for name, trainer in trainers.items():
            trainer.load_state_dict(state["variants"][name])
        start, history = state["epoch"] + 1, list(state["history"])
    device = ray.train.torch.get_device()
    for trainer in trainers.values():
        trainer.wrap(prepare, device)
    for epoch in range(start, config["epochs"]):
        metrics = {"epoch": epoch} | run_epoch(
            trainers,
            images,
            epoch,
            seed=config["seed"],
            batch_size=train.batch_size,
            latent_dim=config["network"].latent_dim,
            rank=rank,
            world=world,
        )
        history.append(metrics)
        state = {"variants": {n: t.state_dict() for n, t in trainers.items()}, "epoch": epoch, "history": history}
        report_epoch(metrics, state)


@dataclass
class TrainedModels:
    """Trained models by variant name (eval mode, CPU), the per-epoch metrics, where the run lives."""

    models: dict[str, DCAE]
    history: list[dict[str, float]]
    run_path: str | None


def calibrated(model: DCAE, images: np.ndarray) -> DCAE:
    """The model in eval mode, its score's feature scales measured on uint8 in-class ``images``."""
    model.eval()
    if model.image_discriminator is not None:
        model.calibrate(to_unit_range(torch.from_numpy(np.array(images))))
    return model


def _models_from_state(state: Mapping[str, Any], variants, network, images: np.ndarray) -> dict[str, DCAE]:
    models = {}
    for name, (variant, _) in variants.items():
        model = build_model(network, variant, images.shape[1], images.shape[-1])
        model.load_state_dict(state["variants"][name]["model"])
        models[name] = calibrated(model, images)
    return models


def run_name(
    images: np.ndarray, variants: Mapping[str, VariantSpec], network: NetworkConfig, train: TrainConfig, seed: int
) -> str:
    """A content hash: the same data and settings resume (or reuse) the same run.

    The epoch count is left out on purpose: training longer continues the run from its last
    checkpoint (the learning rate is constant, so nothing else depends on the total).
    """
    from raylab.train.harness import run_name as train_run_name

    resumable = {k: v for k, v in dataclasses.asdict(train).items() if k not in ("epochs", "checkpoints_to_keep")}
    settings = {"variants": dict(variants), "network": network, "train": resumable, "seed": seed}
    return train_run_name("dcae", images, settings=settings)


def check_training_images(images: np.ndarray) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"training images must be a uint8 array (N, C, H, W), got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError("no training images: the normal class has no images in its training split")
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be square, got {images.shape[2]}x{images.shape[3]} (set protocol.resize_to)")


def train_variants(
    images: np.ndarray,
    variants: Mapping[str, VariantSpec],
    network: NetworkConfig,
    train: TrainConfig,
    *,
    seed: int,
    epochs: int | None = None,
    storage_path: str | None = None,
    name: str | None = None,
) -> TrainedModels:
    """Train every variant on uint8 ``images`` (N, C, H, W) with Ray Train; resumes or reuses a run."""
    import ray

    from raylab.train import TrainSpec, fit, load_result_state
    from raylab.train.harness import load_state

    check_training_images(images)
    epochs = train.epochs if epochs is None else epochs
    spec = TrainSpec(
        name=name or run_name(images, variants, network, train, seed),
        num_workers=train.num_workers,
        cpus_per_worker=train.cpus_per_worker,
        storage_path=storage_path,
        checkpoints_to_keep=train.checkpoints_to_keep,
        stage="DCAE and its variants",
    )
    final = Path(spec.resolved_storage()) / spec.name / FINAL_STATE.format(epochs=epochs)
    if final.is_file():
        state = load_state(final)
        return TrainedModels(_models_from_state(state, variants, network, images), state["history"], str(final.parent))
    loop_config = {
        "images": ray.put(np.ascontiguousarray(images)),
        "variants": dict(variants),
        "network": network,
        "train": train,
        "seed": seed,
        "epochs": epochs,
    }
    result = fit(train_loop, loop_config, spec)
    if result.error is not None:
        raise RuntimeError(f"DCAE training run {spec.name} failed") from result.error
    state = load_result_state(result)
    if state["epoch"] != epochs - 1:
        raise RuntimeError(f"run {spec.name} ended at epoch {state['epoch'] + 1}, not {epochs}")
    _save_atomically({"variants": state["variants"], "history": state["history"]}, final)
    return TrainedModels(_models_from_state(state, variants, network, images), state["history"], str(result.path))


def train_in_process(
    images: np.ndarray,
    variants: Mapping[str, VariantSpec],
    network: NetworkConfig,
    train: TrainConfig,
    *,
    seed: int,
    epochs: int,
    device: str | torch.device | None = None,
) -> TrainedModels:
    """The same epochs in this process, without a Train worker group: for the short selection
    trainings, where a worker group's start-up would cost more than the training.

    ``device``: where the steps run (a selection task given an accelerator passes ``cuda``);
    batches and prior draws are still made on the CPU from the same seeded generators, and the
    returned models are back on the CPU, so scoring and calibration do not depend on it.
    """
    check_training_images(images)
    tensor = to_unit_range(torch.from_numpy(np.ascontiguousarray(images)))
    trainers = make_trainers(variants, network, train, images.shape[1], images.shape[-1], seed)
    target = torch.device(device) if device is not None else torch.device("cpu")
    if target.type != "cpu":
        for trainer in trainers.values():
            trainer.model.to(target)  # in place: the optimisers keep their parameters
            trainer.wrap(lambda module: module, target)
    history = []
    for epoch in range(epochs):
        metrics = run_epoch(
            trainers, tensor, epoch, seed=seed, batch_size=train.batch_size, latent_dim=network.latent_dim
        )
        history.append({"epoch": epoch} | metrics)
    return TrainedModels({n: calibrated(t.model.to("cpu"), images) for n, t in trainers.items()}, history, None)


@torch.no_grad()
def score_images(model: DCAE, images: np.ndarray, space: str, batch_size: int = 500) -> np.ndarray:
    """Novelty scores (higher = more novel) of uint8 ``images`` in ``space``."""
    model.eval()
    out = [
        model.scores(to_unit_range(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))), space).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def reconstruct(model: DCAE, images: np.ndarray) -> np.ndarray:
    """uint8 reconstructions of uint8 ``images``."""
    model.eval()
    decoded = model.reconstruct(to_unit_range(torch.from_numpy(np.ascontiguousarray(images))))
    return ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    from raylab.train.harness import save_state

    save_state(payload, staging)  # read back with weights_only=True
    os.replace(staging, path)
