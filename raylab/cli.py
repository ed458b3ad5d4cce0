"""The ``raylab`` command: list what is registered, open the MLflow UI, run a job by name."""

from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
from pathlib import Path

JOBS_DIR = Path(__file__).resolve().parent.parent / "jobs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raylab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("datasets", help="list the registered datasets")
    commands.add_parser("jobs", help="list the runnable jobs")
    ui = commands.add_parser("ui", help="open the MLflow UI on raylab's tracking store")
    ui.add_argument("--port", type=int, default=5000)
    run = commands.add_parser("run", help="run a job by name: raylab run meds_sweep --quick")
    run.add_argument("job")
    run.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "datasets":
        import raylab.data.adapters  # noqa: F401  (registers the adapters)
        from raylab.data import DATASETS

        print("\n".join(DATASETS.names()))
    elif args.command == "jobs":
        print("\n".join(sorted(p.stem for p in JOBS_DIR.glob("*.py"))))
    elif args.command == "ui":
        from raylab.tracking import tracking_uri

        return subprocess.call(["mlflow", "ui", "--backend-store-uri", tracking_uri(), "--port", str(args.port)])
    elif args.command == "run":
        script = JOBS_DIR / f"{args.job}.py"
        if not script.exists():
            parser.error(f"no job {args.job!r} in {JOBS_DIR}; see `raylab jobs`")
        sys.argv = [str(script), *args.args]
        runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
