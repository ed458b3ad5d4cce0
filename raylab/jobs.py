"""The contract every script in ``jobs/`` follows.

Same options everywhere (``--dataset``, ``--data-root``, ``--config``, ``--seeds``,
``--quick``, ``--summary-json``), the same Ray start-up (``RAY_ADDRESS`` or a local Ray
started in-process), the same summary format, so a user who learnt one job knows them all::

    {"job": "patchcore_eval",
     "rows": [{"method": ..., "dataset": ..., "noise_ratio": ..., "seed": ...,
               "metrics": {"image_auroc": ..., "pixel_auroc": ..., ...}}, ...]}
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUMMARY_HELP = (
    "write a JSON summary: {job, rows: [{method, dataset, noise_ratio, seed, metrics: {...}}]} "
    "(one row per method x setting x seed)"
)


def job_parser(job: str, description: str, *, default_dataset: str, metrics_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"jobs/{job}.py",
        description=description,
        epilog=f"Metrics in the summary rows: {metrics_help}. Ray: connects to $RAY_ADDRESS "
        "(e.g. under `ray job submit`) or starts a local Ray. MLflow: $MLFLOW_TRACKING_URI, "
        "else sqlite:///mlruns.db in the working directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", default=default_dataset, help="registered dataset name (see `raylab datasets`)")
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder that holds the dataset's folder (e.g. ../shared/data for magnetic_tile); "
        "not needed for datasets installed from PyPI (elpv)",
    )
    parser.add_argument(
        "--config", default=None, help="YAML file overriding the job's typed config (jobs may default to configs/<method>/<dataset>.yaml)"
    )
    parser.add_argument("--seeds", default=None, help="comma-separated protocol seeds, e.g. 0,1,2")
    parser.add_argument("--quick", action="store_true", help="a reduced run that finishes in minutes on a laptop")
    parser.add_argument("--summary-json", default=None, metavar="PATH", help=SUMMARY_HELP)
    parser.add_argument(
        "--no-progress", nargs=0, action=_SilenceProgress, default=False,
        help="no progress bars or per-epoch lines (same as RAYLAB_PROGRESS=0); results and errors are still printed",
    )
    return parser


class _SilenceProgress(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from raylab.progress import silence

        silence()
        setattr(namespace, self.dest, True)


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {text!r}") from None


def init_ray(**local_options: Any) -> None:
    """Connect to ``$RAY_ADDRESS`` when set (cluster / ``ray job submit``), else start locally."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local", not None: with no address Ray would join a cluster that `ray start` left
        # running on this machine, and the job's resources would depend on what else runs.
        ray.init(address="local", include_dashboard=False, **local_options)
    from raylab.progress import configure_ray_data

    configure_ray_data()


def summary_row(method: str, dataset: str, noise_ratio: float | None, seed: int | None, metrics: Mapping[str, float], **extra: Any) -> dict[str, Any]:
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in metrics.items()}
    return {"method": method, "dataset": dataset, "noise_ratio": noise_ratio, "seed": seed, "metrics": clean, **extra}


def write_summary(path: str | Path, job: str, rows: Sequence[Mapping[str, Any]], **extra: Any) -> None:
    """Write atomically: an interrupted job never leaves a truncated summary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps({"job": job, "rows": list(rows), **extra}, indent=2))
    os.replace(staging, path)
