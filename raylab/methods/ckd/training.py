"""Training CKD (or an ablation) with Ray Train: DDP workers, a checkpoint each epoch, resume.

The per-worker loop is plain PyTorch on the raylab harness (:mod:`raylab.train.harness`):
``resume`` restores weights, optimizer, epoch, history and the best weights so far from the
run's latest checkpoint; ``prepare`` wraps the network in DDP; ``report_epoch`` reports the
epoch's metrics and has rank 0 write the checkpoint.

Data parallelism is exact in what each optimizer step sees: every worker draws the same
permutation (and the same flip decisions) of the fit pairs each epoch, and global batch ``b``
is split into ``world`` contiguous chunks of ``b / world`` pairs, one per worker, so one
worker and ``N`` workers take the same steps over the same pairs; DDP averages the chunk
gradients, which equals the global batch's gradient up to BatchNorm, whose statistics are
per worker (as with any data-parallel BatchNorm).  The last incomplete batch of each epoch's
permutation is skipped (a different one each epoch), as a DDP sampler with ``drop_last``
does; it also keeps BatchNorm from ever seeing a batch of one.

The learning rate follows the step schedule of :class:`~raylab.methods.ckd.config.TrainConfig`
(official: 0.1, / 10 at 1/3, 2/3 and 8/9 of the epochs). After every epoch the periocular
branch is evaluated on the validation pairs (held-out images of the *training* identities);
the weights with the best periocular top-1 so far are kept (ties broken by the lower
periocular validation cross-entropy, since top-1 on a few dozen images saturates) and are
what training returns.

The run's name is a hash of the pairs, the config, the variant and the seed: re-running an
interrupted training resumes it, re-running a finished one reuses its saved result without
starting workers (``final_state.pt``), and any change starts a fresh run. Once that file is
written the run's checkpoints are deleted (:func:`drop_checkpoints`): on disk a finished run
is its best weights only.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raylab.methods.ckd.config import CKDConfig, Variant
from raylab.methods.ckd.losses import ckd_loss
from raylab.methods.ckd.model import CKDNet, build_ckd_net
from raylab.methods.ckd.pairs import PairSet
from raylab.train.harness import (
    TrainSpec,
    fit,
    load_result_state,
    load_state,
    prepare,
    report_epoch,
    resume,
    save_state,
    unwrap,
)
from raylab.train.harness import run_name as train_run_name

FINAL_STATE = "final_state.pt"
LOSS_TERMS = ("loss", "ce_face", "ce_periocular", "kl_f2p", "kl_p2f")


@dataclass
class TrainedCKD:
    """The best weights (by periocular validation top-1), per-epoch history, and where the run lives."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]]
    run_path: str
    num_classes: int

    def network(self, config: CKDConfig, variant: Variant) -> CKDNet:
        net = build_ckd_net(config.network, self.num_classes, variant)
        net.load_state_dict(self.state_dict)
        return net.eval()


def _all_reduce_sum(values: list[float]) -> list[float]:
    """Sum over workers (identity on one worker / without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def epoch_order(n: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's permutation of the fit pairs and its flip decisions (the same on every worker)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator), torch.rand(n, generator=generator) < 0.5


def _flipped(images: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
    """Mirror the images whose flip decision is set (the same decision for a face and its band)."""
    return images if flip is None else torch.where(flip, images.flip(3), images)


def validate(net: CKDNet, pairs: tuple[torch.Tensor, torch.Tensor], rank: int, world: int) -> tuple[float, float]:
    """Periocular top-1 and cross-entropy on the validation pairs (each worker a stride, summed)."""
    periocular, labels = pairs
    rows = torch.arange(rank, len(labels), world)
    net.eval()
    with torch.no_grad():
        if len(rows):
            logits = net.periocular.classifier(net.periocular_embedding(periocular[rows]))
            correct = float((logits.argmax(1) == labels[rows]).sum())
            loss_sum = float(F.cross_entropy(logits, labels[rows], reduction="sum"))
        else:
            correct, loss_sum = 0.0, 0.0
    net.train()
    correct, loss_sum, count = _all_reduce_sum([correct, loss_sum, float(len(rows))])
    return correct / count, loss_sum / count


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    ckd: CKDConfig = config["ckd"]
    variant: Variant = config["variant"]
    train = ckd.train
    seed = config["seed"]
    faces, periocular, labels, val_periocular, val_labels = (
        torch.from_numpy(np.array(a)) for a in ray.get(config["data"])
    )
    if train.batch_size % world:
        raise ValueError(f"batch_size {train.batch_size} must be divisible by the {world} workers")
    chunk = train.batch_size // world
    net = build_ckd_net(ckd.network, config["num_classes"], variant, seed=seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    start_epoch, state = resume(net, optimizer)
    history: list[dict[str, float]] = list(state["history"]) if state else []
    best: dict[str, Any] = (
        dict(state["best"]) if state else {"accuracy": -1.0, "loss": math.inf, "epoch": -1, "model": None}
    )
    model = prepare(net)
    steps = len(labels) // train.batch_size
    if steps == 0:
        raise ValueError(f"{len(labels)} training pairs are fewer than one batch of {train.batch_size}")
    steps = min(steps, train.steps or steps)
    for epoch in range(start_epoch, train.epochs):
        order, flips = epoch_order(len(labels), seed, epoch)
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        correct = 0.0
        for step in range(steps):
            lr = train.lr_at(epoch, step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = order[step * train.batch_size : (step + 1) * train.batch_size][rank * chunk : (rank + 1) * chunk]
            flip = flips[rows][:, None, None, None] if ckd.pairs.hflip else None
            face = _flipped(faces[rows], flip) if variant.use_face else None
            out = model(face, _flipped(periocular[rows], flip))
            terms = ckd_loss(out.face_logits, out.periocular_logits, labels[rows], variant, train.tau)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            for key in LOSS_TERMS:
                sums[key] += float(terms[key].detach()) * len(rows)
            correct += float((out.periocular_logits.argmax(1) == labels[rows]).sum())
        totals = _all_reduce_sum([sums[k] for k in LOSS_TERMS] + [correct, float(steps * chunk)])
        seen = totals[-1]
        val_accuracy, val_loss = validate(unwrap(model), (val_periocular, val_labels), rank, world)
        if val_accuracy > best["accuracy"] or (val_accuracy == best["accuracy"] and val_loss < best["loss"]):
            best = {
                "accuracy": val_accuracy,
                "loss": val_loss,
                "epoch": epoch,
                "model": copy.deepcopy(unwrap(model).state_dict()),
            }
        metrics = {key: totals[i] / seen for i, key in enumerate(LOSS_TERMS)}
        metrics.update(
            epoch=epoch,
            lr=lr,
            train_accuracy=totals[len(LOSS_TERMS)] / seen,
            val_accuracy=val_accuracy,
            val_loss=val_loss,
            best_epoch=best["epoch"],
            best_val_accuracy=best["accuracy"],
        )
        history.append(metrics)
        state = {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "history": history,
            "best": best,
        }
        report_epoch(metrics, state)


def run_name(
    fit_pairs: PairSet, val_pairs: PairSet, ckd: CKDConfig, variant: Variant, seed: int, num_workers: int
) -> str:
    arrays = (fit_pairs.faces, fit_pairs.periocular, fit_pairs.labels, val_pairs.periocular, val_pairs.labels)
    settings = {"ckd": ckd, "variant": variant, "seed": seed, "workers": num_workers}
    return train_run_name("ckd", *arrays, settings=settings)


def train_ckd(
    fit_pairs: PairSet,
    val_pairs: PairSet,
    num_classes: int,
    ckd: CKDConfig,
    variant: Variant,
    *,
    seed: int = 0,
    num_workers: int | None = None,
    storage_path: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainedCKD:
    """Train on ``fit_pairs`` (labels ``0..num_classes-1``), select on ``val_pairs``; Ray must be up."""
    import ray

    if fit_pairs.labels.min() < 0 or fit_pairs.labels.max() >= num_classes:
        raise ValueError(f"fit labels must lie in [0, {num_classes})")
    if len(val_pairs) == 0:
        raise ValueError("no validation pairs: the best checkpoint is chosen on periocular validation accuracy")
    workers = num_workers or ckd.train.num_workers
    spec = TrainSpec(
        name=run_name(fit_pairs, val_pairs, ckd, variant, seed, workers),
        num_workers=workers,
        cpus_per_worker=ckd.train.cpus_per_worker,
        storage_path=storage_path,
        checkpoints_to_keep=ckd.train.checkpoints_to_keep,
        stage="CKD network",
    )
    final = Path(spec.resolved_storage()) / spec.name / FINAL_STATE
    if final.is_file():
        return TrainedCKD(**load_state(final))
    data = ray.put((fit_pairs.faces, fit_pairs.periocular, fit_pairs.labels, val_pairs.periocular, val_pairs.labels))
    loop_config = {
        "data": data,
        "ckd": ckd,
        "variant": variant,
        "seed": seed,
        "num_classes": num_classes,
        "threads": ckd.train.threads_per_worker,
    }
    result = fit(train_loop, loop_config, spec, callbacks=callbacks)
    if result.error is not None:
        raise RuntimeError(f"CKD training {spec.name} failed") from result.error
    state = load_result_state(result)
    best = state["best"]
    trained = TrainedCKD(
        state_dict=best["model"],
        best_epoch=int(best["epoch"]),
        best_val_accuracy=float(best["accuracy"]),
        history=list(state["history"]),
        run_path=str(result.path),
        num_classes=num_classes,
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp")
    save_state(dataclasses.asdict(trained), staging)  # plain data: read back with weights_only=True
    os.replace(staging, final)
    drop_checkpoints(final.parent)
    return trained


def drop_checkpoints(run_dir: Path) -> None:
    """Delete a finished run's Ray Train checkpoints; ``final_state.pt`` is all a re-run reads.

    A checkpoint holds three copies of the weights (last, momentum, best): at the official
    size about 0.5 GB per run, 30 GB over the 60 runs of the four-fold grid, all of it
    unreadable once the run has finished, since a re-run reuses ``final_state.pt`` (the
    best weights alone) without starting workers. An unfinished run keeps its checkpoints, so
    an interrupted training still resumes. The checkpoint manager's snapshot goes too: were
    ``final_state.pt`` deleted, the run then trains afresh instead of looking for the
    checkpoints it lists.
    """
    import shutil

    for path in run_dir.glob("checkpoint_*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
