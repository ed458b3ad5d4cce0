"""Batch scoring: ``raylab predict`` (Ray Data actor pool) against a plain single-process loop.

In one process, on the same images (``--images`` magnetic tiles written to a temporary
folder as PNG files) and the same logged model (a PatchCore detector fitted here on the
corpus's good training images, 1% coreset, EfficientNet-Lite0 at ``--image-size`` px,
logged to a temporary SQLite MLflow store):

(a) plain: this process loads the model once with ``mlflow.pyfunc.load_model`` and scores
    the files in batches of ``--chunk-size``, reading each file itself; loading counts;
(b) ray: ``raylab.deploy.batch.predict`` with ``--actors`` actors of ``--cpus-per-actor``
    CPUs each, writing one Parquet file per chunk (overlays off, as (a) writes none), into a
    fresh output folder each round, so nothing is skipped; each actor's model load counts.

Ray starts once, before the first (b), and its start counts in no images/s. Every round's
Ray scores are checked against the plain loop's (rtol 1e-5, the largest difference is
printed). Rounds alternate (a) then (b) ``--rounds`` times; the ratio compares medians.
Each row shows the 1-minute load average before it: report it with the numbers.

Run: ``python benchmarks/batch_predict.py [--images 320] [--actors 2] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def fit_and_log(data_root: Path, images: int, image_size: int, scratch: Path) -> tuple[str, list[Path]]:
    """Fit PatchCore on good training tiles, log it, and write ``images`` test tiles as files."""
    import pyarrow.compute as pc

    from raylab.data import load_corpus
    from raylab.features import FeatureSpec
    from raylab.features.extract import PatchFeatureExtractor
    from raylab.tasks.anomaly.benchmark import ClassEvaluation
    from raylab.tasks.anomaly.maps import AnomalyPrediction
    from raylab.tasks.anomaly.patchcore import PatchCoreConfig
    from raylab.tasks.anomaly.patchcore.model import PatchCore
    from raylab.tasks.anomaly.scorer import log_anomaly_model
    from raylab.tracking import tracked_run

    spec = FeatureSpec(image_size=image_size)
    corpus = load_corpus("magnetic_tile", data_root)
    train = corpus.filter(pc.and_(pc.equal(corpus["split"], "train"), pc.equal(corpus["label"], 0))).slice(0, 64)
    extractor = PatchFeatureExtractor(spec, threads=2)
    patches = extractor(
        {
            "image": np.asarray(train.column("image").to_pylist(), dtype=object),
            "sample_id": np.asarray(train.column("sample_id").to_pylist()),
        }
    )["patches"]
    detector = PatchCore(PatchCoreConfig(features=spec, coreset_ratio=0.01), seed=0).fit(patches)
    test = corpus.filter(pc.equal(corpus["split"], "test")).slice(0, images)
    folder = scratch / "images"
    folder.mkdir()
    files = []
    for _sample_id, image in zip(test.column("sample_id").to_pylist(), test.column("image").to_pylist(), strict=True):
        files.append(folder / f"{len(files):05d}.png")
        files[-1].write_bytes(image)
    labels = np.asarray(test.column("label").to_pylist())
    # The threshold only sets ``is_anomalous``; any finite one serves the timing.
    evaluation = ClassEvaluation(
        "magnetic_tile", {}, [], labels, AnomalyPrediction(np.linspace(0, 1, len(labels)), np.zeros(1)), None, detector
    )
    with tracked_run("batch_predict_benchmark", "patchcore") as run:
        uri = log_anomaly_model(run, evaluation, spec, files[0].read_bytes(), scratch)
    return uri, files


def plain_loop(uri: str, files: list[Path], chunk_size: int) -> np.ndarray:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(uri)
    scores = []
    for start in range(0, len(files), chunk_size):
        images = [f.read_bytes() for f in files[start : start + chunk_size]]
        scores.append(model.predict(pd.DataFrame({"image": images}))["image_score"].to_numpy())
    return np.concatenate(scores)


def ray_predict(uri: str, folder: Path, output: Path, args) -> np.ndarray:
    import pandas as pd

    from raylab.deploy.batch import PredictOptions, predict

    predict(uri, folder, output, PredictOptions(args.actors, args.cpus_per_actor, 0.0, args.chunk_size, "none"))
    table = pd.concat([pd.read_parquet(p) for p in output.glob("part-*.parquet")]).sort_values("sample_id")
    return table["image_score"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the plain loop")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
        uri, files = fit_and_log(Path(args.data_root), args.images, args.image_size, scratch)
        rows, plain_times, ray_times = [], [], []
        from raylab.experiment.session import init_ray

        started = time.perf_counter()
        init_ray()
        print(f"Ray started in {time.perf_counter() - started:.1f} s (load {load_average()})")
        for round_index in range(args.rounds):
            load = load_average()
            started = time.perf_counter()
            reference = plain_loop(uri, files, args.chunk_size)
            plain_times.append(time.perf_counter() - started)
            rows.append(
                ("plain loop", round_index, f"{plain_times[-1]:.1f}", f"{len(files) / plain_times[-1]:.1f}", load, "")
            )
            load = load_average()
            started = time.perf_counter()
            scored = ray_predict(uri, files[0].parent, scratch / f"out-{round_index}", args)
            ray_times.append(time.perf_counter() - started)
            difference = float(np.max(np.abs(scored - reference) / np.maximum(np.abs(reference), 1e-12)))
            if difference > 1e-5:
                raise SystemExit(f"Ray scores differ from the plain loop's by {difference:.2e} (relative)")
            rows.append(
                (
                    "raylab predict",
                    round_index,
                    f"{ray_times[-1]:.1f}",
                    f"{len(files) / ray_times[-1]:.1f}",
                    load,
                    f"{difference:.1e}",
                )
            )
        header = ("path", "round", "seconds", "images/s", "load before", "max rel. diff")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        plain, ray = statistics.median(plain_times), statistics.median(ray_times)
        print(
            f"\n{len(files)} images, {args.actors} actors x {args.cpus_per_actor} CPU: "
            f"plain {len(files) / plain:.1f} images/s, raylab predict {len(files) / ray:.1f} images/s, "
            f"ratio {plain / ray:.2f}x"
        )


if __name__ == "__main__":
    main()
