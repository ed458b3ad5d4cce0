"""MeDS stage 1: memory scores from bootstrapped partial memories.

MeDS (Memory-Distilled Selection) starts from a training set that may contain anomalous
images. Its first stage (``step_1_memory_score_generation.py`` of the authors' code,
SirojbekSafarov/MeDS) scores every training patch against many *sparse* memories:

1. ``F``: the L2-normalised patch features of all ``N`` training images of a class.
2. For ``b = 1..B`` draw ``ceil(rho * N)`` images **with replacement**; the partial memory
   ``M_b`` holds all patches of the drawn images.
3. For every patch ``f`` of every training image, ``s_b(f) = min_{m in M_b} 1 - cos(f, m)``.
4. The memory score map is ``S_M = mean_b s_b``, one value per patch.

The premise: defects are rare, so a small memory rarely contains a patch resembling a given
defect, and defect patches get a high mean distance, whereas normal patches find a close
neighbour in almost every memory. Stages 2 and 3 of MeDS use these maps to filter the
training set.

Self-matches are kept, as in the official code: a patch of an image that was itself drawn
into ``M_b`` has distance 0 to itself in that bootstrap. This pulls every image's score down
by about the fraction of bootstraps that contain it (the same for normal and defective
images in expectation), and it is part of the numbers being reproduced.

Execution. The bootstraps are independent, so they are split into contiguous chunks that
run as Ray tasks (one GPU each where the cluster has GPUs, else one CPU and one faiss thread
each); the features travel once through the object store (``ray.put``). Bootstrap ``b``
draws its images from ``np.random.default_rng([seed, b])``, so the draws do not depend on
how the bootstraps are chunked, and each ``s_b`` is quantised to a multiple of ``2**-40``
before it is summed in float64 (see :func:`_quantise`), which makes every partial sum exact:
the maps are bit-identical for any number of tasks or nodes.

Cost: about ``2 * B * rho * (N * P)**2 * D`` flops, e.g. 8e14 for ``N=666`` images of
``P=784`` patches with ``D=152`` and ``B=100`` -- hours on two CPU cores, minutes on a GPU.
The reduced size for CPU-only machines is :func:`raylab.methods.meds.config.cpu_config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from raylab.memory.bank import MemoryBank
from raylab.methods.meds.config import PartialMemoryConfig  # defined there: typed configs import it without torch
from raylab.progress import bar, heartbeat
from raylab.resources import Resources
from raylab.resources import current as current_resources
from raylab.tasks.anomaly.detectors import register_detector
from raylab.tasks.anomaly.maps import AnomalyPrediction, patch_scores_to_maps, reduce_to_image_scores

Device = Literal["auto", "cpu", "gpu"]

# s_b values lie in [0, 2]; on a grid of 2**-40 a sum of up to 4095 of them stays below
# 2**13 and so needs at most 53 significant bits: float64 adds such values exactly.
_QUANTUM_EXPONENT = 40
_EXACT_SUM_MAX_BOOTSTRAPS = 4095
_NORM_EPS = 1e-12


# --------------------------------------------------------------------------- bootstrap draws


def memory_size(n_images: int, rho: float) -> int:
    """Images per partial memory, ``ceil(rho * N)`` as in the official code (at least 1)."""
    return max(1, math.ceil(rho * n_images))


def bootstrap_draw(n_images: int, b: int, rho: float, seed: int) -> np.ndarray:
    """Image indices of bootstrap ``b``, drawn with replacement from its own generator.

    Seeding from ``(seed, b)`` rather than from one stream makes bootstrap ``b`` the same
    whatever ``B`` is and whichever task computes it.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be positive, got {n_images}")
    rng = np.random.default_rng([seed, b])
    return rng.integers(0, n_images, size=memory_size(n_images, rho), dtype=np.int64)


def bootstrap_draws(n_images: int, bootstraps: int, rho: float, seed: int) -> list[np.ndarray]:
    """The image indices of bootstraps ``0 .. bootstraps-1`` (paper step 2)."""
    return [bootstrap_draw(n_images, b, rho, seed) for b in range(bootstraps)]


# --------------------------------------------------------------------------- one chunk


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis (float32), so that ``1 - <f, m>`` is the cosine distance."""
    array = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, _NORM_EPS), dtype=np.float32)


def _quantise(distances: np.ndarray) -> np.ndarray:
    """Round to a multiple of ``2**-40`` (an error of at most 4.6e-13, far below float32's
    resolution of the cosine) so that float64 sums over bootstraps are exact and hence
    independent of how the bootstraps are grouped into tasks."""
    return np.round(np.ldexp(distances, _QUANTUM_EXPONENT)) * 2.0**-_QUANTUM_EXPONENT


def _bootstrap_distance(memory: np.ndarray, queries: np.ndarray, draw: np.ndarray, device: Device) -> np.ndarray:
    """``s_b`` of every query patch: min cosine distance to the patches of the drawn images.

    Only the distinct drawn images enter the bank: a duplicate image adds identical vectors,
    which cannot change a minimum. Self-matches are not excluded (see the module docstring).
    """
    images = np.unique(draw)
    bank = MemoryBank(memory.shape[-1], metric="ip", device=device)
    bank.add(memory[images].reshape(-1, memory.shape[-1]))
    similarities, _ = bank.search(queries, k=1)
    distances = 1.0 - similarities[:, 0].astype(np.float64)
    return _quantise(np.clip(distances, 0.0, None))


def partial_memory_scores_chunk(
    features: np.ndarray,
    draws_chunk: Sequence[np.ndarray],
    device: Device = "auto",
    queries: np.ndarray | None = None,
) -> np.ndarray:
    """Sum over the chunk's bootstraps of ``s_b`` (paper step 3), float64.

    ``features``: (N, P, D) L2-normalised patches of the training images, from which the
    partial memories are built. ``queries``: the (..., D) normalised patches to score;
    ``None`` scores the training patches themselves (stage-1 maps), a test set gives the
    stage-1 detector's scores. Returns an array of the queries' leading shape, ``(N, P)``
    by default.
    """
    memory = np.asarray(features)
    if memory.ndim != 3:
        raise ValueError(f"features must have shape (N, P, D), got {memory.shape}")
    query_set = memory if queries is None else np.asarray(queries)
    if query_set.shape[-1] != memory.shape[-1]:
        raise ValueError(f"queries have dimension {query_set.shape[-1]}, features {memory.shape[-1]}")
    flat = query_set.reshape(-1, memory.shape[-1])
    total = np.zeros(flat.shape[0], dtype=np.float64)
    for draw in draws_chunk:
        total += _bootstrap_distance(memory, flat, np.asarray(draw, dtype=np.int64), device)
    return total.reshape(query_set.shape[:-1])


# --------------------------------------------------------------------------- Ray execution


def _chunk_task(
    features: np.ndarray, queries: np.ndarray | None, draws_chunk: list[np.ndarray], device: Device, threads: int
) -> np.ndarray:
    """Body of one Ray task: a chunk of bootstraps with ``threads`` faiss threads.

    A CPU task holds one Ray CPU, so faiss is limited to one OpenMP thread: with its
    default (all cores) two tasks on two cores would oversubscribe them and lose most of
    the parallel speed-up. The previous setting is restored for the next user of the worker.
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return partial_memory_scores_chunk(features, draws_chunk, device=device, queries=queries)
    finally:
        faiss.omp_set_num_threads(previous)


_REMOTE_CHUNK: Any = None


def _remote_chunk() -> Any:
    global _REMOTE_CHUNK
    if _REMOTE_CHUNK is None:
        import ray

        _REMOTE_CHUNK = ray.remote(_chunk_task)
    return _REMOTE_CHUNK


def _task_slots() -> int:
    """Parallel chunk tasks: the job's resource policy (auto: the local CPUs)."""
    from raylab.experiment.session import init_ray
    from raylab.resources import current

    init_ray()
    return current().parallel_tasks()


def split_chunks(items: Sequence[Any], num_chunks: int) -> list[list[Any]]:
    """Contiguous, near-equal chunks in order (empty chunks dropped)."""
    bounds = np.linspace(0, len(items), num_chunks + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _run_chunks_with_ray(
    features: np.ndarray,
    queries: np.ndarray | None,
    chunks: list[list[np.ndarray]],
    device: Device,
    resources: Resources,
) -> list[np.ndarray]:
    import ray

    features_ref = ray.put(features)
    queries_ref = None if queries is None else ray.put(queries)
    # "DEFAULT" scheduling: inside a Tune trial, tasks would otherwise be captured by the
    # trial's tiny placement group and could never be scheduled.
    task = _remote_chunk().options(
        **resources.ray_options(resources.accelerators_per_task, cpus=1), scheduling_strategy="DEFAULT"
    )
    refs = [task.remote(features_ref, queries_ref, chunk, device, 1) for chunk in chunks]
    # The bar moves only when a chunk finishes; the heartbeat shows a wait on a slow or stuck one.
    with (
        bar(sum(len(chunk) for chunk in chunks), "partial memories", "bootstraps") as progress,
        heartbeat("partial-memory tasks"),
    ):
        pending, sizes = list(refs), {ref: len(chunk) for ref, chunk in zip(refs, chunks, strict=True)}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            progress.update(sum(sizes[ref] for ref in done))
    return ray.get(refs)  # in chunk order: the sums stay exact and layout-independent


def bootstrap_memory_scores(
    features: np.ndarray,
    bootstraps: int = 100,
    rho: float = 0.1,
    seed: int = 0,
    num_tasks: int | None = None,
    use_ray: bool = True,
    queries: np.ndarray | None = None,
    device: Device = "auto",
    local_threads: int = 1,
) -> np.ndarray:
    """Mean over ``bootstraps`` partial memories of the min cosine distance (paper step 4).

    ``features``: (N, P, D) L2-normalised training patches (the memories are drawn from
    them). ``queries``: patches to score, default the training patches themselves (the
    stage-1 memory score maps, ``(N, P)``); any ``(..., D)`` array gives scores of its
    leading shape. With ``use_ray`` the bootstraps are split into ``num_tasks`` chunks
    (default: the job's ``resources.task_slots``, auto = the local CPUs) computed by Ray tasks,
    each asking for ``resources.accelerators_per_task`` accelerators;
    chunk sums are added in chunk order and are exact (see :func:`_quantise`), so the
    result does not depend on ``num_tasks`` (for ``bootstraps <= 4095``). ``use_ray=False``
    computes all chunks in this process with ``local_threads`` faiss threads; the default 1 is
    what every Ray task uses, and faiss's BLAS blocking depends on its thread count (it moves
    the last bit of some distances), so that a served detector (in-process) scores exactly as
    the fitted one did. Without a running
    Ray, ``use_ray`` starts one through :func:`raylab.experiment.session.init_ray` (``$RAY_ADDRESS`` or local).
    """
    memory = np.ascontiguousarray(features, dtype=np.float32)
    if memory.ndim != 3:
        raise ValueError(f"features must have shape (N, P, D), got {memory.shape}")
    query_set = None if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    draws = bootstrap_draws(memory.shape[0], bootstraps, rho, seed)
    if not use_ray:
        chunk_sums = [_chunk_task(memory, query_set, draws, device, local_threads)]
    else:
        slots = _task_slots()
        tasks = slots if num_tasks is None else int(num_tasks)
        if tasks < 1:
            raise ValueError(f"num_tasks must be positive, got {num_tasks}")
        chunks = split_chunks(draws, min(tasks, bootstraps))
        chunk_sums = _run_chunks_with_ray(memory, query_set, chunks, device, current_resources())
    total = np.zeros_like(chunk_sums[0])
    for chunk_sum in chunk_sums:
        total += chunk_sum
    return total / bootstraps


# --------------------------------------------------------------------------- patch grids


def pool_patch_grid(patches: np.ndarray, grid: int, batch_size: int = 256) -> np.ndarray:
    """Average-pool (N, h, w, D) patch grids to (N, grid, grid, D) and re-normalise.

    Averaging unit vectors shortens them, so the pooled patches are normalised again for
    the cosine distance. Grids already at most ``grid`` on both sides are returned as is.
    """
    n, h, w, d = patches.shape
    if h <= grid and w <= grid:
        return l2_normalise(patches)
    pooled = np.empty((n, grid, grid, d), dtype=np.float32)
    for start in range(0, n, batch_size):
        block = torch.from_numpy(np.ascontiguousarray(patches[start : start + batch_size], dtype=np.float32))
        block = F.adaptive_avg_pool2d(block.permute(0, 3, 1, 2), (grid, grid)).permute(0, 2, 3, 1)
        pooled[start : start + len(block)] = block.numpy()
    return l2_normalise(pooled)


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of (N, g, g) score maps back to the (N, h, w) patch grid."""
    if maps.shape[1:] == tuple(size):
        return maps
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float64))[:, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _prepare_grid(patches: np.ndarray, config: PartialMemoryConfig) -> np.ndarray:
    """Normalise, then pool (and re-normalise) when the config asks for a coarser grid."""
    array = np.asarray(patches)
    if array.ndim != 4:
        raise ValueError(f"patches must have shape (N, h, w, D), got {array.shape}")
    normalised = l2_normalise(array)
    return normalised if config.pool_grid is None else pool_patch_grid(normalised, config.pool_grid)


def memory_score_maps(
    patches: np.ndarray,
    config: PartialMemoryConfig | None = None,
    num_tasks: int | None = None,
    use_ray: bool = True,
) -> np.ndarray:
    """Stage-1 memory score maps ``S_M``: (N, h, w, D) patches -> (N, h, w) float64 maps."""
    config = config or PartialMemoryConfig()
    n, h, w, _ = np.shape(patches)
    grid = _prepare_grid(patches, config)
    scores = bootstrap_memory_scores(
        grid.reshape(n, -1, grid.shape[-1]), config.bootstraps, config.rho, config.seed, num_tasks, use_ray
    )
    return upsample_maps(scores.reshape(grid.shape[:3]), (h, w))


# --------------------------------------------------------------------------- detector


@register_detector(
    "partial_memory",
    build=lambda seed, image_size: PartialMemoryDetector(PartialMemoryConfig(seed=seed), image_size=image_size),
    # A served scorer scores in-process: it must not start (or need) a Ray cluster per request.
    load_options={"use_ray": False},
)
class PartialMemoryDetector:
    """Stage 1 alone as an anomaly detector (the sweep's ``partial_memory`` baseline).

    A test patch's score is its mean over the same B bootstrap memories (drawn from the
    training set) of the min cosine distance; the image score is the mean of the top 1% of
    the upsampled, Gaussian-smoothed (sigma 4) map, MeDS's image reduction.
    """

    _PATCHES_FILE = "train_patches.npy"
    _CONFIG_FILE = "partial_memory.json"

    def __init__(
        self,
        config: PartialMemoryConfig | None = None,
        image_size: int = 224,
        num_tasks: int | None = None,
        use_ray: bool = True,
        blur_sigma: float = 4.0,
    ) -> None:
        self.config = config or PartialMemoryConfig()
        self.image_size = image_size
        self.num_tasks = num_tasks
        self.use_ray = use_ray
        self.blur_sigma = blur_sigma
        self.train_patches: np.ndarray | None = None

    def fit(self, train_patches: np.ndarray) -> PartialMemoryDetector:
        """Keep the normalised (and, if configured, pooled) (N, g, g, D) training patches."""
        self.train_patches = _prepare_grid(train_patches, self.config)
        return self

    def _memory(self) -> np.ndarray:
        if self.train_patches is None:
            raise RuntimeError("PartialMemoryDetector.fit must run before scoring")
        n, gh, gw, d = self.train_patches.shape
        return self.train_patches.reshape(n, gh * gw, d)

    def patch_scores(self, patches: np.ndarray) -> np.ndarray:
        """(M, h, w, D) test patches -> (M, h, w) mean min-cosine-distance scores."""
        memory = self._memory()
        _, h, w, _ = np.shape(patches)
        queries = _prepare_grid(patches, self.config)
        c = self.config
        scores = bootstrap_memory_scores(
            memory, c.bootstraps, c.rho, c.seed, self.num_tasks, self.use_ray, queries=queries
        )
        return upsample_maps(scores, (h, w))

    def train_scores(self) -> np.ndarray:
        """Stage-1 maps of the training set itself, on the stored (possibly pooled) grid."""
        memory = self._memory()
        c = self.config
        scores = bootstrap_memory_scores(memory, c.bootstraps, c.rho, c.seed, self.num_tasks, self.use_ray)
        return scores.reshape(self.train_patches.shape[:3])  # type: ignore[union-attr]

    def _smoothed_image_scores(
        self, scores: np.ndarray, keep_maps: bool, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Image scores from the smoothed maps, computed in batches so that the full-size
        maps of a large test set are only held in memory when the caller wants them."""
        image_scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        for start in range(0, len(scores), batch_size):
            block = patch_scores_to_maps(scores[start : start + batch_size], self.image_size, self.blur_sigma)
            image_scores.append(reduce_to_image_scores(block, "top_fraction_mean", 0.01))
            if keep_maps:
                maps.append(block)
        return np.concatenate(image_scores), (np.concatenate(maps) if keep_maps else None)

    def predict(self, patches: np.ndarray, with_maps: bool = True) -> AnomalyPrediction:
        """Scores of (M, h, w, D) test patches: patch grid, image scores, optional maps."""
        scores = self.patch_scores(patches)
        image_scores, maps = self._smoothed_image_scores(scores, with_maps)
        return AnomalyPrediction(image_scores=image_scores, patch_scores=scores, maps=maps)

    def save(self, directory: str | Path) -> Path:
        """Write the stored training patches (``.npy``) and the configuration (JSON)."""
        if self.train_patches is None:
            raise RuntimeError("fit before saving")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / self._PATCHES_FILE, self.train_patches)
        settings = {
            "config": dataclasses.asdict(self.config),
            "image_size": self.image_size,
            "blur_sigma": self.blur_sigma,
        }
        staging = directory / f".{self._CONFIG_FILE}.tmp"
        staging.write_text(json.dumps(settings, indent=2))
        os.replace(staging, directory / self._CONFIG_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path, num_tasks: int | None = None, use_ray: bool = True) -> PartialMemoryDetector:
        """Read a detector written by :meth:`save`; it scores exactly as the saved one did."""
        directory = Path(directory)
        settings = json.loads((directory / cls._CONFIG_FILE).read_text())
        detector = cls(
            PartialMemoryConfig(**settings["config"]),
            image_size=int(settings["image_size"]),
            num_tasks=num_tasks,
            use_ray=use_ray,
            blur_sigma=float(settings["blur_sigma"]),
        )
        detector.train_patches = np.load(directory / cls._PATCHES_FILE)
        return detector
