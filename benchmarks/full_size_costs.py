"""Measure every paper-size config at its smoke budget: what ``--dry-run`` scales up.

For each packaged full-size config (``raylab.experiment.registry.FULL_SIZE_CONFIGS``), in
one script on one machine: write random weights in the loaders' real formats, run the real
job at ``--smoke`` and again at a larger budget (the experiment's ``smoke_scaled``, else its
step keys doubled: iterations, epochs, trials), each in a fresh process with its own local
Ray, caches and MLflow store, and record wall time and peak host memory. The two runs give
the seconds per unit of work apart from the fixed costs; ``--write`` stores them in
``raylab/configs/cost_measurements.yaml``.

Peak host memory: the job's whole process tree (driver, Ray's services and workers) sampled
every 0.2 s from ``/proc`` as the sum of private memory (``RssAnon``) plus the largest
file-backed and shared resident sets (libraries and Ray's object store are mapped by every
process but held once), so it counts what the machine holds, not what each process maps.

    python benchmarks/full_size_costs.py --data-root ../shared/data --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from raylab.experiment import get_experiment, run
from raylab.experiment.cost import Measurement, measurement_key, measurements_path
from raylab.experiment.identity import flatten
from raylab.experiment.registry import FULL_SIZE_CONFIGS, full_size_arguments
from raylab.testing.random_weights import smoke_weight_arguments

REPOSITORY = Path(__file__).resolve().parents[1]
DOUBLED_LEAVES = ("iterations", "epochs", "n_trials", "search_iterations", "kimg", "steps")
MIN_WORK_GROWTH = 1.5  # a slope needs the scaled run to do at least this much more of the work unit


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def _resident_bytes(pids: list[int]) -> int:
    private, file_backed, shared = 0, 0, 0
    for pid in pids:
        try:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        kb = {key: int(fields.get(key, "0 kB").split()[0]) for key in ("RssAnon", "RssFile", "RssShmem")}
        private += kb["RssAnon"]
        file_backed = max(file_backed, kb["RssFile"])
        shared = max(shared, kb["RssShmem"])
    return (private + file_backed + shared) * 1024


def measure(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak host bytes of ``command`` and every process it starts."""
    peak = 0
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes(_process_tree(process.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{err[-4000:]}")
    return seconds, peak


def scaled(smoke: dict, smoke_scaled: dict) -> list[str]:
    """``--set`` assignments of the experiment's larger budget (its ``smoke_scaled``), or, where
    it declares none, of its smoke budget with every step key doubled."""
    if smoke_scaled:
        return [part for key, value in flatten(smoke_scaled).items() for part in ("--set", f"{key}={value}")]
    flat = {
        key: value for key, value in flatten(smoke).items() if isinstance(value, int) and not isinstance(value, bool)
    }
    assignments = []
    for key, value in flat.items():
        if key.rpartition(".")[2] in DOUBLED_LEAVES:
            assignments += ["--set", f"{key}={2 * value}"]
    return assignments


def estimate_of(experiment_name: str, argv: list[str]) -> dict:
    return run(get_experiment(experiment_name), [*argv, "--dry-run"])["estimate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(REPOSITORY.parent / "shared" / "data"))
    parser.add_argument("--weights-root", default=str(REPOSITORY.parent / "shared" / "weights"))
    parser.add_argument("--only", nargs="*", default=None, help="config keys, e.g. meds/full_dinov2")
    parser.add_argument(
        "--write", action="store_true", help="store the measurements in raylab/configs/cost_measurements.yaml"
    )
    args = parser.parse_args()
    device = f"{os.cpu_count()}-core {platform.machine()} CPU"
    measurements = {}
    with tempfile.TemporaryDirectory(prefix="raylab-costs-") as scratch:
        scratch_path = Path(scratch)
        for key in args.only or sorted(FULL_SIZE_CONFIGS):
            entry = FULL_SIZE_CONFIGS[key]
            experiment = get_experiment(entry.experiment)
            weights = smoke_weight_arguments(key, scratch_path / "weights")
            argv = full_size_arguments(key, args.data_root, args.weights_root, weights)
            runs = []
            for label, extra in (("smoke", []), ("scaled", scaled(experiment.smoke, experiment.smoke_scaled))):
                estimate = estimate_of(entry.experiment, [*argv, *extra])
                root = scratch_path / key.replace("/", "-") / label
                env = {
                    **os.environ,
                    "RAYLAB_CACHE_DIR": str(root / "cache"),
                    "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
                    "RAYLAB_PROGRESS": "0",
                    "HF_HUB_OFFLINE": "1",
                }
                root.mkdir(parents=True)
                command = [
                    sys.executable,
                    f"jobs/{entry.experiment}.py",
                    *argv,
                    *extra,
                    "--summary-json",
                    str(root / "summary.json"),
                ]
                seconds, peak = measure(command, env)
                runs.append((estimate, seconds, peak))
                print(
                    f"{key:24s} {label:8s} {seconds:7.1f} s  peak {peak / 2**30:5.2f} GB  "
                    f"work {estimate['work']:.3g} {estimate['work_unit']}",
                    flush=True,
                )
            (first, first_seconds, first_peak), (second, second_seconds, _) = runs
            if second["work"] < MIN_WORK_GROWTH * first["work"]:
                # The scaled budget hardly changed the work unit (more images that add little of
                # it), so the time it added is not the unit's: no slope.
                print(
                    f"{key}: work grew {second['work'] / first['work']:.3f}x, under {MIN_WORK_GROWTH}x: no slope",
                    flush=True,
                )
                slope = 0.0
            else:
                slope = max(second_seconds - first_seconds, 0.0) / max(second["work"] - first["work"], 1e-12)
            measurements[measurement_key(entry.experiment, entry.arguments[entry.arguments.index("--config") + 1])] = (
                Measurement(
                    device=device,
                    trial_seconds=round(first_seconds / first["trials"], 1),
                    work=first["work"],
                    seconds_per_work=float(f"{slope:.4g}"),
                    peak_host_bytes=first_peak,
                    array_bytes=first["array_gb"] * 2**30,
                ).__dict__
            )
    print(json.dumps(measurements, indent=2))
    if args.write:
        path = measurements_path()
        existing = yaml.safe_load(path.read_text()) if path.is_file() else {}
        path.write_text(
            "# Smoke-budget measurements of the paper-size configs, scaled by --dry-run.\n"
            "# Written by: python benchmarks/full_size_costs.py --data-root ../shared/data --write\n"
            f"# Measured {time.strftime('%Y-%m-%d')} on {device}; "
            "note the machine's load beside the numbers you report.\n"
            + yaml.safe_dump({**(existing or {}), **measurements}, sort_keys=True)
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
