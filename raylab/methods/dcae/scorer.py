"""A trained DCAE (or plain autoencoder) as a self-contained novelty scorer and MLflow model.

The scorer folder holds the network's weights (``network.safetensors``, including the
discriminator's calibrated feature scales), the settings that rebuild it, the score space
the method uses (discriminator features for DCAE, pixels for the plain AE and
``dcae_pixel_metric``) and how an image enters the network (colour mode and side, as the
job decoded its corpus). The decision threshold is the score that maximised F1 for
"novel" on the run's test split, comparable across runs, to be recalibrated before use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raylab.deploy.scorer_folder import finish_folder, finite, image_signature, log_scorer, read_folder

if TYPE_CHECKING:
    import pandas as pd

    from raylab.methods.dcae.config import NetworkConfig, TrainedVariant
    from raylab.methods.dcae.model import DCAE
    from raylab.tracking.mlflow_conventions import TrackedRun

FORMAT = "raylab-novelty-scorer"
VERSION = 1
NETWORK_FILE = "network.safetensors"


def save_novelty_scorer(
    directory: Path,
    model: DCAE,
    *,
    network: NetworkConfig,
    variant: TrainedVariant,
    space: str,
    color: str,
    channels: int,
    image_size: int,
    threshold: float,
    class_name: str,
    metrics: dict[str, float],
) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / NETWORK_FILE))
    info = {
        "format": FORMAT,
        "version": VERSION,
        "network": dataclasses.asdict(network),
        "variant": dataclasses.asdict(variant),
        "channels": channels,
        "image_size": image_size,
        "color": color,
        "score_space": space,
        "threshold": threshold,
        "normal_class": class_name,
        "metrics": metrics,
    }
    return finish_folder(directory, info)


class NoveltyScorer:
    """A novelty scorer folder loaded: encoded images in, novelty scores and decisions out."""

    def __init__(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        from raylab.methods.dcae.config import NetworkConfig, TrainedVariant
        from raylab.methods.dcae.training import build_model

        directory = Path(directory)
        self.info = info = read_folder(directory, FORMAT, VERSION)
        network = NetworkConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["network"].items()})
        self.model = build_model(network, TrainedVariant(**info["variant"]), info["channels"], info["image_size"])
        self.model.load_state_dict(load_file(str(directory / NETWORK_FILE)), strict=True)
        self.model.eval()
        self.threshold = finite(info["threshold"])

    def pixels(self, images: Sequence[bytes], sample_ids: Sequence[str]) -> np.ndarray:
        """uint8 (N, C, S, S), decoded and resized as the job decoded its corpus."""
        from raylab.tasks.one_class.protocol import decode_chw

        side, color = self.info["image_size"], self.info["color"]
        return np.stack(
            [decode_chw(data, sample, color, side) for data, sample in zip(images, sample_ids, strict=True)]
        )

    def score(self, images: Sequence[bytes], sample_ids: Sequence[str] | None = None) -> np.ndarray:
        from raylab.methods.dcae.training import score_images

        if not images:
            raise ValueError("no images to score")
        ids = list(sample_ids) if sample_ids is not None else [f"image {i}" for i in range(len(images))]
        return score_images(self.model, self.pixels(images, ids), self.info["score_space"])

    def frame(self, scores: np.ndarray) -> pd.DataFrame:
        import pandas as pd

        scores = np.asarray(scores, dtype=np.float64)
        return pd.DataFrame({"novelty_score": scores, "is_novel": scores >= self.threshold})


def log_novelty_model(
    run: TrackedRun,
    model: DCAE,
    *,
    method: str,
    network: NetworkConfig,
    variant: TrainedVariant,
    space: str,
    color: str,
    test_images: np.ndarray,
    test_scores: np.ndarray,
    test_novel: np.ndarray,
    class_name: str,
    metrics: dict[str, float],
    scratch: Path,
) -> str:
    """Log one method's trained network as the MLflow model ``model-<method>`` attached to ``run``.

    ``test_images``: the uint8 (N, C, S, S) test images the scores came from (the first is
    the model's input example, encoded losslessly as PNG).
    """
    from raylab.data.images import encode_png
    from raylab.eval.anomaly import best_f1_threshold

    _, threshold = best_f1_threshold(test_novel.astype(int), test_scores)
    channels, image_size = int(test_images.shape[1]), int(test_images.shape[2])
    folder = save_novelty_scorer(
        scratch / f"scorer-{method}",
        model,
        network=network,
        variant=variant,
        space=space,
        color=color,
        channels=channels,
        image_size=image_size,
        threshold=threshold,
        class_name=class_name,
        metrics=metrics,
    )
    first = test_images[0]
    example_image = encode_png(first[0] if channels == 1 else first.transpose(1, 2, 0))
    signature = image_signature({"novelty_score": "double", "is_novel": "boolean"})
    return log_scorer(
        run,
        folder,
        name=f"model-{method}",
        model_file=Path(__file__).with_name("scorer_pyfunc.py"),
        signature=signature,
        example_image=example_image,
        metadata={"normal_class": class_name, "method": method},
    )
