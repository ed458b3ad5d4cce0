"""The repository's promises to a newcomer: CI runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    test_commands = [c for c in _readme_commands() if c.endswith("pytest")]
    assert len(test_commands) == 1, test_commands
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_commands[0] in ci_lines


def test_readme_main_command_runs_the_flagship_job():
    main_commands = [c for c in _readme_commands() if c.startswith("python3 -m venv") and not c.endswith("pytest")]
    assert main_commands and main_commands[0].endswith("python jobs/meds_sweep.py")
    assert (ROOT / "jobs" / "meds_sweep.py").exists()
