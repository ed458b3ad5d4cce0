"""``jobs/nnguide_eval.py``: NNGuide and its baselines on an OOD benchmark, tracked in MLflow.

Per protocol seed: build the benchmark (roles of every image), get the classifier (a
pretrained checkpoint, or one trained here with Ray Train), extract features and logits of
every image once with Ray Data, fit and score every configured detector on those outputs,
then select NNGuide's hyperparameters with Ray Tune + Optuna on validation data only and
report the selected detector on the remaining OOD sets. Summary rows follow the job
contract, one per detector x seed x ``ood_set`` (``average`` = the mean over the sets):
``method`` = the detector's name with its settings (``nnguide_k100_bank0.1``), ``metrics``
= AUROC, FPR95, AUPR-in, AUPR-out, detection accuracy, and ``id_accuracy`` beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from raylab.config import load_config
from raylab.eval.ood import ood_metrics
from raylab.jobs import init_ray, job_parser, parse_seeds, summary_row, write_summary
from raylab.methods.nnguide.benchmark import AVERAGE, Benchmark, accuracy, build_benchmark, evaluate_detector, flat_metrics
from raylab.methods.nnguide.config import NNGuideEvalConfig, with_seed
from raylab.methods.nnguide.detectors import ModelOutputs, NNGuideDetector, fit_detector
from raylab.methods.nnguide.features import OutputSet, extract_outputs, transform_for
from raylab.methods.nnguide.report import bar_chart, detector_table, format_detector_table
from raylab.methods.nnguide.sweep import describe, sweep_nnguide
from raylab.methods.nnguide.train_classifier import train_classifier
from raylab.tracking import tracked_run

JOB = "nnguide_eval"
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "nnguide"
# Benchmarks by the name users pass as --dataset: the ID dataset they read, and the config
# file each --network gets when no --config is given (the first network is the default).
BENCHMARKS = {
    "mnist_open_set": ("mnist_open_set", {"small_cnn": "mnist_open_set.yaml"}),
    "cifar10": ("cifar10_test", {"resnet56": "cifar10_resnet56.yaml", "resnet20": "cifar10_resnet20.yaml"}),
}
BENCHMARKS["cifar10_test"] = BENCHMARKS["cifar10"]
METRICS_HELP = (
    "auroc, fpr95 (FPR at 95% TPR, ID positive), aupr_in, aupr_out, detection_acc; one row per "
    "detector x seed x ood_set, where ood_set 'average' is the mean over the OOD sets; rows also "
    "carry id_accuracy (the classifier's top-1 accuracy on the ID test set)"
)


def parser() -> argparse.ArgumentParser:
    parser = job_parser(
        JOB,
        "OOD detection with a classifier's features and logits: MSP, MaxLogit, Energy, KNN, "
        "NNGuide (energy/MSP/max-logit base) and their ReAct variants, features extracted once "
        "with Ray Data, NNGuide's k / bank ratio / ReAct percentile selected with Ray Tune + "
        "Optuna on ID validation + one validation-OOD set, everything logged to MLflow.",
        default_dataset="mnist_open_set",
        metrics_help=METRICS_HELP,
    )
    parser.add_argument(
        "--network",
        default=None,
        help="classifier architecture; picks configs/nnguide/<dataset>_<network>.yaml when no --config is given "
        "(cifar10: resnet56 (default) or resnet20; mnist_open_set: small_cnn)",
    )
    parser.add_argument(
        "--weights", default=None, help="classifier checkpoint, loaded with strict=True (overrides classifier.weights)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the Ray Tune hyperparameter selection")
    return parser


def resolve_config(args: argparse.Namespace) -> NNGuideEvalConfig:
    """``--config``, else the (dataset, network) default config; then ``--weights``.

    The config's ID dataset must be the one ``--dataset`` names, and its architecture the
    one ``--network`` names: a mismatch is an error, never a silent choice of one of them.
    """
    id_dataset, network_configs = BENCHMARKS.get(args.dataset, (args.dataset, {}))
    path = args.config
    if path is None and network_configs:
        network = args.network or next(iter(network_configs))
        if network not in network_configs:
            raise SystemExit(f"--network {network}: no default config for {args.dataset}; known: {sorted(network_configs)}")
        path = CONFIG_DIR / network_configs[network]
    config = load_config(NNGuideEvalConfig, path)
    if config.benchmark.id_dataset != id_dataset:
        raise SystemExit(
            f"--dataset {args.dataset} but the config's benchmark.id_dataset is {config.benchmark.id_dataset}: "
            f"pass a config for {args.dataset} (configs/nnguide/) or the matching --dataset"
        )
    if args.network is not None and config.classifier.arch != args.network:
        raise SystemExit(f"--network {args.network} but the config's classifier.arch is {config.classifier.arch}")
    if args.weights is not None:
        if not Path(args.weights).is_file():
            raise SystemExit(f"--weights {args.weights}: no such file")
        config.classifier = dataclasses.replace(config.classifier, weights=args.weights)
    return config


def set_rows(method: str, args, seed: int, per_set: dict[str, dict[str, float]], **extra: Any) -> list[dict[str, Any]]:
    """One summary row per OOD set (and ``average``) of one detector and seed."""
    return [summary_row(method, args.dataset, None, seed, metrics, ood_set=name, **extra) for name, metrics in per_set.items()]


def training_data(bench: Benchmark, config: NNGuideEvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ``id_fit`` images, decoded by the extraction transform, and their class indices."""
    transform = transform_for(config.classifier)
    images = dict(zip(bench.corpus.column("sample_id").to_pylist(), bench.corpus.column("image").to_pylist()))
    pixels = np.stack([transform.image(images[sid], sid) for sid in bench.roles["id_fit"].tolist()])
    return pixels, bench.labels("id_fit")


def classifier_state(bench: Benchmark, config: NNGuideEvalConfig, seed: int, epochs: int, run) -> dict | None:
    """``None`` for a pretrained checkpoint; else train on ``id_fit`` with Ray Train and return the weights."""
    if config.classifier.weights is not None:
        return None
    pixels, labels = training_data(bench, config)
    train = dataclasses.replace(config.train, epochs=epochs)
    trained = train_classifier(pixels, labels, config.classifier, train, seed=seed)
    run.log_metrics({f"train/{k}": v for k, v in trained.metrics.items()})
    return trained.state_dict


def nnguide_diagnostics(detector: NNGuideDetector, id_test: ModelOutputs, ood: dict[str, ModelOutputs]) -> dict[str, float]:
    """Why NNGuide wins or loses: mean guidance / base per set, and each factor's own AUROC.

    ``auroc_guidance/<set>``: the AUROC of the guidance term alone (higher = more ID);
    ``auroc_base/<set>``: the base score alone. NNGuide helps where the guidance separates
    sets the base score confuses.
    """
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


def run_seed(args, config: NNGuideEvalConfig, seed: int, parent_id: str, *, quick: bool, sweep: bool) -> list[dict[str, Any]]:
    """Every detector (and the sweep) for one protocol seed; returns the summary rows."""
    bench = build_benchmark(
        config.benchmark, args.data_root, seed, max_per_role=config.quick.max_test_images_per_role if quick else None
    )
    classifier = config.classifier.arch
    tags = {"dataset": args.dataset, "seed": seed, "classifier": classifier}
    with tracked_run(JOB, f"classifier-s{seed}", params=config.classifier, tags=tags, parent_run_id=parent_id) as run:
        epochs = config.quick.epochs if quick else config.train.epochs
        state = classifier_state(bench, config, seed, epochs, run)
        outputs: OutputSet = extract_outputs(bench.corpus, config.classifier, state, batch_size=config.extraction_batch_size)
        id_test = outputs.take(bench.roles["id_test"])
        id_accuracy = accuracy(id_test, bench.labels("id_test"))
        run.log_metrics({"id_accuracy": id_accuracy})
        run.log_text(str(bench.counts()), "roles.txt")
    source = outputs.take(bench.roles["id_train"])
    ood = {name: outputs.take(bench.roles[f"ood/{name}"]) for name in bench.ood_names}
    rows = []
    extra = {"classifier": classifier, "id_accuracy": id_accuracy}
    for name, detector_config in config.detector_configs().items():
        detector_config = with_seed(detector_config, seed)
        detector = fit_detector(detector_config, source, outputs.head)
        per_set = evaluate_detector(detector, id_test, ood)
        diagnostics = nnguide_diagnostics(detector, id_test, ood) if isinstance(detector, NNGuideDetector) else {}
        with tracked_run(JOB, f"{name}-s{seed}", params=detector_config, tags={**tags, "method": name}, parent_run_id=parent_id) as run:
            run.log_metrics(flat_metrics(per_set) | {"id_accuracy": id_accuracy} | {f"diag/{k}": v for k, v in diagnostics.items()})
        rows += set_rows(name, args, seed, per_set, **extra)
    validation = bench.validation_ood
    if sweep and config.sweep.enabled and validation is not None:
        rows += run_sweep(args, config, bench, outputs, seed, parent_id, tags, extra, quick=quick)
    return rows


def run_sweep(args, config, bench: Benchmark, outputs: OutputSet, seed: int, parent_id: str, tags, extra, *, quick: bool) -> list[dict]:
    """Select on (id_val, validation-OOD), refit on id_train, report on id_test vs the other OOD sets."""
    validation = bench.validation_ood
    result = sweep_nnguide(
        outputs.take(bench.roles["id_fit"]),
        outputs.take(bench.roles["id_val"]),
        outputs.take(bench.roles[f"ood/{validation}"]),
        outputs.head,
        config.sweep,
        num_samples=config.quick.sweep_samples if quick else config.sweep.num_samples,
        seed=seed,
        name=f"nnguide-sweep-{args.dataset}-{config.classifier.arch}-s{seed}",
    )
    detector = fit_detector(result.best, outputs.take(bench.roles["id_train"]), outputs.head)
    reported = {name: outputs.take(bench.roles[f"ood/{name}"]) for name in bench.ood_names if name != validation}
    per_set = evaluate_detector(detector, outputs.take(bench.roles["id_test"]), reported)
    selected = describe(result.best)
    with tracked_run(JOB, f"nnguide_tuned-s{seed}", params=selected, tags={**tags, "method": "nnguide_tuned"}, parent_run_id=parent_id) as run:
        run.log_metrics(flat_metrics(per_set) | {f"val/{k}": v for k, v in result.best_metrics.items()})
        run.log_text(result.trials.to_csv(index=False), "sweep_trials.csv")
        run.log_text(f"selected on id_val vs {validation}; reported on {sorted(reported)}\n{selected}\n", "selection.txt")
    return set_rows(
        "nnguide_tuned", args, seed, per_set, **extra,
        selected=selected, validation_ood=validation, validation_metrics=result.best_metrics, trials=len(result.trials),
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    config = resolve_config(args)
    seeds = parse_seeds(args.seeds) or config.seeds
    init_ray()
    title = f"{args.dataset} / {config.classifier.arch}"
    run_params = {"config": config, "quick": args.quick, "seeds": seeds}
    with tracked_run(JOB, f"nnguide-{args.dataset}-{config.classifier.arch}", params=run_params, tags={"dataset": args.dataset}) as parent:
        rows = []
        for seed in seeds:
            rows += run_seed(args, config, seed, parent.run_id, quick=args.quick, sweep=not args.no_sweep)
        ood_names = list(config.benchmark.ood_sets)
        validation = config.benchmark.validation_ood if any(r["method"] == "nnguide_tuned" for r in rows) else None
        table = detector_table(rows, ood_names, validation_ood=validation)
        text = format_detector_table(table)
        accuracy_text = ", ".join(f"seed {r['seed']}: {r['id_accuracy']:.4f}" for r in rows if r["method"] == rows[0]["method"] and r["ood_set"] == AVERAGE)
        header = f"{title}: ID test accuracy {accuracy_text}; AUROC / FPR95 in %, mean over seeds\n"
        parent.log_text(header + text + "\n", "results_table.txt")
        parent.log_text(table.to_csv(index=False), "results_table.csv")
        with tempfile.TemporaryDirectory() as scratch:
            parent.log_artifact(bar_chart(table, ood_names, Path(scratch) / "auroc_fpr95.png", title))
    print(header + text)
    if args.summary_json:
        write_summary(args.summary_json, JOB, rows, classifier=config.classifier.arch)
    return {"rows": rows, "table": table}
