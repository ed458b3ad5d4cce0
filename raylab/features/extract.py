"""Batched feature extraction over a corpus as a Ray Data pipeline.

Blocks of the corpus's encoded images -> decode + resize -> a network (one per extractor) ->
gathered on the driver in sample-id order. The network is any :class:`BatchModel` recipe:
:class:`PatchFeatures` (a backbone's patch grids, optionally of augmented views) here, a
classifier's features and logits in the OOD family; every kind of output runs through the one
:func:`model_batches` pipeline. How it runs is chosen per case by :func:`plan_extraction`,
from what ``benchmarks/extraction.py`` measured against a plain single-process loop (at 640
magnetic tiles, EfficientNet-Lite0 at 224 px on 2 cores, the old fixed layout ran at 0.4x
that loop, mostly in start-up, not compute):

* **CPU extractors on a Ray this process started** (a laptop, a single machine): Ray tasks,
  not actors. Ray keeps a task's worker process for the job's later tasks, and each worker
  keeps the last backbone it built (:func:`warm_extractor`, one per process), so only the
  first extraction of a session builds the network, and the runner starts these processes
  right after Ray (:func:`warm_extraction_workers`), so torch and timm are imported while the
  job loads its corpus (4-10 s on 2 busy cores); an actor pays all of it on every call, since
  its process dies with it.
  The extractor decodes its own images (fused): decode tasks would only compete with its
  torch threads for the same cores (OpenMP's threads wait for each other at every operator)
  and send pixels through the object store for nothing.
* **Blocks from memory** on such a Ray, when the images take at most ``IN_MEMORY_SHARE`` of
  the object store: the driver already holds the table, and putting slices of it skips
  Parquet's file listing and read tasks (about 2 s a call, whatever the corpus size).
  Larger corpora, and every cluster, read the content-addressed Parquet shards (written once
  per corpus), re-cut into blocks of a few batches so that every extractor gets work.
* **Joined to a cluster, or with accelerators**: an actor pool, as before; on a cluster the
  workers are shared and nodes come and go, so nothing is kept warm in them. With
  accelerators (``resources.accelerators_per_extraction_actor > 0``), one per actor and
  ``decode="auto"`` decodes in CPU tasks running in parallel on the nodes' CPUs, so the GPU
  never waits for PIL; the actor runs one torch thread.
* **Hand-off**: decode tasks give the extractors resized **uint8** pixels (N, H, W, 3), a
  quarter of the bytes of normalised float32 (and a quarter of the host-to-device copy); the
  extractor normalises them in torch (:func:`~raylab.data.images.normalise_tensor`, on its
  device), which on a CPU equals ``ImageTransform.image`` bit for bit.
* **Threads**: a CPU extractor runs as many torch threads as the CPUs it effectively has
  (:func:`~raylab.resources.extraction_threads`: 2 CPUs, 1 extractor: 2; 16 CPUs, the
  default 8: 2 each), and reserves :func:`~raylab.resources.extraction_actor_cpus` (one
  CPU; none on a one-CPU Ray, where nothing else could then run).
* **Gathering**: each returned block is copied once into a preallocated array at its rows in
  sorted sample-id order (no list + concatenate + reorder: the features are the largest
  array of the job, 0.5 MB per image at 224 px).

With more cores, the default pool is half the CPUs with 2 threads each, and the corpus is
cut into at least two blocks per extractor so that all of them work.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import torch

from raylab.data.images import ImageTransform, normalise_tensor
from raylab.data.rows import SampleRows
from raylab.data.schema import validate_corpus
from raylab.data.store import read_dataset, write_shards
from raylab.features.backbones import FeatureSpec, create_backbone, resolve_weights_path
from raylab.features.patch_embed import PatchEmbedder
from raylab.features.views import ViewSpec
from raylab.metrics import record_feature_batch
from raylab.resources import current as current_resources
from raylab.resources import extraction_actor_cpus, extraction_threads, started_local_ray

DECODE_CHOICES = ("auto", "actor", "tasks")
SOURCE_CHOICES = ("auto", "memory", "shards")


@dataclass
class FeatureSet(SampleRows):
    """Patch features of a corpus: ``patches[i]`` is the (h, w, D) grid of ``sample_ids[i]``."""

    patches: np.ndarray
    holds: ClassVar[str] = "cached features"

    @property
    def grid(self) -> tuple[int, int]:
        return self.patches.shape[1], self.patches.shape[2]

    def lookup_key(self, sample_id: str) -> str:
        """Derived copies (``id#tag``, the noise protocol's) have their original's features."""
        from raylab.data.protocols.noise import base_sample_id

        return base_sample_id(sample_id)

    def take(self, sample_ids) -> np.ndarray:
        return self.patches[self.rows(sample_ids)]


@dataclass(frozen=True)
class ResizeImages:
    """``map_batches`` decode task: encoded images -> resized uint8 pixels (N, H, W, 3)."""

    transform: ImageTransform

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["sample_id"]
        return {"sample_id": np.asarray(ids), "pixels": self.transform.resized_batch(batch["image"], ids)}


def network_input(batch: dict[str, np.ndarray], transform: ImageTransform, device: str) -> torch.Tensor:
    """A batch as a network's normalised float32 (N, 3, H, W) input on ``device``: from encoded
    ``image`` bytes (decoded here), or ``pixels``, uint8 (N, H, W, 3) resized images (normalised
    on the device) or float32 (N, 3, H, W) already normalised."""
    if "pixels" not in batch:
        pixels = transform.resized_batch(batch["image"], batch["sample_id"])
    else:  # read-only when it comes from the object store: torch wants its own (small) copy
        pixels = np.array(batch["pixels"], copy=True, order="C")
    tensor = torch.from_numpy(pixels).to(device)
    if tensor.dtype == torch.uint8:
        return normalise_tensor(tensor, transform.mean, transform.std)
    return tensor


class PatchFeatureExtractor:
    """One frozen backbone and the patch embedder: the actor of the actor-pool path, and what a
    warm CPU task's worker keeps (:func:`warm_extractor`).

    Takes a batch of encoded ``image`` bytes (it decodes them itself), or of ``pixels``:
    uint8 (N, H, W, 3) resized images (it normalises them, on its device), or float32
    (N, 3, H, W) already normalised.
    """

    def __init__(self, spec: FeatureSpec, threads: int = 1, backbone: torch.nn.Module | None = None) -> None:
        torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # ``backbone``: an already built network of ``spec`` (a deployed model carries its own weights).
        self.backbone = (backbone if backbone is not None else create_backbone(spec.backbone)).to(self.device)
        self.embedder = PatchEmbedder(spec.aggregation_kernel, spec.embed_dim)
        self.transform = ImageTransform(size=spec.image_size, mean=spec.backbone.mean, std=spec.backbone.std)
        self.l2_normalize = spec.l2_normalize
        self.backbone_name = spec.backbone.name

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray], views: ViewSpec | None = None) -> dict[str, np.ndarray]:
        """``patches``: (N, h, w, D); with ``views``, (N, V, h, w, D), every image's views made on
        the device and embedded together with the batch's other images' views in one pass."""
        started = time.perf_counter()
        pixels = network_input(batch, self.transform, self.device)
        if views is not None:
            expanded = views.expand(pixels)
            pixels = expanded.flatten(0, 1)
        patches = self.embedder(self.backbone(pixels))
        if self.l2_normalize:
            patches = torch.nn.functional.normalize(patches, dim=-1)
        if views is not None:
            patches = patches.unflatten(0, tuple(expanded.shape[:2]))
        out = {"sample_id": np.asarray(batch["sample_id"]), "patches": patches.float().cpu().numpy()}
        record_feature_batch(len(out["sample_id"]), time.perf_counter() - started, self.backbone_name)
        return out


_WARM: dict[Hashable, Any] = {}
_BACKBONE_STATE: dict[Hashable, dict[str, torch.Tensor]] = {}


def _weights_stamp(spec: FeatureSpec) -> tuple:
    """The weight file's identity on disk (path, size, mtime): a rewritten file is loaded again."""
    path = resolve_weights_path(spec.backbone.weights)
    if path is None:
        return (spec.backbone.weights,)
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _keep_latest(store: dict[Hashable, Any], key: Hashable, build: Callable[[], Any]) -> Any:
    """``store[key]``, built on first use; the store holds one entry, the latest, dropped before
    the next is built (at most one backbone's weights per process)."""
    if key not in store:
        store.clear()
        store[key] = build()
    return store[key]


def warm_model(recipe: BatchModel, threads: int) -> Any:
    """This process's network for ``recipe``, built on first use and kept (one, the latest).

    Ray reuses a task's worker process for later tasks of the same job, so the next
    extraction in this Ray session finds torch and timm imported and the network built.
    """
    return _keep_latest(_WARM, recipe.warm_key(), lambda: recipe.build(threads))


def _import_extraction_stack() -> int:
    """Body of a warm-up task: unpickling it imported this module (torch, raylab.data); timm too."""
    import timm  # noqa: F401  (the backbones' library, imported on first build otherwise)

    return os.getpid()


def warm_extraction_workers() -> list:
    """Start the extraction's worker processes now, importing what they will need.

    Only where extraction runs as warm tasks (a CPU Ray this process started): Ray keeps a
    task's process for the job's later tasks, so the first extraction, coming after the job
    has loaded its corpus, finds a process with torch and timm imported instead of starting
    one and importing them first (about 4 s of one core on 2 busy cores, most of what a first
    extraction paid over a repeated one). The imports run while the driver loads the corpus.
    Returns the tasks' references (a worker's process id each), which nobody needs to wait
    for; ``benchmarks/extraction.py`` waits, to time its first run on warm workers.
    """
    import ray

    plan = plan_extraction()
    if not plan.warm_tasks:
        return []
    task = ray.remote(_import_extraction_stack).options(num_cpus=plan.cpus)
    return [task.remote() for _ in range(plan.workers)]


def warm_extractor(spec: FeatureSpec, threads: int) -> PatchFeatureExtractor:
    """This process's patch extractor for ``spec`` (see :func:`warm_model`)."""
    return warm_model(PatchFeatures(spec), threads)


def warm_backbone_state(spec: FeatureSpec) -> dict[str, torch.Tensor]:
    """The features-only network's weights for ``spec``'s backbone (CPU tensors), kept like
    :func:`warm_extractor`'s network.

    A sweep logs one model per method and class on the same backbone (MeDS up to five per
    class), and building the network from its weight file is most of a model's logging time
    at paper size (6 s for DINOv2 ViT-B/14 at 392 px on 2 CPU cores against 1 s to write it).
    """
    return _keep_latest(
        _BACKBONE_STATE,
        (spec.backbone, _weights_stamp(spec)),
        lambda: {k: v.detach().cpu().contiguous() for k, v in create_backbone(spec.backbone).state_dict().items()},
    )


def backbone_state_bytes(spec: FeatureSpec) -> int:
    """The bytes of :func:`warm_backbone_state` for ``spec``, counted on the meta device: what
    every logged anomaly model stores beside its detector, known before any weights load."""
    from raylab.step_memory import state_bytes

    weightless = dataclasses.replace(spec.backbone, weights=None)
    return state_bytes(lambda: create_backbone(weightless))


class BatchModel(Protocol):
    """A picklable recipe for the network of an extraction: what :func:`model_batches` ships to
    its tasks or actors, which build the network where they run.

    ``transform`` sizes and normalises the images; ``warm_key`` names the built network (a
    worker keeps the latest, see :func:`warm_model`); ``build`` makes it with ``threads`` torch
    threads; ``apply`` runs it on a batch of ``sample_id`` and ``image`` or ``pixels`` into a
    batch of ``sample_id`` and the outputs.
    """

    @property
    def transform(self) -> ImageTransform: ...

    def warm_key(self) -> Hashable: ...

    def build(self, threads: int) -> Any: ...

    def apply(self, model: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class PatchFeatures:
    """:class:`BatchModel` of a backbone's patch grids (``patches``), of the images or, with
    ``views``, of each image's augmented views."""

    spec: FeatureSpec
    views: ViewSpec | None = None

    @property
    def transform(self) -> ImageTransform:
        return ImageTransform(size=self.spec.image_size, mean=self.spec.backbone.mean, std=self.spec.backbone.std)

    def warm_key(self) -> Hashable:
        return ("patches", self.spec, _weights_stamp(self.spec))  # views are applied per call

    def build(self, threads: int) -> PatchFeatureExtractor:
        return PatchFeatureExtractor(self.spec, threads)

    def apply(self, model: PatchFeatureExtractor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return model(batch, self.views)


@dataclass(frozen=True)
class ModelTask:
    """``map_batches`` task: the recipe's network, warm in this worker (:func:`warm_model`)."""

    recipe: BatchModel
    threads: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        previous = torch.get_num_threads()
        model = warm_model(self.recipe, self.threads)
        torch.set_num_threads(self.threads)
        try:
            return self.recipe.apply(model, batch)
        finally:
            torch.set_num_threads(previous)  # the worker runs other tasks afterwards


class ModelActor:
    """``map_batches`` actor of the actor-pool path: the recipe's network, built once per actor."""

    def __init__(self, recipe: BatchModel, threads: int) -> None:
        self.recipe = recipe
        self.model = recipe.build(threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.recipe.apply(self.model, batch)


@dataclass(frozen=True)
class ExtractionPlan:
    """How one extraction runs (see the module docstring)."""

    workers: int  # concurrent extractors: tasks or actors
    warm_tasks: bool  # CPU tasks on reused worker processes, else an actor pool
    decode_in_tasks: bool  # separate decode tasks hand uint8 pixels over, else the extractor decodes
    in_memory: bool  # blocks put from the driver's table, else read from Parquet shards
    threads: int  # torch threads per extractor
    cpus: float  # CPUs each extractor reserves


# In-memory blocks while the images take at most this share of the object store; larger
# corpora are streamed from Parquet shards (an object-store copy of the whole corpus would spill).
IN_MEMORY_SHARE = 0.1


def plan_extraction(
    actors: int | None = None, decode: str = "auto", source: str = "auto", corpus_bytes: int = 0
) -> ExtractionPlan:
    """The plan under the current :class:`~raylab.resources.Resources` (see the module docstring)."""
    if decode not in DECODE_CHOICES:
        raise ValueError(f"decode must be one of {DECODE_CHOICES}, got {decode!r}")
    if source not in SOURCE_CHOICES:
        raise ValueError(f"source must be one of {SOURCE_CHOICES}, got {source!r}")
    resources = current_resources()
    workers = actors or resources.extraction_pool()
    local = started_local_ray()
    if source == "auto":
        in_memory = local and corpus_bytes <= IN_MEMORY_SHARE * _object_store_bytes()
    else:
        in_memory = source == "memory"
    if resources.accelerators_per_extraction_actor > 0:
        return ExtractionPlan(
            workers,
            warm_tasks=False,
            decode_in_tasks=decode != "actor",
            in_memory=in_memory,
            threads=1,
            cpus=extraction_actor_cpus(),
        )
    return ExtractionPlan(
        workers,
        warm_tasks=local,
        decode_in_tasks=decode == "tasks",
        in_memory=in_memory,
        threads=extraction_threads(workers),
        cpus=extraction_actor_cpus(),
    )


def _object_store_bytes() -> float:
    import ray

    return float(ray.cluster_resources().get("object_store_memory", 0.0)) if ray.is_initialized() else 0.0


EXTRACTION_BATCH = 32  # images per forward pass (extract_patch_features' default)


def weightless_extractor(spec: FeatureSpec) -> torch.nn.Module:
    """Pixels -> patch features under ``spec``, untrained: for sizing on the meta device."""
    weightless = dataclasses.replace(spec.backbone, weights=None)
    return torch.nn.Sequential(create_backbone(weightless), PatchEmbedder(spec.aggregation_kernel, spec.embed_dim))


def feature_shape(spec: FeatureSpec) -> tuple[int, int, int]:
    """(grid height, grid width, dimension) of one image's patch features under ``spec``.

    Traced on PyTorch's meta device: no weights are read and nothing is computed, so a dry
    run can size caches and memories of a paper-size backbone in seconds on any machine.
    """
    with torch.device("meta"):
        patches = weightless_extractor(spec)(torch.zeros(1, 3, spec.image_size, spec.image_size))
    _, height, width, dim = patches.shape
    return int(height), int(width), int(dim)


def extraction_peak_bytes(spec: FeatureSpec, batch: int = EXTRACTION_BATCH) -> int:
    """Accelerator bytes of one extraction batch (weights and live activations, no gradients)."""
    from raylab.step_memory import step_peak_bytes

    def forward(network: torch.nn.Module) -> torch.Tensor:
        return network(torch.empty(batch, 3, spec.image_size, spec.image_size))

    return step_peak_bytes(lambda: weightless_extractor(spec), forward, train=False)


def extract_patch_features(
    table: pa.Table,
    spec: FeatureSpec,
    *,
    batch_size: int = EXTRACTION_BATCH,
    actors: int | None = None,
    decode: str = "auto",
    source: str = "auto",
) -> FeatureSet:
    """Extract patch features for every row of ``table`` with Ray Data (see :func:`feature_batches`)."""
    dataset = feature_batches(table, spec, batch_size=batch_size, actors=actors, decode=decode, source=source)
    return gather_sorted(dataset, table.column("sample_id").to_pylist())


def feature_batches(
    table: pa.Table,
    spec: FeatureSpec,
    *,
    batch_size: int = EXTRACTION_BATCH,
    actors: int | None = None,
    decode: str = "auto",
    source: str = "auto",
    views: ViewSpec | None = None,
):
    """The Ray Data dataset of ``{"sample_id", "patches"}`` batches of every row of ``table``.

    ``views``: each row's augmented views instead of the image itself (``patches`` (N, V, h,
    w, D), ``batch_size`` images, so ``batch_size x V`` views, per forward pass); its blocks
    are one batch each, since a batch's views are V times the features of its images. The
    other options are :func:`model_batches`'.
    """
    return model_batches(
        table,
        PatchFeatures(spec, views),
        batch_size=batch_size,
        actors=actors,
        decode=decode,
        source=source,
        block_rows=batch_size if views is not None else None,
    )


def model_batches(
    table: pa.Table,
    recipe: BatchModel,
    *,
    batch_size: int = EXTRACTION_BATCH,
    actors: int | None = None,
    decode: str = "auto",
    source: str = "auto",
    block_rows: int | None = None,
):
    """The Ray Data dataset of the recipe's output batches for every row of ``table``.

    ``actors``: concurrent extractors (default: the resources' extraction pool). ``decode``:
    where images are decoded and resized, ``"actor"`` (by the extractor, fused),
    ``"tasks"`` (separate Ray tasks handing uint8 pixels over) or ``"auto"`` (fused on
    CPUs, tasks with accelerators). ``source``: ``"memory"`` (blocks of ``table`` put
    from this process), ``"shards"`` (Parquet shards, written once per corpus content) or
    ``"auto"`` (memory on a Ray this process started, for corpora that fit the object store
    comfortably). ``block_rows``: rows per block (default: a few batches, at least two blocks
    per extractor). See the module docstring for why.
    """
    import ray

    validate_corpus(table)
    if table.num_rows == 0:
        raise ValueError("cannot extract features of an empty corpus")
    columns = table.select(["sample_id", "image"])
    plan = plan_extraction(actors, decode, source, corpus_bytes=columns.nbytes)
    resources = current_resources()
    block_rows = block_rows or rows_per_block(table.num_rows, batch_size, plan.workers)
    if plan.in_memory:
        dataset = ray.data.from_arrow(
            [columns.slice(start, block_rows) for start in range(0, table.num_rows, block_rows)]
        )
    else:
        # Small shards are read as one block, which one extractor would take alone: blocks of
        # a few batches keep every extractor busy.
        dataset = read_dataset(write_shards(table), columns=["sample_id", "image"])
        dataset = dataset.repartition(target_num_rows_per_block=block_rows)
    if plan.decode_in_tasks:
        # max_calls=0 is Ray's default for CPU tasks (no limit); naming it keeps Ray Data from
        # fusing these tasks into a CPU extractor that asks for the same CPUs (its fusion rule).
        dataset = dataset.map_batches(
            ResizeImages(recipe.transform), batch_size=batch_size, batch_format="numpy", num_cpus=1, max_calls=0
        )
    options = resources.ray_options(resources.accelerators_per_extraction_actor, cpus=plan.cpus)
    if plan.warm_tasks:
        return dataset.map_batches(
            ModelTask(recipe, plan.threads),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=plan.workers),
            **options,
        )
    return dataset.map_batches(
        ModelActor,
        fn_constructor_kwargs={"recipe": recipe, "threads": plan.threads},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.workers),
        **options,
    )


def rows_per_block(rows: int, batch_size: int, workers: int) -> int:
    """Whole batches per block, at least two blocks per extractor, at most 8 batches a block."""
    batches = -(-rows // batch_size)
    return batch_size * max(1, min(8, batches // (2 * workers)))


def gather_sorted(dataset, sample_ids: list[str]) -> FeatureSet:
    """The dataset's ``patches`` in sorted sample-id order, each batch copied once into place."""
    order = np.sort(np.asarray(sample_ids, dtype=str))
    row_of = {sid: row for row, sid in enumerate(order.tolist())}
    patches: np.ndarray | None = None
    filled = np.zeros(len(order), dtype=bool)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        rows = np.fromiter((row_of[str(s)] for s in batch["sample_id"]), dtype=np.int64, count=len(batch["sample_id"]))
        values = batch["patches"]
        if patches is None:
            patches = np.empty((len(order), *values.shape[1:]), dtype=values.dtype)
        patches[rows] = values
        filled[rows] = True
    if patches is None or not filled.all():
        missing = order[~filled][:3].tolist()
        raise RuntimeError(
            f"feature extraction returned no features for {int((~filled).sum())} images (first: {missing})"
        )
    return FeatureSet(sample_ids=order, patches=patches)
