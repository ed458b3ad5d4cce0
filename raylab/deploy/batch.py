"""``raylab predict``: score a folder or Parquet file of images with a logged model, on Ray Data.

The inputs are cut, in sorted order, into chunks of ``chunk_size`` images; each chunk is one
Ray Data block and becomes one Parquet file of results, written atomically by the actor that
scored it. A chunk's file is named by its identity (the model, the chunk's sources and the
scoring options), so a re-run skips exactly the chunks already scored with the same model and
redoes everything else: an interrupted night's run resumes, a new model never reuses old
scores. Each actor loads the model once and keeps it for every chunk it scores; the pool's
size and each actor's CPUs and GPUs are asked for explicitly, so an autoscaler adds what the
run needs instead of the run taking whatever the cluster happens to hold.

On a cluster the output folder must be storage every node writes to (NFS, a mounted bucket).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_CHOICES = ("anomalous", "all", "none")
RESULT_COLUMNS = ("sample_id", "source", "image_score", "is_anomalous")


@dataclass(frozen=True)
class PredictOptions:
    """How a batch scoring run is laid out; every field that changes a result names its files."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    chunk_size: int = 64
    overlays: str = "anomalous"

    def __post_init__(self) -> None:
        if self.actors < 1 or self.chunk_size < 1:
            raise ValueError(f"--actors and --chunk-size must be >= 1, got {self.actors} and {self.chunk_size}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError(
                "--cpus-per-actor and --gpus-per-actor must be >= 0, "
                f"got {self.cpus_per_actor} and {self.gpus_per_actor}"
            )
        if self.overlays not in OVERLAY_CHOICES:
            raise ValueError(f"--overlays must be one of {', '.join(OVERLAY_CHOICES)}, got {self.overlays!r}")


@dataclass(frozen=True)
class Source:
    """One image to score: its id in the results and where it came from."""

    sample_id: str
    source: str
    parquet_row: int | None = None  # row of the input Parquet file, when that is the source


def list_sources(input_path: str | Path) -> list[Source]:
    """The images of a folder (recursively, by suffix) or the rows of a Parquet file, in a
    stable order; fails naming the path when there is nothing to score."""
    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below it")
        return [Source(str(p.relative_to(path)), str(p.resolve())) for p in files]
    if path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        if "image" not in schema.names:
            raise ValueError(
                f"{path}: no 'image' column (found {', '.join(schema.names)}); "
                "raylab predict reads encoded images from it"
            )
        ids = (
            pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
            if "sample_id" in schema.names
            else None
        )
        count = pq.ParquetFile(path).metadata.num_rows
        if count == 0:
            raise ValueError(f"{path}: no rows to score")
        return [Source(str(ids[i]) if ids else f"row-{i}", f"{path.resolve()}#{i}", i) for i in range(count)]
    raise ValueError(f"{path}: not a folder of images or a .parquet file")


def chunk_name(model_uri: str, sources: list[Source], options: PredictOptions) -> str:
    """The file name of one chunk's results: a digest of everything its contents depend on."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": model_uri, "overlays": options.overlays}).encode())
    for source in sources:
        digest.update(f"\0{source.sample_id}\0{source.source}".encode())
    return f"part-{digest.hexdigest()[:20]}.parquet"


def chunks(sources: list[Source], size: int) -> Iterator[list[Source]]:
    for start in range(0, len(sources), size):
        yield sources[start : start + size]


class ChunkScorer:
    """The actor of the pool: loads the model once, then scores and writes one chunk per call."""

    def __init__(self, model_uri: str, tracking_uri: str | None, output: str, overlays: str, threads: int) -> None:
        import mlflow
        import torch

        torch.set_num_threads(max(1, threads))
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.model = mlflow.pyfunc.load_model(model_uri)
        self.scorer = self.model.unwrap_python_model().scorer
        self.output = Path(output)
        self.overlays = overlays

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        (name,), (encoded,) = batch["chunk"], batch["sources"]  # one row = one chunk
        sources = [Source(**s) for s in json.loads(encoded)]
        images = [_read_image(source) for source in sources]
        with_maps = self.overlays != "none"
        scored = self.model.predict(pd.DataFrame({"image": images}), params={"with_maps": with_maps})
        table = pd.DataFrame(
            {
                "sample_id": [s.sample_id for s in sources],
                "source": [s.source for s in sources],
                "image_score": scored["image_score"].to_numpy(),
                "is_anomalous": scored["is_anomalous"].to_numpy(),
            }
        )
        if with_maps:
            self._write_overlays(sources, images, scored)
        staging = self.output / f".{name}.{os.getpid()}.tmp"
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), staging)
        os.replace(staging, self.output / name)  # a chunk's file exists only once it is whole
        return {"chunk": np.array([name]), "images": np.array([len(sources)])}

    def _write_overlays(self, sources: list[Source], images: list[bytes], scored) -> None:
        from raylab.deploy.overlay import heatmap_overlay_png

        folder = self.output / "overlays"
        folder.mkdir(exist_ok=True)
        for source, image, (_, row) in zip(sources, images, scored.iterrows(), strict=True):
            if self.overlays == "all" or bool(row["is_anomalous"]):
                target = folder / (source.sample_id.replace(os.sep, "__") + ".png")
                amap = np.asarray(row["anomaly_map"], dtype=np.float32)
                target.write_bytes(heatmap_overlay_png(image, amap, self.scorer.threshold, sample=source.sample_id))


def _read_image(source: Source) -> bytes:
    if source.parquet_row is None:
        return Path(source.source).read_bytes()
    path = source.source.rsplit("#", 1)[0]
    return _parquet_images(path)[source.parquet_row]


_PARQUET_CACHE: dict[str, list[bytes]] = {}


def _parquet_images(path: str) -> list[bytes]:
    """The input Parquet file's image column, read once per actor process."""
    if path not in _PARQUET_CACHE:
        import pyarrow.parquet as pq

        _PARQUET_CACHE.clear()
        _PARQUET_CACHE[path] = pq.read_table(path, columns=["image"]).column("image").to_pylist()
    return _PARQUET_CACHE[path]


def predict(model_uri: str, input_path: str | Path, output: str | Path, options: PredictOptions) -> dict[str, Any]:
    """Score every image not yet scored with this model; returns counts and the output folder."""
    import mlflow
    import ray

    from raylab.experiment.session import init_ray
    from raylab.tracking.mlflow_conventions import tracking_uri

    sources = list_sources(input_path)
    try:  # a wrong URI fails here, in seconds, before Ray starts
        mlflow.models.get_model_info(model_uri)
    except Exception as error:
        raise ValueError(f"{model_uri}: no MLflow model there ({type(error).__name__}: {error})") from None
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    todo, done = [], 0
    for chunk in chunks(sources, options.chunk_size):
        name = chunk_name(model_uri, chunk, options)
        if (output / name).is_file():
            done += len(chunk)
        else:
            todo.append((name, chunk))
    (output / "predict.json").write_text(
        json.dumps({"model_uri": model_uri, "input": str(input_path), "options": asdict(options)}, indent=2)
    )
    if todo:
        init_ray()
        items = [{"chunk": name, "sources": json.dumps([asdict(s) for s in chunk])} for name, chunk in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(todo))
        results = dataset.map_batches(
            ChunkScorer,
            fn_constructor_args=(
                model_uri,
                tracking_uri(),
                str(output.resolve()),
                options.overlays,
                max(1, int(options.cpus_per_actor)),
            ),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
        ).take_all()
        scored = int(sum(int(r["images"]) for r in results))
    else:
        scored = 0
    return {"images": len(sources), "scored": scored, "skipped": done, "output": str(output)}
