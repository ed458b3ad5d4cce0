"""``nnguide_eval``: NNGuide and its baselines on an OOD benchmark, tracked in MLflow.

One trial = one protocol seed, run in the driver: get the classifier (a pretrained
checkpoint, or one trained here with Ray Train), extract features and logits of every
image once with Ray Data, fit and score every configured detector on those outputs, then
select NNGuide's hyperparameters with Ray Tune + Optuna on validation data only
(:func:`raylab.methods.nnguide.tuning.sweep_nnguide`) and report the selected detector on
the remaining OOD sets. Summary rows: one per detector x seed x ``ood_set`` (``average`` =
the mean over the sets): ``method`` = the detector's name with its settings
(``nnguide_k100_bank0.1``), ``metrics`` = AUROC, FPR95, AUPR-in, AUPR-out, detection
accuracy, and ``id_accuracy`` beside them.

Config: a benchmark is named by ``--dataset`` and its classifier by ``--network``; each
pair has its packaged config ``raylab/configs/nnguide/<dataset>_<network>.yaml`` (CIFAR-10:
``resnet56``, the default, or ``resnet20``; MNIST open set: ``small_cnn``). That file is
this job's dataset overlay: without ``--config`` it goes where the runner puts a dataset's
overlay (between the profile and ``--set``). A config whose ID dataset or architecture
contradicts ``--dataset`` / ``--network`` is an error, never a silent choice of one.
"""

# Heavy imports (numpy, the benchmark, detectors, classifiers, torch) are deferred into the
# functions that use them, so the job's --help and config validation answer in well under a second.
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raylab.config import ConfigError, from_mapping, parse_assignment, read_yaml_mapping
from raylab.digests import file_digest
from raylab.experiment import Experiment, Prepared, Report, Request, Row, Setting, TrialContext, TrialResult
from raylab.experiment.arguments import parse_list
from raylab.methods.nnguide.config import NNGuideEvalConfig
from raylab.tasks.ood.config import with_seed

if TYPE_CHECKING:
    import numpy as np

    from raylab.tasks.ood.benchmark import Benchmark
    from raylab.tasks.ood.detectors import ModelOutputs, NNGuideDetector
    from raylab.tasks.ood.outputs import OutputSet

NAME = "nnguide_eval"
CONFIG_FOLDER = "nnguide"
# Benchmarks by the name users pass as --dataset: the ID dataset they read, and the packaged
# config of each --network (the first network is the default).
BENCHMARKS: dict[str, tuple[str, dict[str, str]]] = {
    "mnist_open_set": ("mnist_open_set", {"small_cnn": "mnist_open_set"}),
    "cifar10": ("cifar10_test", {"resnet56": "cifar10_resnet56", "resnet20": "cifar10_resnet20"}),
}
BENCHMARKS["cifar10_test"] = BENCHMARKS["cifar10"]
METRICS_HELP = (
    "auroc, fpr95 (FPR at 95% TPR, ID positive), aupr_in, aupr_out, detection_acc; one row per "
    "detector x seed x ood_set, where ood_set 'average' is the mean over the OOD sets; rows also "
    "carry id_accuracy (the classifier's top-1 accuracy on the ID test set)"
)


def full_config() -> NNGuideEvalConfig:
    """The official detector defaults are the dataclass defaults; a benchmark's sizes come from its packaged config."""
    return NNGuideEvalConfig()


def quick(config: NNGuideEvalConfig) -> NNGuideEvalConfig:
    """Fewer classifier epochs and search trials, seeded subsets of the test roles (``quick`` section)."""
    q = config.quick
    return dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, epochs=q.epochs),
        sweep=dataclasses.replace(config.sweep, num_samples=q.sweep_samples),
        max_test_images_per_role=q.max_test_images_per_role,
    )


def arguments(parser) -> None:
    parser.add_argument(
        "--network",
        default=None,
        help="classifier architecture; picks raylab/configs/nnguide/<dataset>_<network>.yaml when no --config is given "
        "(cifar10: resnet56 (default) or resnet20; mnist_open_set: small_cnn)",
    )
    parser.add_argument(
        "--weights", default=None, help="classifier checkpoint, loaded with strict=True (overrides classifier.weights)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the Ray Tune hyperparameter selection")


def network_overlay(dataset: str, network: str | None) -> Path | None:
    """The packaged config of (``dataset``, ``network``): None for a dataset without one."""
    from raylab.experiment.runner import packaged_config

    _, networks = BENCHMARKS.get(dataset, (dataset, {}))
    if not networks:
        return None
    network = network or next(iter(networks))
    if network not in networks:
        raise ConfigError(f"--network {network}: no default config for {dataset}; known: {sorted(networks)}")
    return packaged_config(CONFIG_FOLDER, networks[network])


def apply_arguments(config: NNGuideEvalConfig, args) -> NNGuideEvalConfig:
    """The (dataset, network) overlay when no ``--config`` was given, then ``--weights`` and
    ``--no-sweep`` (``sweep.enabled: false``); checks the config against ``--dataset`` / ``--network``.

    The overlay sits where the runner puts a dataset's overlay, under ``--set``: the
    assignments are applied again on top of it (the runner looks for ``<dataset>.yaml``,
    while this job's overlays are per dataset *and* network).
    """
    overlay = None if args.config else network_overlay(args.dataset, args.network)
    if overlay is not None:
        config = from_mapping(NNGuideEvalConfig, read_yaml_mapping(overlay), where=f"{overlay}:", base=config)
        for text in args.assignments:
            config = from_mapping(NNGuideEvalConfig, parse_assignment(text), where="--set:", base=config)
    id_dataset, _ = BENCHMARKS.get(args.dataset, (args.dataset, {}))
    if config.benchmark.id_dataset != id_dataset:
        raise ConfigError(
            f"--dataset {args.dataset} but the config's benchmark.id_dataset is {config.benchmark.id_dataset}: "
            f"pass a config for {args.dataset} (raylab/configs/nnguide/) or the matching --dataset"
        )
    if args.network is not None and config.classifier.arch != args.network:
        raise ConfigError(f"--network {args.network} but the config's classifier.arch is {config.classifier.arch}")
    if args.weights is not None:
        if not Path(args.weights).is_file():
            raise ConfigError(f"--weights {args.weights}: no such file")
        config = dataclasses.replace(config, classifier=dataclasses.replace(config.classifier, weights=args.weights))
    if args.no_sweep:
        config = dataclasses.replace(config, sweep=dataclasses.replace(config.sweep, enabled=False))
    return config


def axes(request: Request[NNGuideEvalConfig]) -> dict[str, tuple]:
    return {"seed": parse_list(request.args.seeds, int, "--seeds") or request.config.seeds}


def check(request: Request[NNGuideEvalConfig]) -> None:
    """Detector specs and the classifier checkpoint, before Ray starts.

    A detector's ``bank_seed`` is each setting's seed (the bank is resampled per seed), so a
    value in the config would be silently replaced: it is refused instead.
    """
    seeded = sorted(name for name, values in request.config.detectors.items() if "bank_seed" in values)
    if seeded:
        raise ConfigError(
            f"detectors.{seeded[0]}.bank_seed is decided by each setting's seed (use --seeds), not by the config"
        )
    request.config.detector_configs()
    weights = request.config.classifier.weights
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"classifier.weights {weights}: no such file")


@dataclass(frozen=True)
class EvalInputs:
    """Each protocol seed's benchmark (roles of every image)."""

    benchmarks: Mapping[int, Benchmark]


def prepare(request: Request[NNGuideEvalConfig]) -> Prepared:
    """Every seed's benchmark; the fingerprint covers its images and the classifier checkpoint's bytes."""
    from raylab.data.store import corpus_fingerprint
    from raylab.experiment.identity import content_hash
    from raylab.tasks.ood.benchmark import build_benchmark

    config = request.config
    benchmarks = {
        seed: build_benchmark(config.benchmark, request.data_root, seed, max_per_role=config.max_test_images_per_role)
        for seed in axes(request)["seed"]
    }
    data = {
        "corpora": {seed: corpus_fingerprint(bench.corpus) for seed, bench in benchmarks.items()},
        "weights": file_digest(config.classifier.weights, 20) if config.classifier.weights else None,
    }
    return Prepared(EvalInputs(benchmarks), content_hash(data, 20))


def training_data(bench: Benchmark, config: NNGuideEvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ``id_fit`` images, decoded by the extraction transform, and their class indices."""
    import numpy as np

    from raylab.tasks.ood.outputs import transform_for

    transform = transform_for(config.classifier)
    images = dict(
        zip(bench.corpus.column("sample_id").to_pylist(), bench.corpus.column("image").to_pylist(), strict=True)
    )
    pixels = np.stack([transform.image(images[sid], sid) for sid in bench.roles["id_fit"].tolist()])
    return pixels, bench.labels("id_fit")


def classifier_state(
    bench: Benchmark, config: NNGuideEvalConfig, seed: int, run, storage_path: str | None = None
) -> dict | None:
    """``None`` for a pretrained checkpoint; else train on ``id_fit`` with Ray Train and return the weights.

    The Train run keeps :func:`~raylab.methods.nnguide.training.run_name`, a hash of
    the training images, labels, model, training config and seed: a classifier is reused by
    every sweep that trains the same one (the detectors and the search do not retrain it).
    """
    from raylab.methods.nnguide.training import train_classifier

    if config.classifier.weights is not None:
        return None
    pixels, labels = training_data(bench, config)
    trained = train_classifier(pixels, labels, config.classifier, config.train, seed=seed, storage_path=storage_path)
    run.log_metrics({f"train/{k}": v for k, v in trained.metrics.items()})
    return trained.state_dict


def nnguide_diagnostics(
    detector: NNGuideDetector, id_test: ModelOutputs, ood: dict[str, ModelOutputs]
) -> dict[str, float]:
    """Why NNGuide wins or loses: mean guidance / base per set, and each factor's own AUROC.

    ``auroc_guidance/<set>``: the AUROC of the guidance term alone (higher = more ID);
    ``auroc_base/<set>``: the base score alone. NNGuide helps where the guidance separates
    sets the base score confuses.
    """
    import numpy as np

    from raylab.eval.ood import ood_metrics

    parts = {"id_test": detector.components(id_test)} | {name: detector.components(o) for name, o in ood.items()}
    values: dict[str, float] = {"bank_offset": detector.offset, "bank_negative": float(detector.negative_bank)}
    for name, part in parts.items():
        values[f"guidance_mean/{name}"] = float(part["guidance"].mean())
        values[f"base_mean/{name}"] = float(part["base"].mean())
        values[f"base_negative/{name}"] = float(np.sum(part["base"] < 0))
    for name in ood:
        for factor in ("guidance", "base"):
            values[f"auroc_{factor}/{name}"] = ood_metrics(-parts["id_test"][factor], -parts[name][factor])["auroc"]
    return values


def _set_rows(
    method: str, dataset: str, seed: int, per_set: Mapping[str, Mapping[str, float]], **extra: Any
) -> list[Row]:
    """One row per OOD set (and ``average``) of one detector and seed."""
    return [
        Row(method, dataset, {"seed": seed}, dict(metrics), {"ood_set": name, **extra})
        for name, metrics in per_set.items()
    ]


def trial(setting: Setting, inputs: EvalInputs, config: NNGuideEvalConfig, context: TrialContext) -> TrialResult:
    """Every detector (and the hyperparameter selection) for one protocol seed."""
    from raylab.tasks.ood.benchmark import accuracy, evaluate_detector, flat_metrics
    from raylab.tasks.ood.classifiers import build_classifier
    from raylab.tasks.ood.detectors import NNGuideDetector, fit_detector
    from raylab.tasks.ood.outputs import extract_outputs

    seed = int(setting["seed"])
    bench = inputs.benchmarks[seed]
    arch = config.classifier.arch
    tags = {"seed": seed, "classifier": arch}
    with context.nested_run(f"classifier-s{seed}", params=config.classifier, tags=tags) as run:
        state = classifier_state(bench, config, seed, run, storage_path=context.storage_path)
        outputs: OutputSet = extract_outputs(
            bench.corpus, config.classifier, state, batch_size=config.extraction_batch_size
        )
        id_test = outputs.take(bench.roles["id_test"])
        id_accuracy = accuracy(id_test, bench.labels("id_test"))
        run.log_metrics({"id_accuracy": id_accuracy})
        run.log_text(str(bench.counts()), "roles.txt")
    source = outputs.take(bench.roles["id_train"])
    ood = {name: outputs.take(bench.roles[f"ood/{name}"]) for name in bench.ood_names}
    weights = state if state is not None else build_classifier(config.classifier).state_dict()
    extra = {"classifier": arch, "id_accuracy": id_accuracy}
    rows: list[Row] = []
    for name, detector_config in config.detector_configs().items():
        detector_config = with_seed(detector_config, seed)
        detector = fit_detector(detector_config, source, outputs.head)
        per_set = evaluate_detector(detector, id_test, ood)
        diagnostics = nnguide_diagnostics(detector, id_test, ood) if isinstance(detector, NNGuideDetector) else {}
        with context.nested_run(f"{name}-s{seed}", params=detector_config, tags={**tags, "method": name}) as run:
            run.log_metrics(
                flat_metrics(per_set) | {"id_accuracy": id_accuracy} | {f"diag/{k}": v for k, v in diagnostics.items()}
            )
            log_detector_model(run, name, detector, detector_config, source, id_test, ood, bench, config, weights)
        rows += _set_rows(name, context.dataset, seed, per_set, **extra)
    if config.sweep.enabled and bench.validation_ood is not None:
        rows += tuned_rows(config, bench, outputs, seed, context, tags, extra)
    return TrialResult(rows)


def log_detector_model(
    run,
    name: str,
    detector,
    detector_config,
    source,
    id_test,
    ood,
    bench: Benchmark,
    config: NNGuideEvalConfig,
    weights,
) -> None:
    """The detector with its classifier as an MLflow model on the detector's run (``raylab.models``)."""
    import json
    import tempfile
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from raylab.tasks.ood.benchmark import ood_scores
    from raylab.tasks.ood.scorer import log_ood_model

    first = bench.roles["id_test"][0]
    example = bench.corpus.filter(pc.is_in(bench.corpus["sample_id"], pa.array([first]))).column("image")[0].as_py()
    with tempfile.TemporaryDirectory() as scratch:
        uri = log_ood_model(
            run,
            name=name,
            classifier=config.classifier,
            state=weights,
            detector=detector_config,
            source=source,
            class_names=bench.id_classes,
            id_scores=ood_scores(detector, id_test),
            ood_scores=np.concatenate([ood_scores(detector, outputs) for outputs in ood.values()]),
            metrics={},
            example_image=example,
            scratch=Path(scratch),
        )
    run.set_tags(models=json.dumps({"id": uri}))


def tuned_rows(
    config: NNGuideEvalConfig, bench: Benchmark, outputs: OutputSet, seed: int, context: TrialContext, tags, extra
) -> list[Row]:
    """Select on (id_val, validation-OOD), refit on id_train, report on id_test vs the other OOD sets."""
    from raylab.methods.nnguide.tuning import describe, sweep_nnguide
    from raylab.tasks.ood.benchmark import evaluate_detector, flat_metrics
    from raylab.tasks.ood.detectors import fit_detector

    validation = bench.validation_ood
    result = sweep_nnguide(
        outputs.take(bench.roles["id_fit"]),
        outputs.take(bench.roles["id_val"]),
        outputs.take(bench.roles[f"ood/{validation}"]),
        outputs.head,
        config.sweep,
        seed=seed,
        name=context.run_name("nnguide-search"),
        storage_path=context.storage_path,
    )
    detector = fit_detector(result.best, outputs.take(bench.roles["id_train"]), outputs.head)
    reported = {name: outputs.take(bench.roles[f"ood/{name}"]) for name in bench.ood_names if name != validation}
    per_set = evaluate_detector(detector, outputs.take(bench.roles["id_test"]), reported)
    selected = describe(result.best)
    with context.nested_run(f"nnguide_tuned-s{seed}", params=selected, tags={**tags, "method": "nnguide_tuned"}) as run:
        run.log_metrics(flat_metrics(per_set) | {f"val/{k}": v for k, v in result.best_metrics.items()})
        run.log_text(result.trials.to_csv(index=False), "sweep_trials.csv")
        run.log_text(
            f"selected on id_val vs {validation}; reported on {sorted(reported)}\n{selected}\n", "selection.txt"
        )
    return _set_rows(
        "nnguide_tuned",
        context.dataset,
        seed,
        per_set,
        **extra,
        selected=selected,
        validation_ood=validation,
        validation_metrics=result.best_metrics,
        trials=len(result.trials),
    )


def report(rows: Sequence[Row], request: Request[NNGuideEvalConfig]) -> Report:
    from raylab.methods.nnguide.report import bar_chart, detector_table, format_detector_table
    from raylab.tasks.ood.benchmark import AVERAGE

    config = request.config
    dicts = [row.to_dict() for row in rows]
    ood_names = list(config.benchmark.ood_sets)
    validation = config.benchmark.validation_ood if any(r["method"] == "nnguide_tuned" for r in dicts) else None
    table = detector_table(dicts, ood_names, validation_ood=validation)
    title = f"{request.dataset} / {config.classifier.arch}"
    first = dicts[0]["method"]
    accuracies = ", ".join(
        f"seed {r['seed']}: {r['id_accuracy']:.4f}" for r in dicts if r["method"] == first and r["ood_set"] == AVERAGE
    )
    text = f"{title}: ID test accuracy {accuracies}; AUROC / FPR95 in %, mean over seeds\n" + format_detector_table(
        table
    )

    def figures(scratch: Path) -> list[Path]:
        return [bar_chart(table, ood_names, scratch / "auroc_fpr95.png", title)]

    return Report(text, tables={"results_table.csv": table.to_csv(index=False)}, figures=figures, table=table)


EXPERIMENT = Experiment(
    name=NAME,
    description="OOD detection with a classifier's features and logits: MSP, MaxLogit, Energy, KNN, "
    "NNGuide (energy/MSP/max-logit base) and their ReAct variants, features extracted once "
    "with Ray Data, NNGuide's k / bank ratio / ReAct percentile selected with Ray Tune + "
    "Optuna on ID validation + one validation-OOD set, everything logged to MLflow.",
    config_type=NNGuideEvalConfig,
    profiles={"cpu": NNGuideEvalConfig, "full": full_config},
    default_dataset="mnist_open_set",
    metrics_help=METRICS_HELP,
    axes=axes,
    prepare=prepare,
    trial=trial,
    report=report,
    executor="driver",
    quick=quick,
    arguments=arguments,
    apply_arguments=apply_arguments,
    check=check,
    summary_extra=lambda request, rows: {"classifier": request.config.classifier.arch},
)
