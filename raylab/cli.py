"""The ``raylab`` command: list what is registered, open the MLflow UI, run an experiment by name."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raylab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("datasets", help="list the registered datasets")
    commands.add_parser("jobs", help="list the registered experiments (the jobs `raylab run` and jobs/*.py run)")
    ui = commands.add_parser("ui", help="open the MLflow UI on raylab's tracking store (bound to 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 exposes the UI to the network")
    report = commands.add_parser("report", help="write a self-contained HTML comparison of a sweep's MLflow runs")
    report.add_argument("experiment", help="experiment name, e.g. meds_sweep or raylab/meds_sweep")
    report.add_argument("-o", "--output", default=None, help="HTML file to write (default: report-<experiment>.html)")
    report.add_argument("--run", default=None, help="parent run name or id of the sweep (default: the latest sweep)")
    report.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    run = commands.add_parser("run", help="run an experiment by name: raylab run meds_sweep --quick")
    run.add_argument("job", help="experiment name (see `raylab jobs`)")
    run.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "datasets":
        import raylab.data.adapters  # noqa: F401  (registers the adapters)
        from raylab.data import DATASETS

        print("\n".join(DATASETS.names()))
    elif args.command == "jobs":
        from raylab.experiment import experiment_names

        print("\n".join(experiment_names()))
    elif args.command == "ui":
        from raylab.tracking import tracking_uri

        return subprocess.call(ui_command(tracking_uri(), args.port, args.host))
    elif args.command == "report":
        from raylab.report.html import write_report
        from raylab.tracking import tracking_uri

        uri = args.tracking_uri or tracking_uri()
        output = args.output or f"report-{args.experiment.replace('/', '_')}.html"
        try:
            print(write_report(args.experiment, output, parent=args.run, tracking_uri=uri))
        except LookupError as error:
            parser.exit(2, f"raylab report: {error}\n")
    elif args.command == "run":
        from raylab.experiment import experiment_names
        from raylab.experiment import main as run_experiment

        if args.job not in experiment_names():
            parser.error(f"no experiment {args.job!r}; known: {', '.join(experiment_names())}")
        sys.argv = [f"raylab run {args.job}", *args.args]
        run_experiment(args.job, list(args.args))
    return 0


def ui_command(store: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """``mlflow ui`` on raylab's store, bound to loopback unless another host is asked for."""
    beside = Path(sys.executable).parent / "mlflow"
    mlflow = str(beside) if beside.exists() else "mlflow"
    return [mlflow, "ui", "--backend-store-uri", store, "--host", host, "--port", str(port)]


if __name__ == "__main__":
    sys.exit(main())
