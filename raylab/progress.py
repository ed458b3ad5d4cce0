"""Progress of long steps, and one switch to silence it.

Shown by default: Ray Data's progress bars (feature extraction), Tune's trial tables
(sweeps), a line per Ray Train epoch (training), and raylab's own bars for memory building
(greedy coreset selection, MeDS partial-memory tasks), and a heartbeat line for long waits
that print nothing of their own while they last (a Ray Train run between epochs, a sweep's
tasks): "[raylab] <step> still running after N s", so a stuck step is seen as stuck.
``RAYLAB_PROGRESS=0`` (or ``--no-progress`` on any job) silences all of them, e.g. for CI
logs or batch jobs whose output is collected; errors and results are still printed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

ENV = "RAYLAB_PROGRESS"
_OFF = ("0", "false", "off", "no")


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in _OFF


def silence() -> None:
    """Turn progress off for this process and the Ray workers it starts afterwards."""
    os.environ[ENV] = "0"


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "it") -> Iterator[Any]:
    """A tqdm bar (on stderr, refreshed at most every 2 s) that is silent when progress is off."""
    from tqdm.auto import tqdm

    progress = tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), mininterval=2.0, leave=False)
    try:
        yield progress
    finally:
        progress.close()


HEARTBEAT_SECONDS = 60.0


@contextlib.contextmanager
def heartbeat(step: str, every_s: float = HEARTBEAT_SECONDS, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs, print "[raylab] <step> still running after N s" every ``every_s``.

    For waits that show nothing else while they last: without it, a step that hangs and a
    step that is merely slow look the same, an idle console. A daemon thread prints (to
    ``stream``, default stderr) and stops when the block ends; nothing is printed for a block
    shorter than ``every_s``, nor when progress is off.
    """
    if not enabled() or every_s <= 0:
        yield
        return
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every_s):
            out = stream if stream is not None else sys.stderr
            print(f"[raylab] {step} still running after {time.monotonic() - started:.0f} s", file=out, flush=True)

    thread = threading.Thread(target=beat, name=f"raylab-heartbeat: {step}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


VERBOSE_ENV = "RAYLAB_VERBOSE"


def train_log_level() -> str:
    """Ray Train's console level. Its per-report lines ("Reporting training result ...") and the
    controller's state-polling warnings are Ray's internals: they stay in Ray Train's own log
    files (which keep every level) unless ``--verbose`` (``RAYLAB_VERBOSE=1``)."""
    return "INFO" if os.environ.get(VERBOSE_ENV, "0") == "1" else "ERROR"


def tune_verbosity() -> int:
    """``tune.RunConfig(verbose=...)``: Tune's status tables, or nothing."""
    return 1 if enabled() else 0


def configure_ray_data() -> None:
    """Ray Data's own progress bars follow the switch (call after ``ray.init``)."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = enabled()
