"""``jobs/dcae_sweep.py``: DCAE and its ablations, one-class protocol, one Tune trial per (class, seed).

Per trial (normal class c, training seed s), all on c's training images only:

1. **selection** (:mod:`~raylab.methods.dcae.selection`): Optuna over the four loss weights,
   scored on held-out in-class images against pseudo-novelties made from them;
2. **training** (:mod:`~raylab.methods.dcae.training`): ``dcae``, ``dcae_no_adv`` (the
   selected weights, latent game off) and the plain ``ae`` side by side on Ray Train
   (``TorchTrainer``, a checkpoint every epoch; a re-run resumes or reuses the run);
3. **scoring** on the whole test split (c normal, every other class novel): ``dcae`` and
   ``dcae_no_adv`` in the discriminator's feature space, ``dcae_pixel_metric`` (DCAE's
   model) and ``ae_pixel`` in pixel space; AUROC per method.

The trials of the grid (classes x seeds) run in parallel on Ray Tune, as many at a time as
the cluster has CPUs for their Train workers. MLflow: a parent run per sweep, a nested run
per trial (selection trials, training curves, reconstructions, the models), and under it a
run per method (its AUROC). The parent gets the per-class table (mean ± std over seeds),
its bar chart and a reconstruction overview. Summary rows: ``method``, ``dataset``,
``normal_class``, ``class_name``, ``seed``, ``metrics.auroc``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylab.config import load_config
from raylab.eval.anomaly import image_metrics
from raylab.jobs import init_ray, job_parser, parse_seeds, summary_row, write_summary
from raylab.methods.dcae.config import METHODS, TRAINED, DCAESweepConfig, cpu_config, trained_for
from raylab.methods.dcae.data import DecodedCorpus, decode_corpus, load_one_class_corpus, one_class_split
from raylab.methods.dcae.report import bar_chart, format_per_class_table, per_class_table, reconstruction_grid
from raylab.methods.dcae.selection import select_for_split
from raylab.methods.dcae.training import reconstruct, score_images, train_variants
from raylab.tracking import tracked_run, tracking_uri

JOB = "dcae_sweep"
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "dcae"


def parser() -> argparse.ArgumentParser:
    parser = job_parser(
        JOB,
        "One-class novelty detection: DCAE (compact latent, multi-level reconstruction through a GAN "
        "discriminator, discriminator-feature score) against a plain AE, DCAE scored in pixels and DCAE "
        "without the latent game; loss weights selected by Optuna on in-class data only; one Ray Tune "
        "trial per normal class and seed; MLflow nested runs.",
        default_dataset="mnist",
        metrics_help="auroc (normal class vs every other class of the test split); rows carry method in "
        "{dcae, ae_pixel, dcae_pixel_metric, dcae_no_adv}, normal_class, class_name, seed",
    )
    parser.add_argument("--classes", default=None, help="comma-separated normal classes (default: all)")
    parser.add_argument("--no-selection", action="store_true", help="train with the config's loss weights, no Optuna")
    parser.add_argument("--name", default=None, help="Tune run name; re-running the same name resumes the sweep")
    return parser


def resolve_config(args: argparse.Namespace) -> DCAESweepConfig:
    """``--config``, else ``configs/dcae/<dataset>.yaml`` when there is one (YAML over the
    full-size class defaults), else the CPU size (:func:`cpu_config`)."""
    path = args.config
    if path is None and (CONFIG_DIR / f"{args.dataset}.yaml").is_file():
        path = CONFIG_DIR / f"{args.dataset}.yaml"
    return load_config(DCAESweepConfig, path) if path is not None else cpu_config()


def run_trial(params: dict[str, Any], data: DecodedCorpus, config: DCAESweepConfig, context: dict[str, Any]) -> None:
    """One (normal class, seed): select, train, score, log; reports every method's AUROC to Tune
    (once: a function trainable's return value would be a second report)."""
    import mlflow
    from ray import tune

    from raylab.data.store import cache_root

    torch.set_num_threads(config.train.torch_threads)
    mlflow.set_tracking_uri(context["tracking_uri"])
    normal_class, seed = int(params["normal_class"]), int(params["seed"])
    quick = context["quick"]
    split = one_class_split(
        data, normal_class, max_test=config.quick.max_test_images if quick else None, seed=config.protocol.split_seed
    )
    epochs = config.quick.epochs if quick else config.train.epochs
    tags = {"dataset": context["dataset"], "normal_class": normal_class, "class_name": split.class_name, "seed": seed}
    trial_name = f"c{normal_class}-s{seed}"
    with tracked_run(JOB, trial_name, params={"config": config, "normal_class": normal_class, "seed": seed}, tags=tags, parent_run_id=context["parent_run_id"]) as run:
        weights = config.weights
        if context["selection"] and config.selection.enabled:
            selected = select_for_split(
                split, config.network, config.train, config.selection, config.weights, seed=seed,
                n_trials=config.quick.selection_trials if quick else None,
                epochs=config.quick.selection_epochs if quick else None,
                cache_dir=cache_root() / "dcae_selection",
            )
            weights = selected.best
            run.log_metrics({"selection/val_pseudo_auroc": selected.best_value})
            run.log_text(selected.trials.to_csv(index=False), "selection_trials.csv")
            run.log_text(
                f"selected on {selected.n_val} held-out class-{normal_class} training images vs their pseudo-novelties "
                f"({', '.join(config.selection.pseudo_novelties)}), trained on {selected.n_fit}; no test image used\n"
                f"{json.dumps(dataclasses.asdict(weights), indent=1)}\n",
                "selection.txt",
            )
        variants = {name: (TRAINED[name], weights) for name in trained_for(config.methods)}
        trained = train_variants(
            split.train_images, variants, config.network, config.train, seed=seed, epochs=epochs,
            storage_path=context["storage_path"],
        )
        for row in trained.history:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        aurocs: dict[str, float] = {}
        for method in config.methods:
            variant, space = METHODS[method]
            scores = score_images(trained.models[variant], split.test_images, space, config.score_batch_size)
            aurocs[method] = image_metrics(split.test_novel, scores)["image_auroc"]
            with tracked_run(JOB, f"{method}-{trial_name}", params={"method": method, "score_space": space, "weights": weights}, tags={**tags, "method": method}, parent_run_id=run.run_id) as method_run:
                method_run.log_metrics({"auroc": aurocs[method]})
        run.log_metrics({f"{m}/auroc": v for m, v in aurocs.items()})
        _log_reconstructions(run, split, trained.models, config, seed, f"{context['dataset']} class {normal_class} ({split.class_name}), seed {seed}")
        with tempfile.TemporaryDirectory() as scratch:
            for name, model in trained.models.items():
                torch.save(model.state_dict(), Path(scratch) / f"{name}.pt")
            run.log_artifacts(scratch, "models")
    report = {f"{m}/auroc": v for m, v in aurocs.items()} | {f"weights/{k}": v for k, v in dataclasses.asdict(weights).items()}
    report |= {"normal_class": normal_class, "seed": seed, "class_name": split.class_name}
    tune.report(report)


def _log_reconstructions(run, split, models, config: DCAESweepConfig, seed: int, title: str) -> None:
    """Seeded picks of normal and novel test images with every model's reconstruction (PNG + npz)."""
    rng = np.random.default_rng((seed, split.normal_class))
    k = config.reconstructions_per_side
    normal = np.flatnonzero(~split.test_novel)
    novel = np.flatnonzero(split.test_novel)
    picks = np.r_[rng.choice(normal, min(k, normal.size), replace=False), rng.choice(novel, min(k, novel.size), replace=False)]
    inputs = split.test_images[picks]
    reconstructions = {name: reconstruct(model, inputs) for name, model in models.items()}
    captions = [("normal" if i < min(k, normal.size) else "novel") for i in range(len(picks))]
    with tempfile.TemporaryDirectory() as scratch:
        reconstruction_grid(inputs, reconstructions, captions, Path(scratch) / "reconstructions.png", title)
        np.savez_compressed(Path(scratch) / "reconstructions.npz", inputs=inputs, captions=np.asarray(captions), **reconstructions)
        run.log_artifacts(scratch)


def sweep_name(args: argparse.Namespace, config: DCAESweepConfig, classes: tuple[int, ...], seeds: tuple[int, ...], selection: bool) -> str:
    """Default Tune name: dataset + a hash of everything that defines the grid's results."""
    settings = json.dumps(
        [dataclasses.asdict(config), classes, seeds, args.quick, selection, str(args.data_root)], sort_keys=True, default=str
    )
    return f"dcae-{args.dataset}{'-quick' if args.quick else ''}-{hashlib.sha256(settings.encode()).hexdigest()[:10]}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from ray import tune

    args = parser().parse_args(argv)
    config = resolve_config(args)
    trained_for(config.methods)  # unknown method names fail before any work
    seeds = parse_seeds(args.seeds) or (config.seeds[:1] if args.quick else config.seeds)
    corpus = load_one_class_corpus(args.dataset, args.data_root, config.protocol, **config.dataset_options)
    data = decode_corpus(corpus, config.protocol.color, config.protocol.resize_to)
    if args.classes is not None:
        classes = tuple(int(c) for c in args.classes.split(",") if c.strip())
    else:
        classes = config.quick.normal_classes if args.quick else (config.normal_classes or tuple(data.class_names))
    missing = sorted(set(classes) - set(data.class_names))
    if missing:
        raise SystemExit(f"normal classes {missing} are not in {args.dataset}; its classes are {data.class_names}")
    selection = not args.no_selection
    init_ray()
    import ray

    from raylab.data.store import cache_root

    name = args.name or sweep_name(args, config, classes, seeds, selection)
    storage_path = str(cache_root() / "ray_results")
    title = f"{args.dataset}: one-class AUROC per normal class (mean ± std over seeds {','.join(map(str, seeds))})"
    experiment = Path(storage_path) / name
    # A restarted sweep (same name, Tune state on disk) reopens its interrupted parent run.
    restoring = tune.Tuner.can_restore(str(experiment))
    run_params = {"config": config, "classes": classes, "seeds": seeds, "quick": args.quick, "selection": selection}
    with tracked_run(JOB, name, params=run_params, tags={"dataset": args.dataset, "method": "sweep"}, resume=restoring) as parent:
        context = {
            "tracking_uri": tracking_uri(), "parent_run_id": parent.run_id, "dataset": args.dataset, "quick": args.quick,
            "selection": selection, "storage_path": storage_path,
        }
        trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, config=config, context=context), {"cpu": 0.01})
        cpus = ray.cluster_resources().get("CPU", 1)
        concurrent = max(1, int(cpus // max(1e-9, config.train.num_workers * config.train.cpus_per_worker)))
        tuner = (
            tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
            if restoring
            else tune.Tuner(
                trainable,
                param_space={"normal_class": tune.grid_search(list(classes)), "seed": tune.grid_search(list(seeds))},
                tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
                run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0),
            )
        )
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} DCAE trial(s) failed; first: {errors[0]}")
        rows = [
            summary_row(
                method, args.dataset, None, int(r.metrics["seed"]), {"auroc": r.metrics[f"{method}/auroc"]},
                normal_class=int(r.metrics["normal_class"]), class_name=r.metrics["class_name"],
                loss_weights={k.split("/", 1)[1]: v for k, v in r.metrics.items() if k.startswith("weights/")},
            )
            for r in grid
            for method in config.methods
        ]
        rows.sort(key=lambda row: (row["normal_class"], row["seed"], config.methods.index(row["method"])))
        table = per_class_table(rows, config.methods)
        text = format_per_class_table(table, config.methods)
        parent.log_text(f"{title}\n{text}\n", "results_table.txt")
        parent.log_text(table.to_csv(index=False), "results_table.csv")
        parent.log_metrics({f"{m}/auroc_mean": float(table[f"{m}_mean"].iloc[-1]) for m in config.methods})
        with tempfile.TemporaryDirectory() as scratch:
            parent.log_artifact(bar_chart(table, config.methods, Path(scratch) / "auroc_per_class.png", title))
    print(f"{title}\n{text}")
    if args.summary_json:
        write_summary(args.summary_json, JOB, rows, sweep=name, classes=list(classes), seeds=list(seeds), selection=selection)
    return {"rows": rows, "table": table, "name": name}
