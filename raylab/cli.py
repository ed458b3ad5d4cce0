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
    ui.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the store jobs write, see `raylab report --help`)")
    report = commands.add_parser("report", help="write a self-contained HTML comparison of a sweep's MLflow runs")
    report.add_argument("experiment", help="experiment name, e.g. meds_sweep or raylab/meds_sweep")
    report.add_argument("-o", "--output", default=None, help="HTML file to write (default: report-<experiment>.html)")
    report.add_argument("--run", default=None, help="parent run name or id of the sweep (default: the latest sweep)")
    report.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns.db or $RAYLAB_HOME/mlruns.db, "
        "else the ~/.raylab/mlruns.db that `ray job submit` jobs write)",
    )
    predict = commands.add_parser("predict", help="score a folder or Parquet file of images with a logged model, on Ray Data")
    predict.add_argument("model_uri", help="an MLflow model URI: models:/<id>, models:/<name>@<alias>, runs:/<run>/<name>")
    predict.add_argument("--input", required=True, help="a folder of images (searched recursively) or a .parquet file with an 'image' column")
    predict.add_argument("--output", required=True, help="folder for the Parquet results and overlays (a re-run skips chunks already scored)")
    predict.add_argument("--actors", type=int, default=1, help="scoring actors in the pool (each loads the model once)")
    predict.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each actor asks for (and its torch threads)")
    predict.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs each actor asks for (0: score on CPU)")
    predict.add_argument("--chunk-size", type=int, default=64, help="images per result file, the unit of resuming")
    predict.add_argument("--overlays", choices=("anomalous", "all", "none"), default="anomalous", help="which images get a heat-map PNG")
    predict.add_argument("--tracking-uri", default=None, help="MLflow tracking URI the model is read from (default: raylab's store)")
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
        uri = args.tracking_uri or reading_stores()[0]
        print(f"raylab ui: MLflow store {uri}", file=sys.stderr)
        return subprocess.call(ui_command(uri, args.port, args.host))
    elif args.command == "report":
        from raylab.report.html import write_report

        stores = [args.tracking_uri] if args.tracking_uri else reading_stores()
        output = args.output or f"report-{args.experiment.replace('/', '_')}.html"
        errors = []
        for uri in stores:  # the first store that has the experiment
            try:
                print(write_report(args.experiment, output, parent=args.run, tracking_uri=uri))
                break
            except LookupError as error:
                errors.append(str(error))
        else:
            parser.exit(2, "".join(f"raylab report: {error}\n" for error in errors))
    elif args.command == "predict":
        import json
        import os

        from raylab.deploy.batch import PredictOptions
        from raylab.deploy.batch import predict as score_images

        if args.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
        try:
            options = PredictOptions(args.actors, args.cpus_per_actor, args.gpus_per_actor, args.chunk_size, args.overlays)
        except ValueError as error:
            parser.error(str(error))
        print(json.dumps(score_images(args.model_uri, args.input, args.output, options)))
    elif args.command == "run":
        from raylab.experiment import experiment_names
        from raylab.experiment import main as run_experiment

        if args.job not in experiment_names():
            parser.error(f"no experiment {args.job!r}; known: {', '.join(experiment_names())}")
        sys.argv = [f"raylab run {args.job}", *args.args]
        run_experiment(args.job, list(args.args))
    return 0


def reading_stores() -> list[str]:
    """The MLflow stores ``raylab ui`` / ``raylab report`` read, best first: the explicit
    ``$MLFLOW_TRACKING_URI``; else the SQLite store a job started here writes, then the one
    that ``ray job submit`` jobs write (``~/.raylab``, see :mod:`raylab.storage`); only the
    existing ones (opening a SQLite URI creates the file), or the first when none exists."""
    import os

    from raylab.storage import tracking_db_candidates

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return [os.environ["MLFLOW_TRACKING_URI"]]
    candidates = tracking_db_candidates()
    existing = [db for db in candidates if db.exists()]
    ordered = existing or candidates[:1]
    if len(existing) > 1:
        print(f"raylab: reading {existing[0]}; runs are also in {', '.join(map(str, existing[1:]))} "
              "(choose with --tracking-uri sqlite:///PATH)", file=sys.stderr)
    return [f"sqlite:///{db}" for db in ordered]


def ui_command(store: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """``mlflow ui`` on raylab's store, bound to loopback unless another host is asked for."""
    beside = Path(sys.executable).parent / "mlflow"
    mlflow = str(beside) if beside.exists() else "mlflow"
    return [mlflow, "ui", "--backend-store-uri", store, "--host", host, "--port", str(port)]


if __name__ == "__main__":
    sys.exit(main())
