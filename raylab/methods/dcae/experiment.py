"""``dcae_sweep``: DCAE and its ablations, one-class protocol, one Tune trial per (class, seed).

Per trial (normal class c, training seed s), all on c's training images only:

1. **selection** (:mod:`~raylab.methods.dcae.selection`; the full size, off at the CPU size):
   Optuna over the four loss weights, scored on held-out in-class images against
   pseudo-novelties made from them; each selection trial is a Ray task of its own
   (``selection.cpus_per_trial`` CPUs, the job's accelerator per Train worker),
   ``selection.max_concurrent`` at a time;
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
``normal_class``, ``seed``, ``class_name``, ``loss_weights``, ``metrics.auroc``.

Train run names stay the content hash of :func:`raylab.methods.dcae.training.run_name` (the
class's training images, the variants with their loss weights, network, training settings
but the epoch count, seed) rather than :meth:`TrialContext.run_name`: that hash already
covers every input of a training, and unlike the sweep's name it does not change with the
rest of the grid, so ``--seeds 0`` then ``--seeds 0,1,2``, or ``--no-selection`` where the
selection kept the default weights, reuse finished trainings, and a longer run continues one.
"""

# Heavy imports (numpy, the decoded data, torch models) are deferred into the functions that
# use them, so the job's --help and config validation answer in well under a second.
from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raylab.config import ConfigError
from raylab.experiment import Experiment, Prepared, Report, Request, Row, Setting, TrialContext, TrialResult
from raylab.experiment.arguments import parse_list
from raylab.experiment.cost import CostModel
from raylab.experiment.identity import content_hash
from raylab.methods.dcae.config import METHODS, TRAINED, DCAESweepConfig, cpu_config, trained_for

if TYPE_CHECKING:
    from raylab.tasks.one_class.protocol import DecodedCorpus

NAME = "dcae_sweep"
METRICS_HELP = (
    "auroc (normal class vs every other class of the test split); rows carry method in "
    "{dcae, ae_pixel, dcae_pixel_metric, dcae_no_adv}, normal_class, class_name, seed, loss_weights"
)


def quick(config: DCAESweepConfig) -> DCAESweepConfig:
    """``--quick``: the first seed, the quick classes, fewer epochs and selection trials, a test subsample."""
    reduced = config.quick
    return dataclasses.replace(
        config,
        seeds=config.seeds[:1],
        normal_classes=reduced.normal_classes,
        max_test_images=reduced.max_test_images,
        train=dataclasses.replace(config.train, epochs=reduced.epochs),
        selection=dataclasses.replace(
            config.selection, n_trials=reduced.selection_trials, epochs=reduced.selection_epochs
        ),
    )


def arguments(parser) -> None:
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated normal class ids, e.g. 0,3 (default: the config's normal_classes, else every class)",
    )
    parser.add_argument(
        "--no-selection",
        action="store_true",
        help="train with the config's loss weights, no Optuna (sets selection.enabled false)",
    )


def apply_arguments(config: DCAESweepConfig, args) -> DCAESweepConfig:
    if args.no_selection:
        return dataclasses.replace(config, selection=dataclasses.replace(config.selection, enabled=False))
    return config


# The corpus axes() decoded before Ray started, left for prepare() (the same driver process).
_DECODED: dict[str, tuple[DecodedCorpus, str]] = {}


def decoded_corpus(request: Request[DCAESweepConfig], *, reuse: bool = False) -> tuple[DecodedCorpus, str]:
    """The dataset split by the protocol and decoded, with its content fingerprint.

    ``axes`` decodes it before Ray starts, so a missing folder, an unreadable image or an
    unknown class fails in seconds (as the job always did); ``prepare`` takes that copy
    (``reuse``) instead of decoding twice.
    """
    from raylab.data.store import corpus_fingerprint
    from raylab.tasks.one_class.protocol import decode_corpus, load_one_class_corpus

    config = request.config
    key = content_hash([request.dataset, request.data_root, config.protocol, config.dataset_options])
    if reuse and key in _DECODED:
        return _DECODED.pop(key)
    corpus = load_one_class_corpus(request.dataset, request.data_root, config.protocol, **config.dataset_options)
    loaded = decode_corpus(corpus, config.protocol.color, config.protocol.resize_to), corpus_fingerprint(corpus)
    if not reuse:
        _DECODED.clear()
        _DECODED[key] = loaded
    return loaded


def _seeds(request: Request[DCAESweepConfig]) -> tuple[int, ...]:
    return parse_list(request.args.seeds, int, "--seeds") or request.config.seeds


def axes(request: Request[DCAESweepConfig]) -> dict[str, tuple]:
    return _grid(request, decoded_corpus(request)[0])


def _grid(request: Request[DCAESweepConfig], data: DecodedCorpus) -> dict[str, tuple]:
    """The (normal class, seed) grid over ``data``'s classes: ``cost`` reuses the corpus
    ``axes`` decoded instead of decoding it a second time."""
    seeds = _seeds(request)
    chosen = parse_list(request.args.classes, int, "--classes") or request.config.normal_classes
    classes = chosen if chosen is not None else tuple(data.class_names)
    missing = sorted(set(classes) - set(data.class_names))
    if missing:
        source = f"--classes {request.args.classes}" if request.args.classes else "normal_classes"
        raise ValueError(
            f"{source}: normal classes {missing} are not in {request.dataset}; its classes are {data.class_names}"
        )
    return {"normal_class": tuple(classes), "seed": seeds}


def check(request: Request[DCAESweepConfig]) -> None:
    from raylab.methods.dcae.selection import PSEUDO_NOVELTIES

    unknown = sorted(set(request.config.selection.pseudo_novelties) - set(PSEUDO_NOVELTIES))
    if unknown:
        raise ConfigError(f"selection.pseudo_novelties: unknown {unknown}; known: {sorted(PSEUDO_NOVELTIES)}")


def prepare(request: Request[DCAESweepConfig]) -> Prepared:
    data, fingerprint = decoded_corpus(request, reuse=True)
    return Prepared(data, fingerprint)


def trial(setting: Setting, data: DecodedCorpus, config: DCAESweepConfig, context: TrialContext) -> TrialResult:
    """One (normal class, seed): select, train, score, log; one row per method."""
    import torch

    from raylab.data.store import cache_root
    from raylab.eval.anomaly import image_metrics
    from raylab.methods.dcae.scorer import log_novelty_model
    from raylab.methods.dcae.selection import select_for_split
    from raylab.methods.dcae.training import score_images, train_variants
    from raylab.tasks.one_class.protocol import one_class_split

    torch.set_num_threads(config.train.torch_threads)
    normal_class, seed = int(setting["normal_class"]), int(setting["seed"])
    split = one_class_split(data, normal_class, max_test=config.max_test_images, seed=config.protocol.split_seed)
    tags = {"normal_class": normal_class, "class_name": split.class_name, "seed": seed}
    trial_name = setting.tag()  # c<class>-s<seed>
    with context.nested_run(
        trial_name, params={"config": config, "normal_class": normal_class, "seed": seed}, tags=tags
    ) as run:
        weights = config.weights
        if config.selection.enabled:
            selected = select_for_split(
                split,
                config.network,
                config.train,
                config.selection,
                config.weights,
                seed=seed,
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
            split.train_images, variants, config.network, config.train, seed=seed, storage_path=context.storage_path
        )
        for row in trained.history:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        aurocs: dict[str, float] = {}
        for method in config.methods:
            variant, space = METHODS[method]
            scores = score_images(trained.models[variant], split.test_images, space, config.score_batch_size)
            aurocs[method] = image_metrics(split.test_novel, scores)["image_auroc"]
            params = {"method": method, "score_space": space, "weights": weights}
            with context.nested_run(
                f"{method}-{trial_name}", params=params, tags={**tags, "method": method}, parent_run_id=run.run_id
            ) as method_run:
                method_run.log_metrics({"auroc": aurocs[method]})
                with tempfile.TemporaryDirectory() as scratch:
                    uri = log_novelty_model(
                        method_run,
                        trained.models[variant],
                        method=method,
                        network=config.network,
                        variant=TRAINED[variant],
                        space=space,
                        color=config.protocol.color,
                        test_images=split.test_images,
                        test_scores=scores,
                        test_novel=split.test_novel,
                        class_name=split.class_name,
                        metrics={"auroc": aurocs[method]},
                        scratch=Path(scratch),
                    )
                method_run.set_tags(models=json.dumps({split.class_name: uri}))
        run.log_metrics({f"{m}/auroc": v for m, v in aurocs.items()})
        _log_reconstructions(
            run,
            split,
            trained.models,
            config,
            seed,
            f"{context.dataset} class {normal_class} ({split.class_name}), seed {seed}",
        )
    extra = {"class_name": split.class_name, "loss_weights": dataclasses.asdict(weights)}
    return TrialResult(
        [Row(m, context.dataset, dict(setting.values), {"auroc": aurocs[m]}, extra) for m in config.methods]
    )


def _log_reconstructions(run, split, models, config: DCAESweepConfig, seed: int, title: str) -> None:
    """Seeded picks of normal and novel test images with every model's reconstruction (PNG + npz)."""
    import numpy as np

    from raylab.methods.dcae.report import reconstruction_grid
    from raylab.methods.dcae.training import reconstruct

    rng = np.random.default_rng((seed, split.normal_class))
    k = config.reconstructions_per_side
    normal = np.flatnonzero(~split.test_novel)
    novel = np.flatnonzero(split.test_novel)
    picks = np.r_[
        rng.choice(normal, min(k, normal.size), replace=False), rng.choice(novel, min(k, novel.size), replace=False)
    ]
    inputs = split.test_images[picks]
    reconstructions = {name: reconstruct(model, inputs) for name, model in models.items()}
    captions = [("normal" if i < min(k, normal.size) else "novel") for i in range(len(picks))]
    with tempfile.TemporaryDirectory() as scratch:
        reconstruction_grid(inputs, reconstructions, captions, Path(scratch) / "reconstructions.png", title)
        np.savez_compressed(
            Path(scratch) / "reconstructions.npz", inputs=inputs, captions=np.asarray(captions), **reconstructions
        )
        run.log_artifacts(scratch)


def report(rows: Sequence[Row], request: Request[DCAESweepConfig]) -> Report:
    from raylab.methods.dcae.report import bar_chart, format_per_class_table, per_class_table

    methods = request.config.methods
    table = per_class_table([row.to_dict() for row in rows], methods)
    title = (
        f"{request.dataset}: one-class AUROC per normal class "
        f"(mean ± std over seeds {','.join(map(str, _seeds(request)))})"
    )

    def figures(scratch: Path) -> list[Path]:
        return [bar_chart(table, methods, scratch / "auroc_per_class.png", title)]

    return Report(
        f"{title}\n{format_per_class_table(table, methods)}",
        tables={"results_table.csv": table.to_csv(index=False)},
        metrics={f"{m}/auroc_mean": float(table[f"{m}_mean"].iloc[-1]) for m in methods},
        figures=figures,
        table=table,
    )


# --smoke: the configured network, image size, methods and selection at one class and one seed,
# one training epoch, one selection trial of one epoch, and 500 test images (a seeded,
# class-stratified subsample, so every novel class is still scored).
SMOKE = {
    "train": {"epochs": 1},
    "selection": {"n_trials": 1, "epochs": 1},
    "seeds": [0],
    "normal_classes": [0],
    "max_test_images": 500,
}


def cost(request: Request[DCAESweepConfig]) -> CostModel:
    """A trial's variant image-steps (selection trials plus the final training), and its disk.

    Counts the largest class's training images in the decoded corpus (``axes`` has decoded it
    already) and sizes every trained variant on the meta device. A Train run keeps one
    checkpoint and ``final_state_e<epochs>.pt``, both with every variant's weights and Adam
    moments: the checkpoint stays so that a longer run continues the finished one.
    """
    from raylab.experiment.cost import ADAM_STATE_COPIES, FLOAT32, GB, parameter_count
    from raylab.methods.dcae.training import build_model
    from raylab.step_memory import state_bytes, step_peak_bytes

    config = request.config
    data, _ = decoded_corpus(request, reuse=True)
    grid = _grid(request, data)
    classes, seeds = grid["normal_class"], grid["seed"]
    channels, side = data.images.shape[1], data.images.shape[-1]
    train_images = max(int(((data.labels == c) & (data.splits == "train")).sum()) for c in classes)
    variants = trained_for(config.methods)
    parameters = {
        v: parameter_count(lambda v=v: build_model(config.network, TRAINED[v], channels, side)) for v in variants
    }
    selection = config.selection
    fit_images = int(train_images * (1 - selection.val_fraction))
    search_steps = selection.n_trials * selection.epochs * fit_images if selection.enabled else 0
    work = search_steps + config.train.epochs * train_images * len(variants)
    image_bytes = channels * side * side
    test_images = int((data.splits == "test").sum())
    if config.max_test_images is not None:
        test_images = min(test_images, config.max_test_images)
    run_bytes = 2 * ADAM_STATE_COPIES * FLOAT32 * sum(parameters.values())  # the checkpoint and the final state
    batch = config.train.batch_size

    def generator_step(model):
        # The autoencoder's update, the largest of a variant's steps: encode, decode the codes
        # and as many prior draws, and pass both through the image critic's feature levels.
        import torch

        images = torch.empty(batch, channels, side, side)
        codes = model.encoder(images)
        gan = model.image_discriminator is not None
        decoded = model.decoder(torch.cat([codes, torch.empty_like(codes)]) if gan else codes)
        loss = decoded.mean()
        if gan:
            logits, features = model.image_discriminator(torch.cat([images, decoded]))
            loss = loss + logits.mean() + sum(f.mean() for f in features)
        return loss

    accelerator = max(
        step_peak_bytes(
            lambda v=v: build_model(config.network, TRAINED[v], channels, side),
            generator_step,
            train=True,
            optimizer_moments=2,
        )
        for v in variants
    )
    runs = len(classes) * len(seeds)
    # Every method logs its scorer: the whole network of the variant it scores with (safetensors).
    weights = {v: state_bytes(lambda v=v: build_model(config.network, TRAINED[v], channels, side)) for v in variants}
    model_bytes = runs * sum(weights[METHODS[method][0]] for method in config.methods)
    return CostModel(
        work=work,
        work_unit="variant image-steps",
        # The decoded corpus (uint8) in the trial, the class's images as float32 in every Train worker.
        array_bytes=len(data.images) * image_bytes + config.train.num_workers * train_images * image_bytes * FLOAT32,
        checkpoint_bytes=runs * run_bytes,
        cache_bytes=0.0,
        model_bytes=model_bytes,
        accelerator_bytes=accelerator,
        accelerator_step=f"the largest variant's autoencoder step of {batch} images and {batch} prior draws, Adam",
        notes=(
            f"{len(classes)} classes x {len(seeds)} seeds; up to {train_images} training images per class, "
            f"{test_images} test images scored per method",
            (
                f"selection: {selection.n_trials} trials x {selection.epochs} epochs on {fit_images} images "
                f"({search_steps / max(work, 1):.0%} of the work)"
                if selection.enabled
                else "selection: off (the config's loss weights)"
            ),
            "parameters: "
            + ", ".join(f"{v} {n / 1e6:.2f} M" for v, n in parameters.items())
            + f"; {run_bytes / GB * 1024:.0f} MB per Train run on disk",
        ),
    )


def summary_extra(request: Request[DCAESweepConfig], rows: Sequence[Row]) -> dict[str, Any]:
    classes = sorted({int(row.setting["normal_class"]) for row in rows})
    return {"classes": classes, "seeds": list(_seeds(request)), "selection": request.config.selection.enabled}


EXPERIMENT = Experiment(
    name=NAME,
    description="One-class novelty detection: DCAE (compact latent, multi-level reconstruction through a GAN "
    "discriminator, discriminator-feature score) against a plain AE, DCAE scored in pixels and DCAE "
    "without the latent game; loss weights selected by Optuna on in-class data only (full size); one Ray Tune "
    "trial per normal class and seed; MLflow nested runs.",
    config_type=DCAESweepConfig,
    profiles={"cpu": cpu_config, "full": DCAESweepConfig},
    default_dataset="mnist",
    metrics_help=METRICS_HELP,
    axes=axes,
    prepare=prepare,
    trial=trial,
    report=report,
    executor="tune",
    config_folder="dcae",
    quick=quick,
    arguments=arguments,
    apply_arguments=apply_arguments,
    check=check,
    trial_resources=lambda config: {"CPU": 0.01},
    trial_cpus=lambda config: config.train.num_workers * config.train.cpus_per_worker,
    summary_extra=summary_extra,
    smoke=SMOKE,
    cost=cost,
)
