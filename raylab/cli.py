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
    ui.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: the store jobs write, see `raylab report --help`)",
    )
    report = commands.add_parser("report", help="write a self-contained HTML comparison of a sweep's MLflow runs")
    report.add_argument("experiment", help="experiment name, e.g. meds_sweep or raylab/meds_sweep")
    report.add_argument("-o", "--output", default=None, help="HTML file to write (default: report-<experiment>.html)")
    report.add_argument("--run", default=None, help="parent run name or id of the sweep (default: the latest sweep)")
    report.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db or $RAYLAB_HOME/mlflow.db, "
        "else the ~/.raylab/mlflow.db that `ray job submit` jobs write; an mlruns.db of older versions beside either)",
    )
    predict = commands.add_parser(
        "predict", help="score a folder or Parquet file of images with a logged model, on Ray Data"
    )
    predict.add_argument(
        "model_uri", help="an MLflow model URI: models:/<id>, models:/<name>@<alias>, runs:/<run>/<name>"
    )
    predict.add_argument(
        "--input",
        required=True,
        help="a folder of images (searched recursively) or a .parquet file with an 'image' column",
    )
    predict.add_argument(
        "--output",
        required=True,
        help="folder for the Parquet results and overlays (a re-run skips chunks already scored)",
    )
    predict.add_argument("--actors", type=int, default=1, help="scoring actors in the pool (each loads the model once)")
    predict.add_argument(
        "--cpus-per-actor", type=float, default=1.0, help="CPUs each actor asks for (and its torch threads)"
    )
    predict.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs each actor asks for (0: score on CPU)")
    predict.add_argument("--chunk-size", type=int, default=64, help="images per result file, the unit of resuming")
    predict.add_argument(
        "--overlays", choices=("anomalous", "all", "none"), default="anomalous", help="which images get a heat-map PNG"
    )
    predict.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI the model is read from (default: raylab's store)"
    )
    serve_cmd = commands.add_parser(
        "serve", help="serve a logged model over HTTP on Ray Serve (POST /predict, GET /healthz, GET /model)"
    )
    serve_cmd.add_argument("model_uri", help="an MLflow model URI, e.g. models:/magnetic-tile@champion")
    serve_cmd.add_argument(
        "--host", default="127.0.0.1", help="interface the HTTP proxy binds; 0.0.0.0 exposes it to the network"
    )
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument("--min-replicas", type=int, default=1)
    serve_cmd.add_argument(
        "--max-replicas", type=int, default=1, help="above --min-replicas, replicas scale on queued requests"
    )
    serve_cmd.add_argument("--cpus-per-replica", type=float, default=1.0)
    serve_cmd.add_argument("--gpus-per-replica", type=float, default=0.0)
    serve_cmd.add_argument("--max-batch-size", type=int, default=8, help="images scored in one backbone pass")
    serve_cmd.add_argument(
        "--batch-wait-timeout", type=float, default=0.01, help="seconds a request waits for batch-mates"
    )
    serve_cmd.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI the model is read from (default: raylab's store)"
    )
    promote_cmd = commands.add_parser(
        "promote", help="register a sweep's best model in the MLflow Model Registry under an alias"
    )
    promote_cmd.add_argument("experiment", help="job experiment, e.g. patchcore_eval or raylab/meds_sweep")
    promote_cmd.add_argument("--metric", required=True, help="metric that ranks the runs, e.g. image_auroc")
    promote_cmd.add_argument("--mode", choices=("max", "min"), default="max")
    promote_cmd.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs with this setting tag (repeatable), e.g. noise_ratio=0.4 method=meds",
    )
    promote_cmd.add_argument(
        "--class",
        dest="class_name",
        default=None,
        help="the class whose model to register (runs hold one model per class)",
    )
    promote_cmd.add_argument("--name", required=True, help="registered model name")
    promote_cmd.add_argument("--alias", default="champion")
    promote_cmd.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: raylab's store)")
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
            options = PredictOptions(
                args.actors, args.cpus_per_actor, args.gpus_per_actor, args.chunk_size, args.overlays
            )
        except ValueError as error:
            parser.error(str(error))
        print(json.dumps(score_images(args.model_uri, args.input, args.output, options)))
    elif args.command == "serve":
        return _serve(parser, args)
    elif args.command == "promote":
        import json
        import os

        from raylab.deploy.promote import parse_filters, promote

        if args.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
        from raylab.tracking.mlflow_conventions import configure

        configure()
        try:
            where = parse_filters(args.where)
            done = promote(
                args.experiment,
                args.metric,
                name=args.name,
                alias=args.alias,
                mode=args.mode,
                where=where,
                class_name=args.class_name,
            )
        except (ValueError, LookupError) as error:
            parser.exit(2, f"raylab promote: {error}\n")
        print(json.dumps({**done.__dict__, "serve": f"raylab serve {done.registry_uri()}"}))
    elif args.command == "run":
        from raylab.experiment import experiment_names
        from raylab.experiment import main as run_experiment

        if args.job not in experiment_names():
            parser.error(f"no experiment {args.job!r}; known: {', '.join(experiment_names())}")
        sys.argv = [f"raylab run {args.job}", *args.args]
        run_experiment(args.job, list(args.args))
    return 0


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Deploy, print where, and keep serving until interrupted (then take the app down)."""
    import os
    import signal
    import threading

    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    from raylab.deploy.serving import ServeOptions, start
    from raylab.tracking.mlflow_conventions import configure

    configure()
    try:
        options = ServeOptions(
            args.host,
            args.port,
            args.min_replicas,
            args.max_replicas,
            args.cpus_per_replica,
            args.gpus_per_replica,
            args.max_batch_size,
            args.batch_wait_timeout,
        )
    except ValueError as error:
        parser.error(str(error))
    url = start(args.model_uri, options)
    # Ray installs its own SIGINT handling; ours, set after it, turns Ctrl-C or a SIGTERM
    # (a process manager's stop) into taking the app down instead of leaving it running.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(
        f"raylab serve: {args.model_uri} at {url} (POST {url}/predict, GET {url}/healthz, GET {url}/model); "
        "Ctrl-C stops it",
        file=sys.stderr,
    )
    stop.wait()
    from ray import serve

    serve.shutdown()
    return 0


def reading_stores() -> list[str]:
    """The MLflow stores ``raylab ui`` / ``raylab report`` read, best first: the explicit
    ``$MLFLOW_TRACKING_URI``; else the SQLite store a job started here writes, then the one
    that ``ray job submit`` jobs write (``~/.raylab``, see :mod:`raylab.storage`), each
    followed by the ``mlruns.db`` raylab wrote before it took MLflow's ``mlflow.db`` (so older
    runs stay reachable); only the existing ones (opening a SQLite URI creates the file), or
    the first when none exists."""
    import os

    from raylab.storage import tracking_db_candidates

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return [os.environ["MLFLOW_TRACKING_URI"]]
    candidates = tracking_db_candidates()
    existing = [db for db in candidates if db.exists()]
    ordered = existing or candidates[:1]
    if len(existing) > 1:
        print(
            f"raylab: reading {existing[0]}; runs are also in {', '.join(map(str, existing[1:]))} "
            "(choose with --tracking-uri sqlite:///PATH)",
            file=sys.stderr,
        )
    return [f"sqlite:///{db}" for db in ordered]


def ui_command(store: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """``mlflow ui`` on raylab's store, bound to loopback unless another host is asked for."""
    beside = Path(sys.executable).parent / "mlflow"
    mlflow = str(beside) if beside.exists() else "mlflow"
    return [mlflow, "ui", "--backend-store-uri", store, "--host", host, "--port", str(port)]


if __name__ == "__main__":
    sys.exit(main())
