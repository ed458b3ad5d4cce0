"""The tracking endpoint, checked before anything expensive starts.

Jobs open their MLflow runs only after preparing their inputs, so a mistyped or dead tracking
URI would surface after minutes of extraction, and a server that accepts connections but
never answers would hold a job for MLflow's own timeout times its retries (120 s x 7). So the
runner asks the endpoint once, with a short timeout, before Ray starts, and bounds MLflow's
HTTP timeout and retries for the rest of the run (unless the user set them).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

CHECK_TIMEOUT_SECONDS = 5.0
# MLflow's own defaults are 120 s and 7 retries with backoff: 15-20 minutes on a dead server.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}


class TrackingEndpointError(RuntimeError):
    """The tracking URI cannot be used; the message names it and what to check."""


def http_limits() -> dict[str, str]:
    """MLflow's HTTP timeout and retries, raylab's bound where the environment sets none."""
    return {key: value for key, value in HTTP_LIMITS.items() if key not in os.environ}


def check_tracking_endpoint(uri: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """Fail in seconds, naming ``uri``, when runs could not be logged there."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        _check_server(uri, timeout)
    elif parsed.scheme == "sqlite":
        database = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else parsed.path
        _check_folder(uri, Path(database).parent if database not in ("", ":memory:") else None)
    elif parsed.scheme in ("", "file"):
        _check_folder(uri, Path(parsed.path).parent)


def _check_server(uri: str, timeout: float) -> None:
    hint = "check MLFLOW_TRACKING_URI and that `mlflow server` runs there"
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (a proxy or an auth layer may not serve /health): the server is there
    except urllib.error.URLError as error:
        reason = error.reason
        raise TrackingEndpointError(f"MLflow tracking URI {uri}: cannot connect ({reason}); {hint}") from None
    except (TimeoutError, OSError) as error:
        raise TrackingEndpointError(
            f"MLflow tracking URI {uri}: no answer within {timeout:g} s ({error or 'timed out'}); {hint}"
        ) from None


def _check_folder(uri: str, folder: Path | None) -> None:
    if folder is None or str(folder) in ("", "."):
        return
    if not folder.is_dir():
        raise TrackingEndpointError(f"MLflow tracking URI {uri}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise TrackingEndpointError(f"MLflow tracking URI {uri}: the folder {folder} is not writable")
