"""MeDS stage 2: how well does a decoder of a given size reproduce the stage-1 maps?

MeDS's second stage trains a reconstruction network whose anomaly map must reproduce the
stage-1 partial-memory map of every training image. If the network is too small or trained
too briefly, the distilled detector (and MeDS, which starts from it) loses what stage 1
found. For each requested decoder size this script runs stages 1 and 2 per class (Ray Train,
the sweep's own code; stage 1 is deterministic in the seed, so every size is trained on the
same maps), on one (noise ratio, seed) setting, and reports:

* ``fidelity_map``: Pearson correlation between the distilled and the stage-1 token maps of
  the training images (pooled over classes) -- the quantity stage 2 is trained for, read
  without any label;
* ``fidelity_image``: Spearman correlation of the two image scores on the training images;
* ``distill_s``: stage-2 wall time;
* ``image_auroc`` / ``pixel_auroc``: the distilled detector on the test split, next to the
  stage-1 detector's (``partial_memory``) -- a diagnostic of where a sweep's accuracy goes,
  not a way to pick a configuration (it reads test labels).

Sizes are spelled as everywhere in raylab (:func:`raylab.methods.meds.config.with_decoder_size`):
``WIDTHxBLOCKS@ITERATIONS`` with stage 3's iterations, of which stage 2 (studied here) gets
half; the CPU default is ``64x2@800`` (400 distillation iterations).

Run (magnetic tile, the sweep's CPU configuration otherwise)::

    python benchmarks/meds_distillation_capacity.py --dataset magnetic_tile \\
        --data-root ../shared/data --noise-ratio 0 --sizes 64x2@800,64x2@3200,128x2@1600

Measured on 2 cores (seed 0, noise 0; stage 1 alone 0.868 image AUROC), in distillation
iterations: 64x2 at 400 fidelity 0.910 / 0.812, image AUROC 0.744; 64x2 at 1600 0.974 /
0.972, 0.722; 128x2 at 800 0.976 / 0.975, 0.705. A closer fit of the training maps does not
carry over to the test images (raylab/methods/meds/README.md, "MeDS on magnetic tile").
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from raylab.data.protocols import NoiseProtocol, inject_noise, subsample_corpus
from raylab.data.store import cache_root
from raylab.experiment.session import init_ray
from raylab.features.cache import cached_patch_features
from raylab.methods.meds.method import MeDS
from raylab.methods.meds.partial_memory import PartialMemoryDetector
from raylab.methods.meds.size_study import add_size_study_arguments, size_study_inputs
from raylab.methods.meds.training import image_scores_from_tokens
from raylab.tasks.anomaly.benchmark import class_splits, evaluate_fitted, mean_over_classes


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x)).astype(np.float64) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_size_study_arguments(parser, "64x2@800,64x2@3200,128x2@1600")
    parser.add_argument("--noise-ratio", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config, sizes, corpus = size_study_inputs(parser, args)
    if config.images_per_group is not None:
        corpus = subsample_corpus(corpus, config.images_per_group)
    init_ray()
    features = cached_patch_features(corpus, config.features)
    # One test protocol per measurement: the release's when the config asks only for it.
    table = inject_noise(corpus, NoiseProtocol(args.noise_ratio, args.seed, config.injected_in_test == "kept")).table
    splits = class_splits(table, config.features.image_size)
    image_size, grid = config.features.image_size, config.meds.token_grid

    stage1 = dataclasses.replace(config.meds.stage1, seed=args.seed, pool_grid=grid)
    reference = [
        evaluate_fitted(
            PartialMemoryDetector(stage1, image_size=image_size).fit(features.take(s.train_ids)), s, features
        )
        for s in splits
    ]
    lines = [{"size": "stage 1 (partial_memory)", **_test_metrics(mean_over_classes(reference))}]

    for size, meds_config in sizes.items():
        tag = f"meds-capacity-{args.dataset}-nr{args.noise_ratio:g}-s{args.seed}-{size.replace('@', 'at')}"
        evaluations, maps, targets, scores, target_scores = [], [], [], [], []
        start = time.perf_counter()
        for split in splits:
            meds = MeDS(
                meds_config,
                seed=args.seed,
                image_size=image_size,
                run_name=f"{tag}-{split.class_name}",
                storage_path=str(cache_root() / "ray_results"),
            )
            predicted, target = meds.distil(features.take(split.train_ids)).training_maps()
            maps.append(predicted.ravel())
            targets.append(target.ravel())
            for out, token_map in ((scores, predicted), (target_scores, target)):
                out.append(
                    image_scores_from_tokens(
                        token_map, token_map.shape[1], image_size, meds_config.blur_sigma, meds_config.top_fraction
                    )
                )
            evaluations.append(evaluate_fitted(meds.distilled, split, features))
        seconds = time.perf_counter() - start
        lines.append(
            {
                "size": size,
                "fidelity_map": float(np.corrcoef(np.concatenate(maps), np.concatenate(targets))[0, 1]),
                "fidelity_image": spearman(np.concatenate(scores), np.concatenate(target_scores)),
                "distill_s": seconds,
                **_test_metrics(mean_over_classes(evaluations)),
            }
        )
        print(lines[-1], flush=True)

    print(f"\n{args.dataset}, noise ratio {args.noise_ratio:g}, seed {args.seed}")
    columns = ["size", "fidelity_map", "fidelity_image", "distill_s", "image_auroc", "pixel_auroc"]
    print(" | ".join(columns))
    for line in lines:
        print(" | ".join(_cell(line.get(c)) for c in columns))


def _test_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: metrics[k] for k in ("image_auroc", "pixel_auroc") if k in metrics}


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
