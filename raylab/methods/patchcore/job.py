"""``jobs/patchcore_eval.py``: PatchCore on a dataset, over noise ratios and seeds, in MLflow."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from typing import Any

from raylab.config import load_config
from raylab.data import load_corpus
from raylab.data.protocols import subsample_corpus
from raylab.features import cached_patch_features
from raylab.jobs import init_ray, job_parser, parse_seeds, write_summary
from raylab.methods.anomaly_job import AnomalySetting, run_settings
from raylab.methods.patchcore.config import PatchCoreConfig
from raylab.methods.patchcore.model import PatchCore
from raylab.report.tables import aggregate, format_table
from raylab.tracking import tracked_run, tracking_uri

JOB = "patchcore_eval"
METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


@dataclass
class PatchCoreEvalConfig:
    dataset_options: dict[str, Any] = field(default_factory=dict)
    noise_ratios: tuple[float, ...] = (0.0,)
    seeds: tuple[int, ...] = (0,)
    keep_injected_in_test: bool = False
    quick_images_per_group: int = 60
    quick_coreset_ratio: float = 0.01
    patchcore: PatchCoreConfig = field(default_factory=PatchCoreConfig)


def parser() -> argparse.ArgumentParser:
    parser = job_parser(
        JOB,
        "Evaluate PatchCore (greedy coreset memory of patch embeddings, 1-NN scoring) on an "
        "anomaly-detection dataset under the noise protocol, logging every setting to MLflow.",
        default_dataset="elpv",
        metrics_help=", ".join(METRICS) + " (pixel metrics only for datasets with masks)",
    )
    parser.add_argument("--noise-ratios", default=None, help="comma-separated noise ratios, e.g. 0,0.1 (default: config, 0)")
    return parser


def make_patchcore(config: PatchCoreConfig):
    def factory(split, seed: int) -> PatchCore:
        return PatchCore(config, seed=seed)

    return factory


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    config = load_config(PatchCoreEvalConfig, args.config)
    seeds = parse_seeds(args.seeds) or config.seeds
    ratios = tuple(float(r) for r in args.noise_ratios.split(",")) if args.noise_ratios else config.noise_ratios
    corpus = load_corpus(args.dataset, args.data_root, **config.dataset_options)
    if args.quick:
        corpus = subsample_corpus(corpus, config.quick_images_per_group)
        config.patchcore = replace(config.patchcore, coreset_ratio=config.quick_coreset_ratio)
    init_ray()
    features = cached_patch_features(corpus, config.patchcore.features)
    settings = [
        AnomalySetting("patchcore", args.dataset, ratio, seed, config.keep_injected_in_test) for ratio in ratios for seed in seeds
    ]
    with tracked_run(JOB, f"patchcore-{args.dataset}", params=config, tags={"dataset": args.dataset, "method": "patchcore"}) as parent:
        rows = run_settings(
            settings,
            make_patchcore(config.patchcore),
            corpus,
            features,
            image_size=config.patchcore.features.image_size,
            job=JOB,
            tracking_uri=tracking_uri(),
            parent_run_id=parent.run_id,
            params=config,
        )
        table = aggregate(rows, ["method", "dataset", "noise_ratio"], METRICS)
        text = format_table(table, METRICS)
        parent.log_text(text, "results_table.txt")
        parent.log_text(table.to_csv(index=False), "results_table.csv")
    print(text)
    if args.summary_json:
        write_summary(args.summary_json, JOB, rows)
    return {"rows": rows, "table": table}
