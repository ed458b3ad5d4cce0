"""A bounded load test of a served model: a fixed number of requests at a fixed concurrency.

It stops by itself, talks only to a loopback address (it is for measuring a service one
started here, never for pointing at someone else's), and reports latency percentiles and
throughput with the error count, so a change to batching or replicas is judged by numbers.
"""

from __future__ import annotations

import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{url}: the load test only targets a loopback address (127.0.0.1, ::1), got host {host!r}")


def run_load(
    url: str, body: bytes, *, requests_total: int, concurrency: int, timeout_s: float = 60.0
) -> dict[str, float]:
    import requests

    require_loopback(url)
    if requests_total < 1 or concurrency < 1:
        raise ValueError(f"requests_total and concurrency must be >= 1, got {requests_total} and {concurrency}")

    def one(_: int) -> tuple[float, bool]:
        started = time.perf_counter()
        try:
            ok = requests.post(url, data=body, timeout=timeout_s).status_code == 200
        except requests.RequestException:
            ok = False
        return time.perf_counter() - started, ok

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests_total)))
    wall = time.perf_counter() - started
    latencies = np.array([seconds for seconds, _ in results]) * 1000
    return {
        "requests": requests_total,
        "concurrency": concurrency,
        "errors": sum(not ok for _, ok in results),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "throughput_rps": round(requests_total / wall, 2),
    }


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m raylab.deploy.load_test", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the service's predict URL on loopback, e.g. http://127.0.0.1:8000/predict")
    parser.add_argument("image", help="an image file sent as every request's body")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    print(
        json.dumps(
            run_load(
                args.url, Path(args.image).read_bytes(), requests_total=args.requests, concurrency=args.concurrency
            )
        )
    )


if __name__ == "__main__":
    main()
