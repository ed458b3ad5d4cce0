r"""DCAE's design put to the test on in-class data: which variant ranks pseudo-novelties best, and when.

DCAE has no public code, so its loss weights, its discriminator's fakes and its size are
raylab's choices. This script trains each candidate design in one process per (class,
design), on the same batches and prior draws, and records after every ``--eval-at`` epoch:

* ``val_auroc``: the selection objective (:mod:`raylab.methods.dcae.selection`), the
  model's own novelty score on the held-out 20% of the class's *training* images against
  their pseudo-novelties (quadrants moved, a quarter turn, an upside-down flip). Every
  design choice and the epoch budget are read from this column only;
* ``test_auroc``: the same model on the test split (the class against every other class),
  for the AUROC-versus-epoch curves of the README, never for a choice;
* both in the discriminator's feature space and in pixels (``*_pixel``), so the
  pixel-metric ablation is read from the same trained networks (the plain AE has only its
  pixel score, in the unsuffixed columns).

Designs (:data:`DESIGNS`): the config's default DCAE; a lighter pixel loss (0.3, 0.1: the
pixel term weighs as much as the feature term by default); reconstructions as extra fakes
for the image discriminator; a discriminator twice as wide; DCAE without the latent game;
the plain autoencoder. The split (train halves per class, split seed 0) and the networks are
the job's CPU config for the dataset (``raylab/configs/dcae/<dataset>.yaml``); the training seed defaults to 100,
which no reported table uses (those use 0-2). Results append to ``--out`` as JSON lines
(a rerun skips what is there); ``--table`` prints the per-epoch means over classes.

    python benchmarks/dcae_design.py --data-root ../shared/data --out dcae_design.jsonl
    python benchmarks/dcae_design.py --out dcae_design.jsonl --table
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# design -> (trained variant, overrides of weights / train / network)
DESIGNS: dict[str, tuple[str, dict, dict, dict]] = {
    "default": ("dcae", {}, {}, {}),
    "pixel_0.3": ("dcae", {"pixel": 0.3}, {}, {}),
    "pixel_0.1": ("dcae", {"pixel": 0.1}, {}, {}),
    "recon_fakes": ("dcae", {}, {"reconstructions_as_fakes": True}, {}),
    "wide_d": ("dcae", {}, {}, {"discriminator_width": 32}),
    "no_adv": ("dcae_no_adv", {}, {}, {}),
    "ae": ("ae", {}, {}, {}),
}
EVAL_AT = (1, 5, 10, 15, 20, 30, 40, 50, 60)


@functools.cache
def job_config(dataset: str):
    """The job's CPU config for the dataset: its packaged YAML over the cpu profile, as
    ``jobs/dcae_sweep.py --dataset <dataset>`` resolves it (network, protocol, selection split)."""
    from raylab.config import from_mapping, read_yaml_mapping
    from raylab.experiment.runner import packaged_config
    from raylab.methods.dcae.config import DCAESweepConfig, cpu_config

    overlay = packaged_config("dcae", dataset)
    return from_mapping(DCAESweepConfig, read_yaml_mapping(overlay), where=str(overlay), base=cpu_config())


@functools.cache
def decoded_corpus(dataset: str, data_root: str | None):
    """The dataset split and decoded once per worker process (each process trains many designs)."""
    from raylab.tasks.one_class.protocol import decode_corpus, load_one_class_corpus

    config = job_config(dataset)
    corpus = load_one_class_corpus(dataset, data_root, config.protocol, **config.dataset_options)
    return decode_corpus(corpus, config.protocol.color, config.protocol.resize_to)


def run_design(job: dict) -> list[dict]:
    """Train one design for one class, evaluating at every ``eval_at`` epoch."""
    import torch

    from raylab.data.splits import validation_rows
    from raylab.eval.anomaly import image_metrics
    from raylab.methods.dcae.config import TRAINED
    from raylab.methods.dcae.losses import to_unit_range
    from raylab.methods.dcae.selection import make_pseudo_novelties
    from raylab.methods.dcae.training import calibrated, make_trainers, run_epoch, score_images
    from raylab.tasks.one_class.protocol import one_class_split

    torch.set_num_threads(1)
    config = job_config(job["dataset"])
    split = one_class_split(decoded_corpus(job["dataset"], job["data_root"]), job["normal_class"])
    variant, weights, train, network = DESIGNS[job["design"]]
    weights = dataclasses.replace(config.weights, **weights)
    train = dataclasses.replace(config.train, **train)
    network = dataclasses.replace(config.network, **network)
    seed = job["seed"]
    fit_rows, val_rows = validation_rows(len(split.train_images), config.selection.val_fraction, (seed, 2020))
    fit, val = split.train_images[fit_rows], split.train_images[val_rows]
    pseudo = make_pseudo_novelties(val, config.selection.pseudo_novelties)
    queries, is_pseudo = np.concatenate([val, pseudo]), np.r_[np.zeros(len(val)), np.ones(len(pseudo))]

    trainers = make_trainers({variant: (TRAINED[variant], weights)}, network, train, fit.shape[1], fit.shape[-1], seed)
    trainer = trainers[variant]
    tensor = to_unit_range(torch.from_numpy(np.ascontiguousarray(fit)))
    spaces = ("discriminator", "pixel") if TRAINED[variant].image_gan else ("pixel",)
    rows, started = [], time.perf_counter()
    for epoch in range(max(job["eval_at"])):
        run_epoch(trainers, tensor, epoch, seed=seed, batch_size=train.batch_size, latent_dim=network.latent_dim)
        if epoch + 1 not in job["eval_at"]:
            continue
        model = calibrated(trainer.model, fit)
        row = {k: job[k] for k in ("dataset", "design", "normal_class", "seed")} | {"epoch": epoch + 1}
        for space in spaces:
            suffix = "" if space == spaces[0] else "_pixel"
            val_scores = score_images(model, queries, space)
            test_scores = score_images(model, split.test_images, space)
            row[f"val_auroc{suffix}"] = image_metrics(is_pseudo, val_scores)["image_auroc"]
            row[f"test_auroc{suffix}"] = image_metrics(split.test_novel, test_scores)["image_auroc"]
        row["train_seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
    return rows


def run(args) -> None:
    out = Path(args.out)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["dataset"], row["design"], row["normal_class"], row["seed"]))
    jobs = [
        {
            "dataset": args.dataset,
            "data_root": args.data_root,
            "design": design,
            "normal_class": c,
            "seed": seed,
            "eval_at": tuple(e for e in EVAL_AT if e <= args.epochs),
        }
        for seed in args.seeds
        for c in args.classes
        for design in args.designs
        if (args.dataset, design, c, seed) not in done
    ]
    print(f"{len(jobs)} (design, class, seed) trainings to run, {args.processes} at a time", flush=True)
    with ProcessPoolExecutor(args.processes) as pool, out.open("a") as sink:
        for job, rows in zip(jobs, pool.map(run_design, jobs), strict=True):
            for row in rows:
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            last = rows[-1]
            print(
                f"{job['design']:12s} class {job['normal_class']} seed {job['seed']}: val {last['val_auroc']:.3f} "
                f"test {last['test_auroc']:.3f} at epoch {last['epoch']} ({last['train_seconds']} s)",
                flush=True,
            )


def table(args) -> None:
    import pandas as pd

    rows = pd.read_json(args.out, lines=True)
    rows = rows[rows.dataset == args.dataset]
    counts = rows.groupby("design")["normal_class"].nunique()
    for column in ("val_auroc", "test_auroc", "val_auroc_pixel", "test_auroc_pixel"):
        if column not in rows:
            continue
        means = rows.groupby(["design", "epoch"])[column].mean().unstack("epoch")
        print(f"\n{column} (mean over classes; classes per design: {counts.to_dict()})")
        print(means.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"))
    parser.add_argument("--data-root")
    parser.add_argument("--out", required=True, help="JSON lines, appended to")
    parser.add_argument("--designs", type=lambda s: s.split(","), default=list(DESIGNS))
    parser.add_argument("--classes", type=lambda s: [int(c) for c in s.split(",")], default=list(range(10)))
    parser.add_argument("--seeds", type=lambda s: [int(c) for c in s.split(",")], default=[100])
    parser.add_argument("--epochs", type=int, default=max(EVAL_AT))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = parser.parse_args()
    unknown = sorted(set(args.designs) - set(DESIGNS))
    if unknown:
        parser.error(f"unknown designs {unknown}; known: {sorted(DESIGNS)}")
    table(args) if args.table else run(args)


if __name__ == "__main__":
    main()
