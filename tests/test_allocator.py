"""The allocator settings raylab gives its processes: they take effect, and a user's values win.

Page faults are counted, not time: a tensor of tens of MiB allocated and freed again and
again (a forward pass's activations) is faulted in on every allocation under glibc's
defaults, and a few times at most under raylab's settings, whether set from the environment at a process's
start or by ``mallopt`` in a running one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raylab.allocator import ENVIRONMENT, OPT_OUT, allocator_environment

# Allocates, touches and frees a 48 MiB tensor 45 times; prints the minor faults of the last
# 40. Under raylab's settings glibc's heap grows by a few such tensors before it holds enough
# free memory (mostly within the first five; now and then once or twice more later on).
CHURN = """
import json, resource, sys, torch
from raylab.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "mallopt" else None
for _ in range(5):
    torch.ones(12 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.ones(12 * 2**20).sum()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "applied": applied}))
"""


def _churn(how: str, **env: str) -> dict:
    base = {key: value for key, value in os.environ.items() if key not in ENVIRONMENT and key != OPT_OUT}
    done = subprocess.run(
        [sys.executable, "-c", CHURN, how], env={**base, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _huge_pages_always() -> bool:
    """Whether the kernel backs large allocations with 2 MiB pages unasked (then the default
    allocator's churn costs a few faults per allocation, and there is nothing to count)."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's settings: Linux only")
@pytest.mark.skipif(_huge_pages_always(), reason="transparent huge pages 'always': no 4 KiB refaulting to count")
def test_settings_from_the_environment_or_mallopt_stop_the_refaulting():
    default = _churn("none")["faults"]
    from_environment = _churn("none", **ENVIRONMENT)["faults"]
    by_mallopt = _churn("mallopt")
    opted_out = _churn("mallopt", **{OPT_OUT: "0"})
    # 40 x 48 MiB of 4 KiB pages is about 492,000 faults when each allocation is fresh memory.
    assert default > 400_000
    assert from_environment < default / 10
    assert by_mallopt["applied"] is True and by_mallopt["faults"] < default / 10
    assert opted_out["applied"] is False and opted_out["faults"] > default / 2


def test_a_users_own_values_win_and_the_opt_out_leaves_glibc_alone(monkeypatch):
    for key in ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv(OPT_OUT, raising=False)
    assert allocator_environment() == ENVIRONMENT
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    assert set(allocator_environment()) == {"MALLOC_MMAP_THRESHOLD_"}
    monkeypatch.setenv(OPT_OUT, "0")
    assert allocator_environment() == {}
