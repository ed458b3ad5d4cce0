"""``raylab serve``: a logged anomaly model behind HTTP on Ray Serve.

Routes: ``POST /predict`` (the request body is one encoded image; ``?heatmap=true`` adds a
base64 PNG overlay), ``GET /healthz``, ``GET /model`` (URI, run, metric, setting). Each
request is checked on its own before it joins a batch (empty, too many bytes or pixels, not
an image, a channel count the model was not trained on), so a bad request gets a 4xx naming
what is wrong and never fails its batch-mates. Good requests are scored in dynamic batches
(one backbone pass for up to ``max_batch_size`` images), and replicas scale between the
configured bounds on queued requests. The HTTP proxy binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

from ray import serve

# Pillow modes by channel count; the model embeds grey and colour images (grey as RGB, as in training).
ACCEPTED_MODES = {"1": 1, "L": 1, "P": 3, "I": 1, "I;16": 1, "F": 1, "RGB": 3, "YCbCr": 3}


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    min_replicas: int = 1
    max_replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"replicas: need 1 <= min ({self.min_replicas}) <= max ({self.max_replicas})")
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise ValueError(
                "batching: max_batch_size >= 1 and batch_wait_timeout_s >= 0, "
                f"got {self.max_batch_size}, {self.batch_wait_timeout_s}"
            )


class BadRequest(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_image(body: bytes, options: ServeOptions) -> None:
    """Reject what the model cannot score, with the HTTP status and a message saying why."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise BadRequest(400, "empty body: send one encoded image (PNG, JPEG, ...) as the request body")
    if len(body) > options.max_image_bytes:
        raise BadRequest(413, f"image of {len(body)} bytes exceeds the limit of {options.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(body)) as image:  # the header only: size and mode
            width, height, mode = image.width, image.height, image.mode
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadRequest(415, f"not an image Pillow can read ({error})") from None
    if width * height > options.max_image_pixels:
        raise BadRequest(
            413, f"image of {width}x{height} pixels exceeds the limit of {options.max_image_pixels} pixels"
        )
    if mode not in ACCEPTED_MODES:
        try:
            channels = Image.getmodebands(mode)
        except ValueError:  # a mode Pillow reads but cannot count
            channels = "?"
        raise BadRequest(
            422,
            f"image mode {mode} ({channels} channels): the model scores grey (1 channel) or colour (3 channels) images",
        )


def model_description(model_uri: str) -> dict[str, Any]:
    """What ``GET /model`` answers: the model, and the run, metric and setting it came from."""
    import mlflow

    info = mlflow.models.get_model_info(model_uri)
    description: dict[str, Any] = {
        "model_uri": model_uri,
        "model_id": getattr(info, "model_id", None),
        "run_id": info.run_id,
    }
    if model_uri.startswith("models:/") and "@" in model_uri:
        name, alias = model_uri.removeprefix("models:/").split("@", 1)
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
        description.update(
            {"registered_model": name, "alias": alias, "version": version.version, "tags": dict(version.tags)}
        )
    if info.run_id:
        run = mlflow.get_run(info.run_id)
        description["setting"] = {
            k.removeprefix("raylab."): v for k, v in run.data.tags.items() if k.startswith("raylab.")
        }
        description["metrics"] = dict(run.data.metrics)
    return description


@serve.deployment
class AnomalyService:
    def __init__(self, model_uri: str, tracking_uri: str | None, options: dict[str, Any]) -> None:
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.options = ServeOptions(**options)
        self.scorer = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().scorer
        self.description = model_description(model_uri)
        self.score_batch.set_max_batch_size(self.options.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(self.options.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def score_batch(self, requests: list[tuple[bytes, bool]]) -> list[dict[str, Any]]:
        from raylab.deploy.overlay import heatmap_overlay_png

        images = [image for image, _ in requests]
        with_maps = any(heatmap for _, heatmap in requests)
        prediction = self.scorer.score(images, [f"request {i}" for i in range(len(images))], with_maps=with_maps)
        answers = []
        for i, (image, heatmap) in enumerate(requests):
            score = float(prediction.image_scores[i])
            answer = {
                "image_score": score,
                "is_anomalous": bool(score >= self.scorer.threshold),
                "threshold": self.scorer.threshold,
            }
            if heatmap:
                png = heatmap_overlay_png(image, prediction.maps[i], self.scorer.threshold, sample=f"request {i}")
                answer["heatmap_png_base64"] = base64.b64encode(png).decode()
            answers.append(answer)
        return answers

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/") or "/"
        if request.method == "GET" and path == "/healthz":
            return JSONResponse({"status": "ok"})
        if request.method == "GET" and path == "/model":
            return JSONResponse(json.loads(json.dumps(self.description, default=str)))
        if request.method == "POST" and path == "/predict":
            body = await request.body()
            try:
                check_image(body, self.options)
            except BadRequest as error:
                return JSONResponse({"error": str(error)}, status_code=error.status)
            heatmap = request.query_params.get("heatmap", "false").lower() in ("1", "true", "yes")
            return JSONResponse(await self.score_batch((body, heatmap)))
        return JSONResponse(
            {"error": f"no route {request.method} {path}: use POST /predict, GET /healthz or GET /model"},
            status_code=404,
        )


def start(model_uri: str, options: ServeOptions, *, app_name: str = "raylab") -> str:
    """Deploy ``model_uri`` on the current (or a new local) Ray; returns the service's base URL."""
    import mlflow

    from raylab.experiment.session import init_ray
    from raylab.tracking.mlflow_conventions import tracking_uri

    mlflow.models.get_model_info(model_uri)  # a wrong URI fails here, before Ray starts
    init_ray()
    serve.start(http_options={"host": options.host, "port": options.port})
    autoscaling = None
    if options.max_replicas > options.min_replicas:
        autoscaling = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.max_batch_size,
        }
    deployment = AnomalyService.options(
        num_replicas=None if autoscaling else options.min_replicas,
        autoscaling_config=autoscaling,
        max_ongoing_requests=4 * options.max_batch_size,
        ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica},
    )
    serve.run(
        deployment.bind(model_uri, tracking_uri(), asdict(options)), name=app_name, route_prefix="/", blocking=False
    )
    return f"http://{options.host}:{options.port}"
