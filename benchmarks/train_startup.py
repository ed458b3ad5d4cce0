"""Ray Train's fixed cost per run: Ray's controller polling interval against raylab's.

Every trained model in raylab is one ``TorchTrainer.fit`` (``raylab.train.harness.fit``), and
a sweep runs one per class and trial, so what a run costs before and after its loop is paid
many times. This script runs the same trivial loop (two DDP workers, one report) on one local
Ray, alternating Ray's default ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s) and raylab's
(:data:`raylab.train.harness.HEALTH_CHECK_INTERVAL_S`), and prints for each: the seconds from
``fit()`` to the loop's first line, from its last line to ``fit()`` returning, and in all.

    python benchmarks/train_startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from raylab.train.harness import HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S

RAY_DEFAULT_S = 2.0


def _loop(config: dict) -> None:
    started = time.time()
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["stamp"]).write_text(json.dumps({"loop_start": started, "loop_end": time.time()}))
    ray.train.report({"done": 1})


def one_run(interval: float, storage: Path, name: str) -> dict[str, float]:
    os.environ[HEALTH_CHECK_INTERVAL_ENV] = str(interval)  # read by Ray Train when fit() starts its controller
    stamp = storage / f"{name}.json"
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"stamp": str(stamp)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.99}),
        run_config=ray.train.RunConfig(name=name, storage_path=str(storage)),
    )
    started = time.time()
    trainer.fit()
    ended = time.time()
    times = json.loads(stamp.read_text())
    return {"to_loop": times["loop_start"] - started, "after_loop": ended - times["loop_end"], "total": ended - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, alternating (default 3)")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    settings = {"ray default": RAY_DEFAULT_S, "raylab": HEALTH_CHECK_INTERVAL_S}
    results: dict[str, list[dict[str, float]]] = {label: [] for label in settings}
    with tempfile.TemporaryDirectory() as scratch:
        one_run(HEALTH_CHECK_INTERVAL_S, Path(scratch), "warm-up")  # first run pays one-off imports
        for repeat in range(args.repeats):
            for label, interval in settings.items():
                results[label].append(one_run(interval, Path(scratch), f"{label.replace(' ', '-')}-{repeat}"))
    print(
        f"{'setting':<12} {'interval':>8} {'to loop':>8} {'after loop':>10} {'total':>7}"
        f"   (median of {args.repeats}, seconds)"
    )
    medians = {}
    for label, interval in settings.items():
        medians[label] = {
            key: statistics.median(run[key] for run in results[label]) for key in ("to_loop", "after_loop", "total")
        }
        m = medians[label]
        print(f"{label:<12} {interval:>8.2f} {m['to_loop']:>8.1f} {m['after_loop']:>10.1f} {m['total']:>7.1f}")
    ratio = medians["ray default"]["total"] / medians["raylab"]["total"]
    print(
        f"raylab's run is {ratio:.2f}x as fast as Ray's default for an empty loop "
        f"({medians['ray default']['total'] - medians['raylab']['total']:.1f} s saved per Train run)"
    )


if __name__ == "__main__":
    main()
