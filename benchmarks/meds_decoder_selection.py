"""MeDS at CPU size: choose the decoder (width, blocks, iterations) on validation data.

The final detector of MeDS is a reconstruction network; at the paper's size it has 8 blocks
of width 768, which a 2-core machine cannot train in a trial. Which smaller size to run is a
choice, and it must be made without the test split. This script makes it on a synthetic
validation split (:mod:`raylab.data.protocols.validation`): 20% of the clean training images
held out as normals, a DRAEM-style synthetic defect on a copy of each as anomalies. For
every candidate size it runs the whole of MeDS (stages 1-3, the sweep's own code and Ray
Train runs) on the remaining 80%, scores the validation images, and reports image and pixel
AUROC with the wall time of the fit. Two validation sets share the held-out normals: DRAEM's
own defects, and subtle ones (at most 5% of the image, blended at least 40% transparent),
since an objective every size saturates cannot rank sizes. Among the sizes whose fit stays
within the budget (``--max-work``, in multiples of the first size's training compute: decoder
parameters x image-steps of stages 2 and 3), the choice is the cheapest whose subtle-set image
AUROC is within one standard error (Hanley-McNeil) of the best: a smaller gap is the sampling
of 2 x 133 validation images, not a ranking. No real defect image, so no test label, is
read. Each size's Train run is named by the fit images and the whole MeDS configuration, so
re-running the script scores again without training again.

Run (magnetic tile, the sweep's CPU configuration otherwise)::

    python benchmarks/meds_decoder_selection.py --dataset magnetic_tile --data-root ../shared/data \\
        --sizes 64x2@800,64x2@1600,64x4@800,128x2@800 --max-work 4

The measured table and the choice are in raylab/methods/meds/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pyarrow as pa
import pyarrow.compute as pc

from raylab.data.protocols.validation import SyntheticValidation, synthetic_validation
from raylab.data.store import cache_root, columns_fingerprint
from raylab.data.synthetic_defects import SyntheticDefectConfig
from raylab.eval import auroc_standard_error
from raylab.experiment.identity import content_hash
from raylab.experiment.session import init_ray
from raylab.features.cache import cached_patch_features
from raylab.methods.meds.config import MeDSConfig
from raylab.methods.meds.method import MeDS
from raylab.methods.meds.size_study import add_size_study_arguments, size_study_inputs
from raylab.tasks.anomaly.benchmark import class_splits, evaluate_fitted, mean_over_classes

# DRAEM's defects, and subtle ones: small and half transparent at least (the choice reads these).
VALIDATION_DEFECTS = {
    "draem": SyntheticDefectConfig(),
    "subtle": SyntheticDefectConfig(max_area=0.05, beta_range=(0.4, 0.8)),
}
CHOOSE_ON = "subtle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_size_study_arguments(parser, "64x2@800,64x2@1600,64x4@800,128x2@800")
    parser.add_argument("--seed", type=int, default=0, help="stage 1's bootstraps and the networks' initialisation")
    parser.add_argument("--validation-seed", type=int, default=0, help="which images are held out, and their defects")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of each class's training images held out")
    parser.add_argument(
        "--max-work", type=float, default=4.0, help="most training compute a choice may take, x the first size's"
    )
    args = parser.parse_args()

    config, candidates, corpus = size_study_inputs(parser, args)
    validations = {
        name: synthetic_validation(corpus, SyntheticValidation(args.fraction, args.validation_seed, defects, name))
        for name, defects in VALIDATION_DEFECTS.items()
    }
    first = next(iter(validations.values()))
    defect_rows = [t.filter(pc.equal(t["label"], 1)) for t in list(validations.values())[1:]]
    init_ray()
    features = cached_patch_features(pa.concat_tables([first, *defect_rows]), config.features)
    splits = {name: class_splits(table, config.features.image_size) for name, table in validations.items()}
    fit_splits = splits[next(iter(splits))]  # every validation set has the same fit images
    fit_rows = first.filter(pc.equal(first["split"], "train"))
    fit_key = columns_fingerprint(fit_rows, ["sample_id", "image"])
    token_dim = int(features.take(fit_rows["sample_id"].to_pylist()[:1]).shape[-1])

    lines = []
    for size, meds_config in candidates.items():
        inputs = [fit_key, args.seed, dataclasses.asdict(meds_config), dataclasses.asdict(config.features)]
        identity = content_hash(inputs)
        evaluations = {name: [] for name in splits}
        start = time.perf_counter()
        for index, split in enumerate(fit_splits):
            meds = MeDS(
                meds_config,
                seed=args.seed,
                image_size=config.features.image_size,
                run_name=f"meds-size-{args.dataset}-{size.replace('@', 'at')}-{identity}-{split.class_name}",
                storage_path=str(cache_root() / "ray_results"),
            )
            meds.fit(features.take(split.train_ids))
            for name in splits:
                evaluations[name].append(evaluate_fitted(meds, splits[name][index], features))
        # fit_s is this run's wall time: small where a re-run reused a finished Train run, so the
        # choice ranks sizes by their compute, which a re-run cannot change.
        line = {"size": size, "work": training_work(meds_config, token_dim), "fit_s": time.perf_counter() - start}
        for name, per_class in evaluations.items():
            metrics = mean_over_classes(per_class)
            line |= {f"{name}_image_auroc": metrics["image_auroc"], f"{name}_pixel_auroc": metrics.get("pixel_auroc")}
        lines.append(line)
        print(lines[-1], flush=True)

    held = sum(int((s.test_labels == 0).sum()) for s in fit_splits)
    print(
        f"\n{args.dataset}: {held} held-out training images, as many defects in each validation set, "
        f"seed {args.seed}, validation seed {args.validation_seed}"
    )
    columns = [key for key in lines[0] if key != "size"]
    print(" | ".join(["size", *columns]))
    for line in lines:
        cells = ["-" if line[c] is None else f"{line[c]:.0f}" if c == "fit_s" else f"{line[c]:.3f}" for c in columns]
        cells[0] = f"{line['work'] / lines[0]['work']:.2f}x"
        print(" | ".join([line["size"], *cells]))
    affordable = [line for line in lines if line["work"] <= args.max_work * lines[0]["work"]]
    if not affordable:
        print(f"no size within {args.max_work:g}x the first size's compute")
        return
    best = max(line[f"{CHOOSE_ON}_image_auroc"] for line in affordable)
    error = auroc_standard_error(best, held, held)
    tied = [line for line in affordable if line[f"{CHOOSE_ON}_image_auroc"] >= best - error]
    chosen = min(tied, key=lambda line: line["work"])
    print(
        f"chosen on {CHOOSE_ON} (best {best:.3f}, standard error {error:.3f}) within {args.max_work:g}x: "
        f"{chosen['size']}, the cheapest within one standard error of the best"
    )


def training_work(config: MeDSConfig, token_dim: int) -> float:
    """Decoder parameters x training image-steps (stages 2 and 3): a size's compute, known
    before it trains and the same on every machine."""
    from raylab.experiment.cost import parameter_count
    from raylab.methods.meds.method import network_kwargs
    from raylab.methods.meds.model import ReconstructionScoreNet

    parameters = parameter_count(lambda: ReconstructionScoreNet(**network_kwargs(config, token_dim)))
    d, s = config.distillation, config.selection
    return float(parameters * (d.iterations * d.batch_size + s.iterations * s.batch_size))


if __name__ == "__main__":
    main()
