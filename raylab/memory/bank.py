"""Exact nearest-neighbour memory banks on faiss flat indexes.

Every memory-based method in raylab scores a query by exact nearest-neighbour search in a
bank of stored feature vectors:

* PatchCore, SoftPatch and TailedCore: the anomaly score of a test patch is its squared L2
  distance to the nearest memory patch (``metric="l2"``, ``k=1``); SoftPatch also needs the
  matched memory patch itself (``indices``) to look up its LOF weight.
* MeDS (stage 1): ``1 - cos(f, m)`` is one minus the inner product of L2-normalised vectors,
  so its partial memories are ``metric="ip"`` banks over normalised features.
* NNGuide and KNN OOD baselines: guidance is the mean of the top-k inner products
  (``metric="ip"``, ``k=10`` or ``100``).

Flat (brute-force) indexes are used on purpose: the papers' scores are exact
nearest-neighbour distances, and an approximate index would change the numbers being
reproduced. A bank lives on a GPU when faiss was built with GPU support and one is visible,
and on the CPU otherwise; results are the same either way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import faiss
import numpy as np
import torch

from raylab.artefacts import CorruptArtefactError
from raylab.metrics import record_bank_add, record_bank_search

Metric = Literal["l2", "ip"]
Device = Literal["auto", "cpu", "gpu"]

_METRICS: tuple[str, ...] = ("l2", "ip")
_DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
_FORMAT = "raylab.memory_bank"
_FORMAT_VERSION = 1

ArrayLike = np.ndarray | torch.Tensor


def gpu_available() -> bool:
    """Whether faiss can place an index on a GPU here.

    ``faiss-cpu`` builds have neither ``StandardGpuResources`` nor a GPU count, so both are
    looked up defensively instead of assuming one of the two packages.
    """
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return False
    return int(faiss.get_num_gpus()) > 0


def _resolve_device(device: str) -> Literal["cpu", "gpu"]:
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {_DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if device == "gpu":
        raise RuntimeError(
            "device='gpu' was requested but faiss cannot use a GPU here: install the "
            "faiss-gpu build (raylab[gpu]) and make sure a CUDA device is visible, or use "
            "device='auto' to fall back to the CPU"
        )
    return "cpu"


def as_float32_matrix(array: ArrayLike, dim: int | None, name: str) -> np.ndarray:
    """Return ``array`` as a C-contiguous float32 ``(n, dim)`` matrix, as faiss requires.

    float64 and float16 inputs (and torch tensors on any device) are converted; a copy is
    made only when the input is not already in that layout. Non-finite values are rejected
    because faiss silently returns meaningless neighbours for them.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float32).numpy()
    matrix = np.asarray(array)
    if matrix.ndim != 2:
        expected = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise ValueError(f"{name} must be a 2-D array of shape {expected}, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {matrix.dtype}")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _new_flat_index(dim: int, metric: Metric) -> faiss.Index:
    return faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)


class MemoryBank:
    """An exact (flat) faiss index plus a host copy of the stored vectors.

    Distances returned by :meth:`search` are faiss's native ones:

    * ``metric="l2"``: **squared** Euclidean distances, ascending. PatchCore and TailedCore
      score with exactly this value; take ``np.sqrt`` for the Euclidean distance.
    * ``metric="ip"``: inner products, descending (most similar first). On L2-normalised
      vectors this is the cosine similarity.

    The host copy (``vectors``) doubles the bank's memory on the CPU; it exists because
    SoftPatch looks up properties of matched memory entries and because a GPU index cannot
    be read back cheaply.
    """

    def __init__(self, dim: int, metric: Metric = "l2", device: Device = "auto") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        self._dim = int(dim)
        self._metric: Metric = metric
        self._device = _resolve_device(device)
        self._gpu_resources: Any = None
        self._index = self._place(_new_flat_index(self._dim, metric))
        self._chunks: list[np.ndarray] = []
        self._vectors = np.empty((0, self._dim), dtype=np.float32)

    def _place(self, cpu_index: faiss.Index) -> faiss.Index:
        """Move a CPU index to the GPU when this bank lives there."""
        if self._device == "cpu":
            return cpu_index
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, cpu_index)

    @property
    def dim(self) -> int:
        """Dimension of the stored vectors."""
        return self._dim

    @property
    def metric(self) -> Metric:
        """``"l2"`` (squared Euclidean) or ``"ip"`` (inner product)."""
        return self._metric

    @property
    def device(self) -> Literal["cpu", "gpu"]:
        """Where the faiss index lives after resolving ``"auto"``."""
        return self._device

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"MemoryBank(dim={self._dim}, metric={self._metric!r}, device={self._device!r}, size={len(self)})"

    @property
    def vectors(self) -> np.ndarray:
        """All stored vectors in insertion order, ``(len(self), dim)`` float32 (read-only view)."""
        if self._chunks:
            self._vectors = np.concatenate([self._vectors, *self._chunks], axis=0)
            self._chunks = []
        view = self._vectors.view()
        view.flags.writeable = False
        return view

    def add(self, vectors: ArrayLike) -> None:
        """Append ``vectors`` (``(n, dim)``) to the bank; row ``i`` gets id ``len(self) + i``."""
        matrix = as_float32_matrix(vectors, self._dim, "vectors")
        if matrix.shape[0] == 0:
            return
        self._index.add(matrix)
        # Own the host copy: the caller's array (or tensor storage) may be reused later.
        self._chunks.append(matrix.copy())
        record_bank_add(matrix.shape[0], len(self), self.metric, self.device)

    def reconstruct(self, indices: ArrayLike | Sequence[int] | int) -> np.ndarray:
        """Stored vectors for the given ids (any shape of ids; a trailing ``dim`` axis is added)."""
        ids = np.asarray(indices.detach().cpu() if isinstance(indices, torch.Tensor) else indices)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)}), got range [{ids.min()}, {ids.max()}]")
        return self.vectors[ids]

    def search(self, queries: ArrayLike, k: int = 1, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-nearest-neighbour search.

        Queries are processed ``batch_size`` rows at a time and written into preallocated
        outputs, so a query set of millions of patches never materialises more than one
        batch of intermediate results inside faiss.

        Returns ``(distances, indices)``, float32 and int64 arrays of shape ``(n, k)``;
        see the class docstring for what the distances are for each metric.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(self) == 0:
            raise ValueError("cannot search an empty memory bank: add vectors first")
        if k > len(self):
            raise ValueError(f"k={k} exceeds the number of vectors in the memory bank ({len(self)})")
        matrix = as_float32_matrix(queries, self._dim, "queries")
        n = matrix.shape[0]
        distances = np.empty((n, k), dtype=np.float32)
        indices = np.empty((n, k), dtype=np.int64)
        started = time.perf_counter()
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            self._index.search(matrix[start:stop], k, D=distances[start:stop], I=indices[start:stop])
        record_bank_search(n, time.perf_counter() - started, self.metric, self.device)
        return distances, indices

    def save(self, path: str | Path) -> None:
        """Write the bank to the single file ``path``, atomically.

        The file is an ``.npz`` container holding a JSON header (format, version, dim,
        metric, count) and the standard faiss serialisation of the CPU index. It is first
        written and fsynced to a temporary file in the same directory and then moved over
        ``path`` with ``os.replace``, so a crash at any point leaves either the previous
        bank or the new one at ``path``, never a truncated file.
        """
        target = Path(path)
        cpu_index = self._index if self._device == "cpu" else faiss.index_gpu_to_cpu(self._index)
        index_bytes = faiss.serialize_index(cpu_index)
        header = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "dim": self._dim,
            "metric": self._metric,
            "count": len(self),
            # Checked on load: a flipped bit in the index would otherwise load and search quietly.
            "sha256": hashlib.sha256(index_bytes.tobytes()).hexdigest(),
        }
        payload = io.BytesIO()
        np.savez(payload, header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8), index=index_bytes)
        _atomic_write_bytes(target, payload.getbuffer())

    @classmethod
    def load(cls, path: str | Path, device: Device = "auto") -> MemoryBank:
        """Read a bank written by :meth:`save`; its searches return exactly what the saved one did."""
        try:
            with np.load(Path(path), allow_pickle=False) as archive:
                if "header" not in archive or "index" not in archive:
                    raise ValueError(f"{path} is not a raylab memory bank file (missing header or index)")
                header = json.loads(archive["header"].tobytes().decode("utf-8"))
                index_bytes = archive["index"]
        except FileNotFoundError:
            raise
        except (OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptArtefactError(
                f"{path}: cannot read the memory bank ({type(error).__name__}: {error})"
            ) from error
        if "sha256" in header and hashlib.sha256(index_bytes.tobytes()).hexdigest() != header["sha256"]:
            raise CorruptArtefactError(
                f"{path}: the memory bank's index differs from its checksum (the file changed after it was written)"
            )
        if header.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a raylab memory bank file (format {header.get('format')!r})")
        if header.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"{path} has memory bank format version {header.get('version')}, "
                f"this raylab reads version {_FORMAT_VERSION}"
            )
        cpu_index = faiss.deserialize_index(index_bytes)
        bank = cls(int(header["dim"]), cast(Metric, header["metric"]), device)
        expected_type = faiss.METRIC_L2 if bank.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if cpu_index.d != bank.dim or cpu_index.ntotal != header["count"] or cpu_index.metric_type != expected_type:
            raise ValueError(f"{path} is corrupt: its index does not match its header {header}")
        bank._index = bank._place(cpu_index)
        bank._vectors = cpu_index.reconstruct_n(0, cpu_index.ntotal).reshape(-1, bank.dim)
        return bank


def _atomic_write_bytes(target: Path, data: memoryview) -> None:
    """Write ``data`` to ``target`` via a fsynced temporary sibling and ``os.replace``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def nearest_neighbour_distances(
    queries: ArrayLike,
    memory: ArrayLike,
    k: int = 1,
    metric: Metric = "l2",
    device: Device = "auto",
) -> np.ndarray:
    """One-shot exact k-NN: the ``(n, k)`` distances from each query to ``memory``.

    Builds a temporary :class:`MemoryBank`; distances follow its conventions (squared L2
    ascending, or inner products descending). Keep a bank instead when querying the same
    memory more than once.
    """
    memory_matrix = as_float32_matrix(memory, None, "memory")
    bank = MemoryBank(memory_matrix.shape[1], metric=metric, device=device)
    bank.add(memory_matrix)
    distances, _ = bank.search(queries, k=k)
    return distances
