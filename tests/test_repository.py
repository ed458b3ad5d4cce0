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


# The layers every method builds on; only methods, task families and the test helpers may
# import a method (the experiment registry names job modules as strings). Deploy is a layer
# like the others: each family or method keeps its scorer and builds it on deploy.
CONSUMERS = ("raylab/methods/", "raylab/tasks/", "raylab/testing/")


def _imported_modules(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_platform_layers_never_import_a_method_or_a_task_family():
    """Imports point down: data, features, memory, train, eval, tracking, report, deploy,
    experiment and the top-level modules know no method (imports inside functions included)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in _imported_modules(path) if name.startswith(("raylab.methods", "raylab.tasks"))
        )
        for path in sorted((ROOT / "raylab").rglob("*.py"))
        if not str(path.relative_to(ROOT)).startswith(CONSUMERS)
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, offenders
    assert _imported_modules(ROOT / "raylab/tasks/anomaly/artifacts.py")  # the scan reads real imports


def test_a_method_package_imports_no_other_method_package():
    """Methods meet in their task family (its baselines, detectors and registries), never in
    each other's packages: MeDS and TailedCore compare against the family's PatchCore."""
    methods = sorted(path.name for path in (ROOT / "raylab/methods").iterdir() if (path / "__init__.py").is_file())
    offenders = {}
    for method in methods:
        for path in sorted((ROOT / "raylab/methods" / method).rglob("*.py")):
            foreign = sorted(
                name
                for name in _imported_modules(path)
                if name.startswith("raylab.methods.") and name.split(".")[2] != method
            )
            if foreign:
                offenders[str(path.relative_to(ROOT))] = foreign
    assert len(methods) == 7, methods  # the scan sees every method package
    assert not offenders, offenders


def _reports_train_epochs(path: Path) -> bool:
    """Whether the module holds a per-worker Train loop: it reports epochs to Ray Train."""
    import ast

    return any(
        isinstance(node, ast.ImportFrom)
        and node.module in ("raylab.train", "raylab.train.harness")
        and any(alias.name == "report_epoch" for alias in node.names)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
    )


def test_every_method_package_has_the_same_rooms():
    """A newcomer finds each method's paper and results in ``README.md``, its trial in
    ``experiment.py``, and every per-worker Ray Train loop it runs in ``training`` (a module, or a
    package when the method trains more than one network, as ALSUV does)."""
    methods = sorted(path for path in (ROOT / "raylab/methods").iterdir() if (path / "__init__.py").is_file())
    missing = [
        f"{m.name}/{room}" for m in methods for room in ("README.md", "experiment.py") if not (m / room).is_file()
    ]
    assert not missing, missing
    loops = {
        str(path.relative_to(ROOT / "raylab/methods")): path.relative_to(ROOT / "raylab/methods").parts[1]
        for method in methods
        for path in sorted(method.rglob("*.py"))
        if _reports_train_epochs(path)
    }
    assert len(loops) >= 6, loops  # the scan finds the Train loops (MeDS, DCAE, CKD, NNGuide, ALSUV's two)
    outside = sorted(path for path, room in loops.items() if room not in ("training.py", "training"))
    assert not outside, outside
