"""Real services for the operations tests: a Ray head from ``ray start``, an MLflow server.

Every service is started in its own process group and stopped by signalling that group,
never with ``ray stop`` (which stops every Ray on the machine, other users' included).
Everything binds to 127.0.0.1 on free ports, with its state in a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# How long a stopped service's process group gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait until ``url`` answers at all (401 from an auth-protected server counts as up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}:\n{_tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextlib.contextmanager
def process_group(
    command: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    grace: float = STOP_GRACE_S,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` as the leader of a new process group; on exit stop that group only
    (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_group(process, grace)


# A Ray head's GCS server and its ``ray start --block`` parent outlive SIGTERM by more than
# 25 s (its raylet exits after about 10 s): a test's head, whose state is a temporary folder
# nobody reads again, gets this long before SIGKILL instead of sitting out the default grace.
RAY_HEAD_GRACE_S = 3.0


def stop_group(process: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the group (``ray start --block`` then stops its own raylet, GCS, dashboard), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(process.pid):
            process.poll()
            time.sleep(0.2)
        if not _group_alive(process.pid):
            process.poll()
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; a group of zombies only is gone for our purposes.
    return any(_state(pid) not in ("Z", None) for pid in _group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat and int(stat[4]) == pgid:
                members.append(int(entry.name))
    return members


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    return [str(pid), text[text.index("(") + 1 : text.rindex(")")]] + text[text.rindex(")") + 2 :].split()


def _state(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[2] if stat else None


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live descendant of ``pid`` (from /proc, no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat:
                children.setdefault(int(stat[3]), []).append(int(entry.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop()
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((child, cmdline))
        queue.extend(children.get(child, []))
    return found


@dataclass
class RayHead:
    address: str
    dashboard_url: str
    process: subprocess.Popen
    log: Path

    def wait_ready(self, timeout: float = 300.0) -> None:
        wait_for_http(f"{self.dashboard_url}/api/version", self.process, self.log, timeout)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for the ``ray`` CLI: Ray 2.60 token auth needs ``RAY_AUTH_MODE=token``."""
    env = dict(os.environ, RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def auth_headers() -> dict[str, str]:
    """The bearer token ``ray start`` uses (``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``), for Ray's HTTP APIs from a process whose Ray was set up without it."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.exists() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def ray_head(
    num_cpus: int = 2, env: dict[str, str] | None = None, timeout: float = 300.0, attempts: int = 2
) -> Iterator[RayHead]:
    """``ray start --head --block`` on loopback and free ports; stopped by its own process group.

    ``ray start`` gives its raylet 30 s to register with the GCS; on a machine loaded far
    beyond its cores that can pass, and the start is tried again on fresh ports."""
    for attempt in range(1, attempts + 1):
        # A short temp dir: Ray's Unix sockets live below it and socket paths are limited to 107 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix="rlh", dir="/tmp"))
        ports = {
            name: free_port()
            for name in (
                "port",
                "dashboard-port",
                "ray-client-server-port",
                "node-manager-port",
                "object-manager-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
            )
        }
        command = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--num-cpus={num_cpus}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in ports.items()),
        ]
        log = temp_dir / "head.log"
        with process_group(command, log, env=cli_env(**(env or {})), grace=RAY_HEAD_GRACE_S) as process:
            head = RayHead(f"127.0.0.1:{ports['port']}", f"http://127.0.0.1:{ports['dashboard-port']}", process, log)
            try:
                head.wait_ready(timeout)
            except RuntimeError:  # `ray start` exited during start-up
                if attempt == attempts:
                    raise
                continue
            yield head
            return


@contextlib.contextmanager
def mlflow_server(root: Path, timeout: float = 300.0) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite store, proxied artifacts) on 127.0.0.1; yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    log = root / "mlflow-server.log"
    with process_group(command, log, env=dict(os.environ)) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", process, log, timeout)
        yield url
