"""Where a job's wall time goes: named phases, timed in the process that runs them.

A phase is timed where its work happens (the driver, a Tune trial, a Ray task, a Ray Train
run's driver side), kept in that process, and handed back with the trial's rows, so the
runner can print one table for the whole job (``--profile-time``) and log it to the sweep's
MLflow run. Phases of concurrent trials add up to more than the wall time; the table says so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

_PHASES: list[tuple[str, float]] = []


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as ``name`` (also when it raises: a failed phase still cost its time)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        record(name, time.perf_counter() - started)


def record(name: str, seconds: float) -> None:
    _PHASES.append((name, float(seconds)))


def drain() -> list[tuple[str, float]]:
    """The phases recorded in this process since the last drain (a Ray worker runs many trials)."""
    taken = list(_PHASES)
    _PHASES.clear()
    return taken


def profile_table(phases: Iterable[tuple[str, float]], wall_seconds: float) -> str:
    """Phases summed by name in first-seen order: count, total seconds, share of the wall time."""
    totals: dict[str, list[float]] = {}
    for name, seconds in phases:
        entry = totals.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
    width = max([len(name) for name in totals] + [len("phase")])
    lines = [f"{'phase':<{width}}  {'runs':>4}  {'seconds':>8}  {'share':>6}"]
    for name, (count, seconds) in totals.items():
        lines.append(f"{name:<{width}}  {int(count):>4}  {seconds:>8.1f}  {seconds / max(wall_seconds, 1e-9):>6.1%}")
    lines.append(f"{'wall time of the job':<{width}}  {'':>4}  {wall_seconds:>8.1f}  {1:>6.1%}")
    lines.append("(trial phases are summed over trials: concurrent trials can add up to more than the wall time)")
    return "\n".join(lines)
