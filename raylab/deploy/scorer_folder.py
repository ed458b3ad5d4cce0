"""What every deployable scorer shares: a folder that checks itself, and how it becomes an MLflow model.

A scorer folder holds a model's files and ``scorer.json`` (its format, version and settings);
a manifest of sizes and SHA-256 digests is written last and checked before anything is read,
so a model copied badly between stores fails naming the file instead of scoring wrongly.
Logged as an MLflow model, the folder is the model's one artifact and a ``*_pyfunc.py`` file
beside the scorer's module is its code (logged as code: loading unpickles nothing).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raylab.artefacts import verify, write_manifest

if TYPE_CHECKING:
    from raylab.tracking.mlflow_conventions import TrackedRun

SCORER_FILE = "scorer.json"


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def finish_folder(directory: Path, info: dict[str, Any]) -> Path:
    """Write ``scorer.json`` and then the manifest over every file of ``directory``."""
    (directory / SCORER_FILE).write_text(json.dumps(info, indent=2, default=_json_value))
    files = sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    write_manifest(directory, files)
    return directory


def read_folder(directory: Path, fmt: str, version: int) -> dict[str, Any]:
    """``scorer.json`` of a folder that passed its manifest check and is of the expected format."""
    verify(directory)  # every file the manifest lists: changed, truncated or missing
    info = json.loads((directory / SCORER_FILE).read_text())
    if info.get("format") != fmt or info.get("version") != version:
        raise ValueError(
            f"{directory / SCORER_FILE}: not a {fmt} v{version} folder "
            f"(format {info.get('format')!r}, version {info.get('version')!r})"
        )
    return info


def finite(value: float | None) -> float:
    return float(value) if value is not None else float("nan")


def image_signature(outputs: dict[str, str], params: dict[str, tuple[str, Any]] | None = None):
    """Input: an ``image`` column of encoded images; ``outputs``: column -> MLflow type."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema([ColSpec(kind, name) for name, kind in outputs.items()]),
        params=ParamSchema([ParamSpec(name, kind, default) for name, (kind, default) in (params or {}).items()])
        if params
        else None,
    )


def model_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in a model name (``/ : . % " '``) as ``_``."""
    return re.sub(r"[/:.%\"']", "_", name)


def log_scorer(
    run: TrackedRun,
    folder: Path,
    *,
    name: str,
    model_file: Path,
    signature,
    example_image: bytes,
    metadata: dict[str, Any],
) -> str:
    """Log ``folder`` as the MLflow model ``name`` attached to ``run``; returns its URI.

    ``model_file`` is the scorer's ``*_pyfunc.py`` beside its family's or method's scorer
    module: MLflow logs it as code and runs it on load.
    """
    import mlflow
    import pandas as pd

    import raylab
    from raylab.deploy.logged_models import attached_to, pinned_requirements
    from raylab.tracking.mlflow_conventions import git_commit

    with attached_to(run):
        info = mlflow.pyfunc.log_model(
            name=model_name(name),
            python_model=str(model_file),
            artifacts={"scorer": str(folder)},
            signature=signature,
            input_example=pd.DataFrame({"image": [example_image]}),
            pip_requirements=pinned_requirements(),
            metadata={"raylab_version": raylab.__version__, "raylab_git_commit": git_commit(), **metadata},
        )
    return info.model_uri
