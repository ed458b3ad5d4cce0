"""ALSUV's paper-size config (``alsuv/ffhq256``) end to end at its smoke budget.

A random StyleGAN2 FFHQ-256 config-f in the rosinality training layout, a random ArcFace
IR-100 in insightface's ``backbone.pth`` layout and a random 512-d Swin-T in timm's layout
stand in for the user's files (``raylab.testing.random_weights.smoke_weight_arguments``), the
real MobileFaceNet and ORL faces are used as they are; the config is run unchanged but for
where the weights are and how the searches are packed into Ray tasks. The metrics of random
weights mean nothing: what counts is that every stage fits (the 192 px face crop meets the
112 px canvas, the loaded encoders embed it at 112 and 224 px, the unseen ResNet-50 trains,
the figures have one cell size) and the job reaches its summary.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _artifact(client, run_id: str, name: str, folder: Path) -> Path:
    return Path(client.download_artifacts(run_id, name, str(folder)))


@pytest.mark.full_size_smoke
@pytest.mark.timeout(1800)
@pytest.mark.shared_data
def test_ffhq256_smoke_reaches_a_summary_with_one_face_size(ray_session, shared_data, shared_weights, tmp_path):
    import mlflow

    from raylab.experiment import get_experiment, run
    from raylab.methods.alsuv.report import GAP, LABEL_HEIGHT, cell_side, grid_size
    from raylab.testing.random_weights import smoke_weight_arguments
    from raylab.testing.tracked_runs import runs_under
    from raylab.tracking import tracking_uri

    out = tmp_path / "summary.json"
    started = time.monotonic()
    result = run(
        get_experiment("alsuv_attack"),
        [
            "--profile",
            "full",
            "--config",
            "alsuv/ffhq256",
            "--smoke",
            "--data-root",
            str(shared_data),
            "--weights-root",
            str(shared_weights),
            *smoke_weight_arguments("alsuv/ffhq256", tmp_path / "weights"),
            # Packing only: searches are independent, so two tasks of five give the results of one of ten.
            "--set",
            "attack.searches_per_task=5",
            "--summary-json",
            str(out),
        ],
    )
    print(f"alsuv/ffhq256 smoke: {time.monotonic() - started:.0f} s")

    config = result["config"]
    assert config.generator.model.size == 256 and config.generator.face_side == 192 and config.face_size == 112
    assert config.encoders.source.kind == "iresnet" and config.encoders.source.layers == (
        3,
        13,
        30,
        3,
    )  # architecture untouched
    assert config.encoders.validation.timm_name == "swin_tiny_patch4_window7_224" and config.attack.top_k == 10
    summary = json.loads(out.read_text())
    assert summary["targets"] == 1 and summary["num_searches"] == 10
    assert {row["encoder"] for row in summary["rows"]} == {"mobilefacenet", "dlib_resnet", "resnet50"}
    for row in summary["rows"]:
        assert all(
            math.isfinite(row["metrics"][key])
            for key in ("type1_far1e-2", "type1_far1e-3", "rank1", "mean_type1_cosine")
        )
        assert math.isfinite(row["source_cosine"])

    client = mlflow.MlflowClient(tracking_uri())
    runs = {r.info.run_name: r for r in runs_under(result["name"])}
    cell = cell_side(112)
    grid = Image.open(_artifact(client, runs["attack-s0"].info.run_id, "reconstructions_s0.png", tmp_path))
    grid.load()
    assert grid.size == grid_size(5, 1, 112)  # target + four methods, one row
    pixels = np.asarray(grid.convert("RGB"))
    for column in range(5):  # the gap right of every cell is untouched: no face spilled over it
        gap = pixels[LABEL_HEIGHT:, column * (cell + GAP) + cell : (column + 1) * (cell + GAP)]
        assert (gap == 255).all()
    samples = Image.open(_artifact(client, runs["models"].info.run_id, "generator_samples.png", tmp_path))
    assert samples.size == (4 * cell, 2 * cell)


def test_face_sizes_are_reconciled_before_ray_starts(capsys, tmp_path):
    """A canvas the face crop cannot fill, or a checkpoint the config does not describe, fails naming the key."""
    import torch

    from raylab.experiment import get_experiment, run
    from raylab.methods.alsuv.config import FaceCropConfig
    from raylab.methods.alsuv.model.stylegan2 import Generator, GeneratorConfig, save_rosinality
    from raylab.methods.alsuv.search import FaceRenderer

    def refused(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            run(get_experiment("alsuv_attack"), argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    full = ["--profile", "full", "--config", "alsuv/ffhq256"]
    assert "data.canvas.size: is 224 but the generator's face crop is only 192 px" in refused(
        [*full, "--print-config", "--set", "data.canvas.size=224"]
    )
    assert "generator.model.size: is 32 but data.canvas.size is 64" in refused(
        ["--print-config", "--set", "data.canvas.size=64"]
    )
    # The file's shapes, not its name, say what it holds: an 8 px generator under the 256 px config.
    small = GeneratorConfig(size=8, style_dim=16, n_mlp=2, channel_multiplier=1, channel_base=64, channel_max=16)
    save_rosinality(tmp_path / "stylegan2-ffhq-256_550000.pt", Generator(small))
    for name in ("mobilefacenet_casia_webface.ckpt", "ms1mv3_arcface_r100_backbone.pth", "swin_tiny_face_512.pth"):
        (tmp_path / name).write_bytes(b"")  # only the encoders' files' presence is checked before Ray
    error = refused([*full, "--dry-run", "--data-root", str(tmp_path), "--weights-root", str(tmp_path)])
    assert "generator.model:" in error and "holds a 8 px generator" in error

    # The renderer brings the face crop to the canvas size, and never up.
    torch.manual_seed(0)
    generator = Generator(small)
    crop = FaceCropConfig(0.75, 0.0)
    renderer = FaceRenderer(generator, generator.mean_latent(64), truncation=0.8, crop=crop, size=4)
    with torch.no_grad():
        faces = renderer(generator.broadcast(renderer.initial_latents(2, seed=0)))
    assert faces.shape == (2, 3, 4, 4) and float(faces.min()) == -1.0 and float(faces.max()) == 1.0
    with pytest.raises(ValueError, match="6 px face crop"):
        FaceRenderer(generator, generator.mean_latent(64), truncation=0.8, crop=crop, size=8)
