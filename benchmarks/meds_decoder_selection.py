"""MeDS at CPU size: choose the decoder (width, blocks, iterations) on validation data.

The final detector of MeDS is a reconstruction network; at the paper's size it has 8 blocks
of width 768, which a 2-core machine cannot train in a trial. Which smaller size to run is a
choice, and it must be made without the test split. This script makes it on a synthetic
validation split (:mod:`raylab.data.protocols.validation`): 20% of the clean training images
held out as normals, a DRAEM-style synthetic defect on a copy of each as anomalies. For
every candidate size it runs the whole of MeDS (stages 1-3, the sweep's own code and Ray
Train runs) on the remaining 80%, scores the validation images, and reports image and pixel
AUROC with the wall time of the fit. The choice is the best validation image AUROC among
the sizes whose fit stays within the per-trial budget (``--budget-s``); no real defect image,
so no test label, is read.

Run (magnetic tile, the sweep's CPU configuration otherwise)::

    python benchmarks/meds_decoder_selection.py --dataset magnetic_tile --data-root ../shared/data \\
        --sizes 64x2@800,128x2@800,256x2@800 --budget-s 900

The measured table and the choice are in raylab/methods/meds/README.md.
"""

from __future__ import annotations

import argparse
import time

from raylab.config import load_config
from raylab.data import load_corpus
from raylab.data.protocols.validation import SyntheticValidation, synthetic_validation
from raylab.data.store import cache_root
from raylab.experiment.runner import config_file, packaged_config
from raylab.experiment.session import init_ray
from raylab.features.cache import cached_patch_features
from raylab.methods.meds.config import with_decoder_size
from raylab.methods.meds.experiment import MeDSSweepConfig
from raylab.methods.meds.method import MeDS
from raylab.tasks.anomaly.benchmark import class_splits, evaluate_fitted, mean_over_classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="magnetic_tile")
    parser.add_argument("--data-root")
    parser.add_argument(
        "--config", help="sweep YAML, a file or a packaged name such as meds/smoke (default: meds/<dataset>)"
    )
    parser.add_argument("--seed", type=int, default=0, help="stage 1's bootstraps and the networks' initialisation")
    parser.add_argument("--validation-seed", type=int, default=0, help="which images are held out, and their defects")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of each class's training images held out")
    parser.add_argument(
        "--sizes", default="64x2@800,128x2@800,256x2@800", help="comma-separated WIDTHxBLOCKS@ITERATIONS"
    )
    parser.add_argument("--budget-s", type=float, default=900.0, help="longest MeDS fit a choice may take")
    args = parser.parse_args()

    overlay = config_file(args.config) if args.config else packaged_config("meds", args.dataset)
    config = load_config(MeDSSweepConfig, overlay)
    try:
        candidates = {size: with_decoder_size(config.meds, size) for size in args.sizes.split(",")}
    except ValueError as error:
        parser.error(str(error))
    corpus = load_corpus(args.dataset, args.data_root, **config.dataset_options)
    table = synthetic_validation(corpus, SyntheticValidation(args.fraction, args.validation_seed))
    init_ray()
    features = cached_patch_features(table, config.features)
    splits = class_splits(table, config.features.image_size)

    lines = []
    for size, meds_config in candidates.items():
        evaluations = []
        start = time.perf_counter()
        for split in splits:
            meds = MeDS(
                meds_config,
                seed=args.seed,
                image_size=config.features.image_size,
                run_name=f"meds-size-{args.dataset}-v{args.validation_seed}-s{args.seed}-{size.replace('@', 'at')}-"
                f"{split.class_name}",
                storage_path=str(cache_root() / "ray_results"),
            )
            meds.fit(features.take(split.train_ids))
            evaluations.append(evaluate_fitted(meds, split, features))
        metrics = mean_over_classes(evaluations)
        lines.append(
            {
                "size": size,
                "fit_s": time.perf_counter() - start,
                "val_image_auroc": metrics["image_auroc"],
                "val_pixel_auroc": metrics.get("pixel_auroc"),
            }
        )
        print(lines[-1], flush=True)

    held = sum(int((s.test_labels == 0).sum()) for s in splits)
    print(
        f"\n{args.dataset}: {held} held-out training images + as many synthetic defects, "
        f"seed {args.seed}, validation seed {args.validation_seed}"
    )
    print("size | fit_s | val_image_auroc | val_pixel_auroc")
    for line in lines:
        pixel = "-" if line["val_pixel_auroc"] is None else f"{line['val_pixel_auroc']:.3f}"
        print(f"{line['size']} | {line['fit_s']:.0f} | {line['val_image_auroc']:.3f} | {pixel}")
    affordable = [line for line in lines if line["fit_s"] <= args.budget_s]
    if affordable:
        best = max(affordable, key=lambda line: line["val_image_auroc"])
        print(f"chosen within {args.budget_s:g} s: {best['size']}")
    else:
        print(f"no size fits within {args.budget_s:g} s")


if __name__ == "__main__":
    main()
