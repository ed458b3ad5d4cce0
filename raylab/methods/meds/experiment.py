"""``meds_sweep``: MeDS and its baselines over noise ratios and seeds (the flagship experiment).

One trial = one protocol setting (noise ratio, seed). It applies the noise protocol to the
shared corpus and fits, on identical cached features:

* ``meds``: the three stages (per-class partial memories -> distillation -> progressive
  selection, per class, and the released reconstruction training). As in the release, one
  network learns every class (``meds.network_per_class`` trains one per class instead);
  stages 2 and 3 are one Ray Train run per network, ``<network>-stage2-3``;
* ``clean_oracle``: MeDS's final detector with a perfect filter: stage 3's training recipe,
  from the same distilled weights, on the clean training images only (the training ids
  minus the injected ones; its own Train run, ``<network>-clean_oracle``) -- the ceiling
  that every noisy ``meds`` result sits beside;
* ``distilled``: the stage-2 network alone (no selection);
* ``partial_memory``: the stage-1 bootstrapped memories alone as the detector;
* ``patchcore``: the foundation's PatchCore (per class, as ``partial_memory``);

evaluates each on every class's test images, and logs one nested MLflow run per method
(metrics, per-class table, ROC, overlays, model; for MeDS also the per-pass kept fraction
and the filter's precision and recall against the injected-noise flags, per class and
averaged, which only the platform reads). ``--search N`` runs Optuna over
(rho, B, k, lr) with ASHA over the three stages (trials compared from stage 2 on, so every
trial trains its own network; stage 2's report comes after the Train run that trains both
stages 2 and 3, so ASHA's stage-2 rung can no longer save a stopped trial's stage-3 training,
only its evaluation and the clean oracle) as a sensitivity study: its objective is
test AUROC, so never use it to pick a configuration to report. Every search trial trains
its own networks (its Train runs are named by its sampled parameters).
"""

# Heavy imports (numpy, torch models, the evaluation) are deferred into the functions that use
# them, so the job's --help and config validation answer in well under a second.
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raylab.config import require
from raylab.experiment import (
    Experiment,
    Prepared,
    Report,
    Request,
    Row,
    SearchSpace,
    Setting,
    TrialContext,
    TrialResult,
)
from raylab.experiment.cost import CostModel
from raylab.features import FeatureSpec
from raylab.methods.meds.config import MeDSConfig, cpu_config
from raylab.tasks.anomaly.experiment import (
    CorpusFeatures,
    check_group_sizes,
    check_injected_in_test,
    check_noise_supply,
    keeps_injected_in_test,
    noise_axes,
    noise_ratio_option,
    prepare_corpus_features,
)
from raylab.tasks.anomaly.patchcore import PatchCoreConfig

if TYPE_CHECKING:
    import numpy as np

    from raylab.tasks.anomaly.benchmark import ClassEvaluation

NAME = "meds_sweep"
METHODS = ("meds", "clean_oracle", "patchcore", "partial_memory", "distilled")
METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


@dataclass(frozen=True)
class MeDSSweepConfig:
    dataset_options: dict[str, Any] = field(default_factory=dict)
    noise_ratios: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    seeds: tuple[int, ...] = (0,)
    # Test protocol for the injected defects: removed, kept or both (see raylab.tasks.anomaly.experiment).
    injected_in_test: str = "removed"
    features: FeatureSpec = field(default_factory=FeatureSpec)
    meds: MeDSConfig = field(default_factory=cpu_config)
    # PatchCore baseline on the same features; 1% coreset in the CPU size (the PatchCore
    # paper's own ablation shows 1% within a fraction of a point of 10% on MVTec). Its
    # ``features`` are the sweep's (see ``baseline_patchcore``): left unset, they follow them.
    patchcore: PatchCoreConfig = field(default_factory=lambda: PatchCoreConfig(coreset_ratio=0.01))
    methods: tuple[str, ...] = METHODS
    # Budget subsets: classes kept, evenly spread over the sorted names, then a stratified
    # subsample (per class, split and label); None keeps them all.
    max_classes: int | None = None
    images_per_group: int | None = None
    quick_images_per_group: int = 40
    quick_noise_ratios: tuple[float, ...] = (0.0, 0.2)

    def __post_init__(self) -> None:
        require(
            all(0.0 <= r < 1.0 for r in self.noise_ratios + self.quick_noise_ratios),
            "noise_ratios",
            f"must lie in [0, 1), got {self.noise_ratios}",
        )
        check_group_sizes(self.images_per_group, self.quick_images_per_group, self.max_classes)
        check_injected_in_test(self.injected_in_test)
        require(
            "meds" in self.methods and set(self.methods) <= set(METHODS),
            "methods",
            f"must include meds and come from {METHODS}, got {self.methods}",
        )
        # One source of truth for the feature sizes: the baseline scores the sweep's own
        # cached features, so a second image size or backbone could only disagree with them.
        require(
            self.patchcore.features in (self.features, FeatureSpec()),
            "patchcore.features",
            "must be left unset: the PatchCore baseline evaluates on the sweep's own features (set features.* instead)",
        )

    @property
    def baseline_patchcore(self) -> PatchCoreConfig:
        return dataclasses.replace(self.patchcore, features=self.features)


def full_config() -> MeDSSweepConfig:
    """The paper's sizes for MeDS itself (its encoder is set by a features overlay, e.g. meds/full_dinov2)."""
    return MeDSSweepConfig(meds=MeDSConfig(), patchcore=PatchCoreConfig())


def quick(config: MeDSSweepConfig) -> MeDSSweepConfig:
    return dataclasses.replace(
        config, images_per_group=config.quick_images_per_group, noise_ratios=config.quick_noise_ratios
    )


def prepare(request: Request[MeDSSweepConfig]) -> Prepared:
    config = request.config
    return prepare_corpus_features(request, config.features)


def filter_quality(history: list[np.ndarray], injected: np.ndarray) -> list[dict[str, float]]:
    """Per stage-3 pass: kept fraction, and precision / recall of the removal vs injected noise."""
    import numpy as np

    rows = []
    for keep in history:
        removed = ~np.asarray(keep, dtype=bool)
        caught = int((removed & injected).sum())
        rows.append(
            {
                "kept_fraction": float(np.mean(~removed)),
                "filter_precision": caught / removed.sum() if removed.any() else float("nan"),
                "filter_recall": caught / injected.sum() if injected.any() else float("nan"),
            }
        )
    return rows


def class_parts(history: Sequence[np.ndarray], sizes: Sequence[int]) -> list[list[np.ndarray]]:
    """Each class's part of every stage-3 pass's kept mask: a network's training images are
    its classes' images in order, ``sizes[i]`` of them for class ``i``."""
    import numpy as np

    bounds = np.cumsum([0, *sizes])
    return [[np.asarray(mask)[a:b] for mask in history] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def filter_curve(per_class: Sequence[Sequence[dict[str, float]]]) -> list[dict[str, float]]:
    """The filter's quality per stage-3 pass, each pass averaged over the classes that ran it.

    Classes make different numbers of selection passes (a pass ends when its kept set has been
    trained on, and the kept sets differ), so a class that stopped early leaves the later
    passes' means to the classes still selecting.
    """
    passes = max((len(rows) for rows in per_class), default=0)
    curve = []
    for index in range(passes):
        ran = [rows[index] for rows in per_class if index < len(rows)]
        curve.append({key: _mean_of_defined([row[key] for row in ran]) for key in ran[0]})
    return curve


def _mean_of_defined(values: list[float]) -> float:
    """The mean of the values that are defined; NaN, without a warning, when none is (a filter's
    precision on a class with no injected image)."""
    import numpy as np

    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


SEARCH_KEYS = {
    "rho": ("stage1", "rho"),
    "bootstraps": ("stage1", "bootstraps"),
    "mad_k": ("selection", "mad_k"),
    "lr": ("distillation", "lr"),
}


def with_search(config: MeDSConfig, sampled: dict[str, Any]) -> MeDSConfig:
    for key, (section, name) in SEARCH_KEYS.items():
        if key in sampled:
            config = dataclasses.replace(
                config, **{section: dataclasses.replace(getattr(config, section), **{name: sampled[key]})}
            )
    return config


def clean_training_mask(split) -> np.ndarray:
    """The perfect filter: True for the class's training images that are not injected noise
    (aligned with ``split.train_ids``). Only the platform's clean-oracle row reads it."""
    import numpy as np

    injected = np.asarray(split.train_injected, dtype=bool)
    if injected.shape != (len(split.train_ids),):
        raise ValueError(
            f"{split.class_name}: {injected.shape} injected flags for {len(split.train_ids)} training images"
        )
    return ~injected


def search_space() -> dict[str, Any]:
    from ray import tune

    return {
        "rho": tune.uniform(0.05, 0.3),
        "bootstraps": tune.randint(5, 40),
        "mad_k": tune.uniform(1.0, 5.0),
        "lr": tune.loguniform(5e-4, 5e-3),
    }


def networks(splits: Sequence[Any], per_class: bool) -> list[tuple[str, list[Any]]]:
    """The reconstruction networks a trial trains, each named, with the class splits it trains on.

    The release trains one network on every class's images (``all_classes``); with
    ``per_class`` each class gets its own, named by the class. The name is the last part of
    the network's Train run names and of its MLflow curves (``train/<name>/<stage>/...``).
    """
    if per_class:
        return [(split.class_name, [split]) for split in splits]
    return [("all_classes", list(splits))]


def trial(setting: Setting, inputs: CorpusFeatures, config: MeDSSweepConfig, context: TrialContext) -> TrialResult:
    """One (noise ratio, seed) setting, every method; reports stage 1 and 2 on the way (for ASHA).

    The baselines fit per class. MeDS trains its network(s) (see :func:`networks`), each one
    Train run for stages 2 and 3 and, with ``clean_oracle``, one more for the oracle; every
    network is evaluated on each of its classes' test images, so the rows stay per class means.
    """
    import numpy as np

    from raylab.data.protocols import NoiseProtocol, inject_noise
    from raylab.methods.meds.method import MeDS
    from raylab.methods.meds.partial_memory import PartialMemoryDetector
    from raylab.tasks.anomaly.artifacts import log_anomaly_artifacts
    from raylab.tasks.anomaly.benchmark import class_splits, evaluate_fitted, mean_over_classes
    from raylab.tasks.anomaly.patchcore.model import PatchCore
    from raylab.timing import phase

    noise_ratio, seed = float(setting["noise_ratio"]), int(setting["seed"])
    meds_config = with_search(config.meds, dict(setting.search))
    result = inject_noise(inputs.corpus, NoiseProtocol(noise_ratio, seed, keeps_injected_in_test(setting)))
    image_size = config.features.image_size
    splits = list(class_splits(result.table, image_size))
    evaluations: dict[str, dict[str, ClassEvaluation]] = {m: {} for m in config.methods}
    for split in splits:
        train = inputs.features.take(split.train_ids)
        if "patchcore" in config.methods:
            with phase("PatchCore baseline: fit"):
                patchcore = PatchCore(config.baseline_patchcore, seed=seed).fit(train)
            evaluations["patchcore"][split.class_name] = evaluate_fitted(patchcore, split, inputs.features)
        if "partial_memory" in config.methods:
            stage1 = dataclasses.replace(meds_config.stage1, seed=seed, pool_grid=meds_config.token_grid)
            with phase("partial-memory detector (stage 1 alone): fit"):
                detector = PartialMemoryDetector(stage1, image_size=image_size).fit(train)
            evaluations["partial_memory"][split.class_name] = evaluate_fitted(detector, split, inputs.features)
    context.report({"stage": 1, "image_auroc": _mean_auroc(evaluations.get("partial_memory"))})

    filter_rows: list[list[dict[str, float]]] = []  # per class, one row per stage-3 pass
    curves: dict[str, dict[str, list[dict[str, float]]]] = {}  # network -> Train stage -> per-epoch reports
    for name, group in networks(splits, meds_config.network_per_class):
        sizes = [len(split.train_ids) for split in group]
        meds = MeDS(
            meds_config,
            seed=seed,
            image_size=image_size,
            run_name=context.run_name(name),
            storage_path=context.storage_path,
        )
        train_ids = [sample_id for split in group for sample_id in split.train_ids]
        meds.fit(inputs.features.take(train_ids), np.repeat(np.arange(len(group)), sizes))
        fitted = {"meds": meds, "distilled": meds.distilled}
        if "clean_oracle" in config.methods:
            clean = np.concatenate([clean_training_mask(split) for split in group])
            fitted["clean_oracle"] = meds.train_on(clean, "clean_oracle")
        for split, kept in zip(group, class_parts(meds.selection_history, sizes), strict=True):
            for method, detector in fitted.items():
                if method in config.methods:
                    evaluations[method][split.class_name] = evaluate_fitted(detector, split, inputs.features)
            filter_rows.append(filter_quality(kept, split.train_injected))
        curves[name] = meds.training_metrics
    context.report({"stage": 2, "image_auroc": _mean_auroc(evaluations.get("distilled"))})

    rows = []
    values = dict(setting.values)
    for method, per_class in evaluations.items():
        class_evaluations = [per_class[split.class_name] for split in splits]
        metrics = mean_over_classes(class_evaluations)
        tags = {"method": method, **values, "trial": context.trial_id}
        params = {**values, **setting.search, "config": config}
        with (
            phase("MLflow: per-method runs and artefacts"),
            context.nested_run(f"{method}-{setting.tag()}-{context.trial_id}", params=params, tags=tags) as run,
        ):
            run.log_metrics(metrics)
            if method == "meds":
                for step, means in enumerate(filter_curve(filter_rows)):
                    run.log_metrics(means, step=step)
                log_training_curves(run, curves)
            log_anomaly_artifacts(run, class_evaluations, inputs.corpus, features=config.features)
        extra = {"search": dict(setting.search), "trial": context.trial_id} if setting.search else {}
        rows.append(Row(method, context.dataset, values, metrics, extra))
    objective = next(r for r in rows if r.method == "meds").metrics["image_auroc"]
    return TrialResult(rows, objective={"stage": 3, "image_auroc": objective})


def log_training_curves(run, curves: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    """Each network's Train curves (losses, learning rate, kept fraction) as MLflow metrics with
    their epoch as the step: ``train/<network>/<stage>/<metric>``, one line per curve in the UI."""
    for network, stages in curves.items():
        for stage, reports in stages.items():
            for report in reports:
                values = {
                    f"train/{network}/{stage}/{k}": float(v)
                    for k, v in report.items()
                    if k not in ("epoch", "stage") and _is_number(v)
                }
                run.log_metrics(values, step=int(report.get("epoch", 0)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --smoke: a paper-size config's architecture unchanged, its budget shrunk to seconds of compute
# per stage (one class, two images per (class, split, label) group, two bootstraps, two steps
# per stage). One class: every stage, Train run and model of the job runs once instead of once
# per class, which would repeat the same code paths at the same sizes.
SMOKE = {
    "max_classes": 1,
    "images_per_group": 2,
    "noise_ratios": [0.2],
    "seeds": [0],
    "meds": {
        "stage1": {"bootstraps": 2},
        "distillation": {"iterations": 2, "warmup_iterations": 1, "epochs": 1},
        "selection": {"iterations": 2, "epochs": 1, "warmup_iterations": 1, "hard_mining_ramp_iterations": 1},
    },
}


# The cost benchmark's second run: four times the decoder steps of each stage, so the time
# they add stands clear of the run-to-run spread of the start-up costs (two more steps a stage
# once measured as no slower than the smoke).
SMOKE_SCALED = {"meds": {"distillation": {"iterations": 8}, "selection": {"iterations": 8}}}


def cost(request: Request[MeDSSweepConfig]) -> CostModel:
    """A trial's decoder image-steps (stages 2 and 3, every network) and the token arrays it holds.

    Counts the corpus's training images per class (file lists only) and sizes the tokens on
    the meta device, so it runs in seconds for a paper-size backbone without its weights.
    """
    from raylab.experiment.cost import ADAM_STATE_COPIES, FLOAT32, parameter_count
    from raylab.features.extract import EXTRACTION_BATCH, backbone_state_bytes, extraction_peak_bytes, feature_shape
    from raylab.methods.meds.model import ReconstructionScoreNet
    from raylab.step_memory import step_peak_bytes
    from raylab.tasks.anomaly.experiment import corpus_of

    config, meds = request.config, request.config.meds
    corpus = corpus_of(request)
    columns = corpus.select(["class_name", "split"]).to_pylist()
    train_per_class: dict[str, int] = {}
    for row in columns:
        if row["split"] == "train":
            train_per_class[row["class_name"]] = train_per_class.get(row["class_name"], 0) + 1
    height, width, dim = feature_shape(config.features)
    token_bytes = height * width * dim * FLOAT32
    largest = max(train_per_class.values(), default=0)
    d = meds.distillation

    def decoder() -> ReconstructionScoreNet:
        return ReconstructionScoreNet(
            meds.groups, dim, d.hidden_dim, d.decoder_blocks, d.heads, d.bottleneck_ratio, d.dropout
        )

    parameters = parameter_count(decoder)
    tokens = (meds.token_grid or height) * (meds.token_grid or width)
    batch = max(d.batch_size, meds.selection.batch_size)

    def decoder_step(network: ReconstructionScoreNet):
        import torch

        from raylab.methods.meds.model import token_distance

        return token_distance(*network(torch.empty(batch, tokens, dim))).mean()

    # Per network, one Train run for stages 2+3 (its checkpoint also holds the distilled
    # weights) and, with clean_oracle, one more for the oracle's stage 3.
    oracle = "clean_oracle" in config.methods
    copies_per_network = (ADAM_STATE_COPIES + 1) + (ADAM_STATE_COPIES if oracle else 0)
    network_count = len(train_per_class) if meds.network_per_class else 1
    settings = len(config.noise_ratios) * len(config.seeds)
    checkpoints = parameters * FLOAT32 * copies_per_network * network_count * settings
    stage3_runs = 2 if oracle else 1
    # A network's training tokens, held by the trial and again as the Train workers' dataset.
    trained_together = largest if meds.network_per_class else sum(train_per_class.values())
    # Every setting logs one model per method and class (raylab/tasks/anomaly/artifacts.py),
    # each with the backbone's weights; the decoder methods' also hold the decoder's.
    decoder_methods = len(set(config.methods) & {"meds", "distilled", "clean_oracle"})
    model_bytes = (
        settings
        * len(train_per_class)
        * (len(config.methods) * backbone_state_bytes(config.features) + decoder_methods * parameters * FLOAT32)
    )
    return CostModel(
        work=network_count
        * (d.iterations * d.batch_size + stage3_runs * meds.selection.iterations * meds.selection.batch_size),
        work_unit="decoder image-steps",
        array_bytes=2 * trained_together * token_bytes,
        checkpoint_bytes=checkpoints,
        cache_bytes=corpus.num_rows * token_bytes,
        model_bytes=model_bytes,
        accelerator_bytes=max(
            step_peak_bytes(decoder, decoder_step, train=True, optimizer_moments=2),
            extraction_peak_bytes(config.features),
        ),
        accelerator_step=f"the larger of a decoder training step ({batch} images x {tokens} tokens, AdamW) "
        f"and an extraction batch ({EXTRACTION_BATCH} images)",
        notes=(
            f"{len(train_per_class)} classes, up to {largest} training images each, "
            f"{'a network per class' if meds.network_per_class else 'one network for all'}; "
            f"tokens {height}x{width}x{dim}; decoder {parameters / 1e6:.1f} M parameters, "
            "the newest checkpoint kept per Train run",
            "MLflow models: each holds its own copy of the backbone's weights; the memory banks of "
            "patchcore and partial_memory are not counted",
        ),
    )


def _mean_auroc(evaluations: dict[str, ClassEvaluation] | None) -> float:
    import numpy as np

    return float(np.mean([e.metrics["image_auroc"] for e in evaluations.values()])) if evaluations else float("nan")


def report(rows: Sequence[Row], request: Request[MeDSSweepConfig]) -> Report:
    from raylab.report.figures import metric_vs_setting
    from raylab.report.tables import aggregate, format_table

    table = aggregate([r.to_dict() for r in rows], ["injected_in_test", "noise_ratio", "method"], METRICS)
    text = format_table(table, ["image_auroc", "pixel_auroc", "aupro"])

    def figures(scratch: Path) -> list[Path]:
        both = table["injected_in_test"].nunique() > 1

        def label(method: str, protocol: str) -> str:
            return f"{method} (injected {protocol} in test)" if both else method

        series = {
            label(method, protocol): (list(g["noise_ratio"]), list(g["image_auroc_mean"]), list(g["image_auroc_std"]))
            for (method, protocol), g in table.groupby(["method", "injected_in_test"])
        }
        return [metric_vs_setting(series, scratch / "image_auroc_vs_noise.png", "noise ratio", "image AUROC")]

    return Report(text, tables={"results_table.csv": table.to_csv(index=False)}, figures=figures, table=table)


EXPERIMENT = Experiment(
    name=NAME,
    description="MeDS (bootstrapped partial memories, distillation, progressive selection) against PatchCore, "
    "stage 1 alone, stage 2 alone and a clean-data oracle (MeDS's final detector trained on the clean images only), "
    "over noise ratios x seeds on Ray Tune, tracked in MLflow "
    "(a parent run per sweep, nested runs per method and setting).",
    config_type=MeDSSweepConfig,
    profiles={"cpu": MeDSSweepConfig, "full": full_config},
    default_dataset="elpv",
    metrics_help=", ".join(METRICS) + "; rows carry method in {" + ", ".join(METHODS) + "}",
    axes=noise_axes,
    prepare=prepare,
    trial=trial,
    report=report,
    executor="tune",
    config_folder="meds",
    quick=quick,
    arguments=lambda parser: noise_ratio_option(parser, "0,0.1,0.2,0.4"),
    check=check_noise_supply,
    search=SearchSpace(
        space=search_space,
        metric="image_auroc",
        mode="max",
        time_attr="stage",
        max_t=3,
        grace_period=2,
        help="run N Optuna trials over rho, B, k, lr per setting with ASHA over the stages (a sensitivity "
        "study: the objective is test AUROC, so never report its best trial as a result)",
    ),
    setting_keys=("meds.stage1.seed",),
    trial_resources=lambda config: {"CPU": 0.01},
    # What a trial's Train workers hold together (one Train run at a time: MeDS's, then the oracle's).
    trial_cpus=lambda config: config.meds.train_workers * config.meds.cpus_per_train_worker,
    smoke=SMOKE,
    smoke_scaled=SMOKE_SCALED,
    cost=cost,
)
