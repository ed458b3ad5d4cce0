"""ALSUV: StyleGAN2 checkpoints, latent searches, selection, face checks, encoders, Ray Train, the job."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from raylab.methods.alsuv.attack import METHODS, pseudo_target_select, run_attack, select_outputs
from raylab.methods.alsuv.config import (
    AttackConfig,
    EncoderConfig,
    EncoderTrainConfig,
    FaceCropConfig,
    GanTrainConfig,
    InversionConfig,
)
from raylab.methods.alsuv.faces import NotAFaceError, check_face_like
from raylab.methods.alsuv.inversion import invert_image, invert_targets, pixel_errors
from raylab.methods.alsuv.model.encoders import FaceEncoder, build_backbone, load_mobilefacenet, make_encoder
from raylab.methods.alsuv.model.stylegan2 import (
    Generator,
    GeneratorConfig,
    infer_config,
    load_rosinality,
    save_rosinality,
)
from raylab.methods.alsuv.search import FaceRenderer, SearchBatch, latent_search
from raylab.methods.alsuv.verdict import informative_verdict

TINY = GeneratorConfig(size=8, style_dim=16, n_mlp=2, channel_multiplier=1, channel_base=64, channel_max=16)
TINY_ENCODER = EncoderConfig(kind="irse", input_size=(8, 8), embedding_dim=8, layers=(1, 1), width_multiplier=0.125)


def _tiny_renderer(seed: int = 0) -> FaceRenderer:
    torch.manual_seed(seed)
    generator = Generator(TINY)
    return FaceRenderer(generator, generator.mean_latent(256), truncation=0.8, crop=FaceCropConfig(1.0, 0.0))


def _tiny_encoder(seed: int = 1, name: str = "source", config: EncoderConfig = TINY_ENCODER) -> FaceEncoder:
    torch.manual_seed(seed)
    encoder = FaceEncoder(build_backbone(config), config, name).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


# ------------------------------------------------------------------------ StyleGAN2


def test_rosinality_layout_keys_and_shapes():
    """The state dict uses the rosinality/stylegan2-pytorch names (what FFHQ checkpoints contain)."""
    state = Generator(TINY).state_dict()
    expected = {f"style.{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    expected |= {
        "input.input",
        "to_rgb1.bias",
        "to_rgb1.conv.weight",
        "to_rgb1.conv.modulation.weight",
        "to_rgb1.conv.modulation.bias",
    }
    expected |= {
        f"conv1.{p}"
        for p in ("conv.weight", "conv.modulation.weight", "conv.modulation.bias", "noise.weight", "activate.bias")
    }
    for j in range(TINY.log_size - 2):  # one upsampling conv pair and one ToRGB per resolution above 4
        for k in (2 * j, 2 * j + 1):
            expected |= {
                f"convs.{k}.{p}"
                for p in (
                    "conv.weight",
                    "conv.modulation.weight",
                    "conv.modulation.bias",
                    "noise.weight",
                    "activate.bias",
                )
            }
        expected |= {f"convs.{2 * j}.conv.blur.kernel", f"to_rgbs.{j}.upsample.kernel", f"to_rgbs.{j}.bias"}
        expected |= {f"to_rgbs.{j}.conv.{p}" for p in ("weight", "modulation.weight", "modulation.bias")}
    expected |= {f"noises.noise_{i}" for i in range(TINY.num_layers)}
    assert set(state) == expected
    assert state["convs.0.conv.weight"].shape == (1, 8, 16, 3, 3)  # (1, out, in, k, k): 16 at 4 px, 8 at 8 px
    assert state["noises.noise_2"].shape == (1, 1, 8, 8)
    assert TINY.n_latent == 4


def test_ffhq_config_f_shapes_are_inferred():
    """The 256 px config-f table (512 up to 64 px, then 256, 128) round-trips through infer_config."""
    with torch.device("meta"):
        state = Generator(GeneratorConfig()).state_dict()
    config = infer_config(state)
    assert config.size == 256 and config.style_dim == 512 and config.n_mlp == 8 and config.n_latent == 14
    assert [config.channels(2**i) for i in range(2, 9)] == [512, 512, 512, 512, 512, 256, 128]


def test_loaded_checkpoint_reproduces_saved_output(tmp_path):
    torch.manual_seed(3)
    generator = Generator(TINY).eval()
    for name, param in generator.named_parameters():
        if name.endswith("noise.weight"):  # zero at initialisation; make the fixed noise matter
            param.data.fill_(0.5)
    latent_avg = generator.mean_latent(128)
    with torch.no_grad():
        w = generator.broadcast(
            generator.mapping(torch.randn(3, TINY.style_dim, generator=torch.Generator().manual_seed(7)))
        )
        saved = generator.synthesis(generator.truncate(w, 0.8, latent_avg), noise_mode="const")
    path = save_rosinality(tmp_path / "g.pt", generator, latent_avg=latent_avg)
    torch.save({"w": w, "image": saved}, tmp_path / "reference.pt")
    del generator
    loaded, loaded_avg = load_rosinality(path)  # architecture inferred from the weights
    reference = torch.load(tmp_path / "reference.pt")
    with torch.no_grad():
        again = loaded.synthesis(loaded.truncate(reference["w"], 0.8, loaded_avg), noise_mode="const")
    assert loaded.config == TINY
    assert torch.equal(again, reference["image"])
    # Random noise changes the image, so the const path is what was checked.
    with torch.no_grad():
        assert not torch.equal(loaded.synthesis(reference["w"], noise_mode="random"), loaded.synthesis(reference["w"]))


def test_the_dry_runs_generator_estimate_is_the_file_the_job_logs(tmp_path):
    """The CPU size trains its generator and logs the rosinality file; the dry run counts it on
    the meta device, and the file is those bytes plus its container's few keys."""
    from raylab.methods.alsuv.config import cpu_config
    from raylab.step_memory import state_bytes

    model = cpu_config().generator.model
    estimate = state_bytes(lambda: Generator(model))
    written = save_rosinality(tmp_path / "g.pt", Generator(model), latent_avg=torch.zeros(model.style_dim))
    assert 0.95 * written.stat().st_size <= estimate <= written.stat().st_size


def test_bad_generator_checkpoints_are_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_rosinality(junk)
    torch.save({"d": {}}, tmp_path / "no_g.pt")
    with pytest.raises(KeyError, match="g_ema"):
        load_rosinality(tmp_path / "no_g.pt")
    state = Generator(TINY).state_dict()
    state["input.input"] = torch.zeros(1, 8, 4, 4)
    torch.save({"g_ema": state}, tmp_path / "bad_shape.pt")
    with pytest.raises(ValueError, match="bad_shape.pt"):
        load_rosinality(tmp_path / "bad_shape.pt", TINY)


# ------------------------------------------------------------------------ searches


def test_averaged_latent_is_the_mean_of_the_recorded_iterates():
    renderer, source = _tiny_renderer(), _tiny_encoder()
    config = AttackConfig(num_searches=3, searches_per_task=3, iterations=10, top_k=2)
    target = torch.randn(8, generator=torch.Generator().manual_seed(0))
    batch = latent_search(renderer, source, target, renderer.initial_latents(3, seed=0), config, record=True)
    assert batch.history.shape == (10, 3, TINY.n_latent, TINY.style_dim)
    assert config.averaged_iterates == 7 and config.decay_iteration == 5
    torch.testing.assert_close(batch.averaged, batch.history[-7:].mean(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(batch.last, batch.history[-1])
    assert not torch.allclose(batch.averaged, batch.last)
    # The optimisation moves towards the target: the last iterate's cosine beats the start's.
    with torch.no_grad():
        start = torch.nn.functional.cosine_similarity(
            source(renderer(renderer.generator.broadcast(renderer.initial_latents(3, 0)))), target[None]
        )
    assert float(batch.cosine_last.mean()) > float(start.mean())


def _pixel_encoder() -> FaceEncoder:
    """Validation 'encoder' whose embedding is a canvas's top-left RGB value (flip-invariant on flat images)."""

    class TopLeft(nn.Module):
        def forward(self, x):
            return x[:, :, 0, 0]

    return FaceEncoder(TopLeft(), EncoderConfig(input_size=(4, 4), embedding_dim=3), "pixels").eval()


def test_pseudo_target_picks_the_planted_candidate():
    colours = torch.tensor(
        [
            [0.0, 0.0, 1.0],  # 0: low source score
            [1.0, 0.0, 0.0],  # 1: best by source, far from the others
            [0.0, 1.0, 0.0],  # 2: low source score
            [0.6, 0.6, 0.0],  # 3: planted: closest to the mean of the top 3
            [0.0, 1.0, 0.1],  # 4: in the top 3
            [0.5, 0.5, 0.0],  # 5: would be closest to that mean too, but it is not in the top 3
        ]
    )
    canvas = colours[:, :, None, None].expand(-1, -1, 4, 4).contiguous()
    source_cosine = torch.tensor([0.1, 0.9, 0.2, 0.7, 0.6, 0.3])
    assert pseudo_target_select(canvas, source_cosine, _pixel_encoder(), top_k=3) == 3
    assert pseudo_target_select(canvas, source_cosine, _pixel_encoder(), top_k=1) == 1  # k = 1 is best-by-source
    # Through select_outputs: alsuv (averaged + pseudo target), best_by_source and single_search differ as planted.
    batch = SearchBatch(
        last=torch.zeros(6, 1),
        averaged=torch.zeros(6, 1),
        canvas_last=canvas.flip(0),
        canvas_averaged=canvas,
        cosine_last=source_cosine.flip(0),
        cosine_averaged=source_cosine,
    )
    chosen = select_outputs(batch, _pixel_encoder(), AttackConfig(num_searches=6, top_k=3))
    assert set(chosen) == set(METHODS)
    assert chosen["alsuv"].search_index == 3
    assert chosen["best_by_source"].search_index == 1
    assert chosen["no_averaging"].search_index == 2  # the same planted case, reversed
    assert chosen["single_search"].search_index == 0


def test_wrong_embedding_size_is_a_clear_error(ray_session):
    renderer, source = _tiny_renderer(), _tiny_encoder()
    config = AttackConfig(num_searches=2, searches_per_task=1, iterations=2, top_k=1)
    with pytest.raises(ValueError, match="512.*8-d"):
        latent_search(renderer, source, torch.randn(512), renderer.initial_latents(2, 0), config)
    with pytest.raises(ValueError, match=r"target embedding 0 has shape \(7,\)"):
        run_attack(torch.randn(2, 7), renderer, source, _tiny_encoder(2), config, seed=0)
    targets = torch.randn(2, 8)
    targets[1] = 0.0
    with pytest.raises(ValueError, match="target embedding 1 is all zeros"):
        run_attack(targets, renderer, source, _tiny_encoder(2), config, seed=0)


# ------------------------------------------------------------------------ the pixel-inversion ceiling and the verdict


def test_pixel_inversion_recovers_a_face_the_generator_can_render(ray_session):
    """A face the generator itself rendered is within its reach: inverting it from other starts brings the
    pixel error far below the starts' own, and the Ray path keeps each target's best start whatever the packing."""
    renderer = _tiny_renderer()
    with torch.no_grad():
        faces = renderer(renderer.generator.broadcast(renderer.initial_latents(2, seed=99)))
    config = InversionConfig(searches=4, steps=60, lr=0.05, searches_per_task=4)
    starts = renderer.initial_latents(4, seed=0)
    with torch.no_grad():
        before = pixel_errors(renderer(renderer.generator.broadcast(starts)), faces[0])
    canvas, errors = invert_image(renderer, faces[0], starts, config)
    assert canvas.shape == (4, 3, 8, 8) and errors.shape == (4,)
    assert float(errors.min()) < 0.25 * float(before.min())
    torch.testing.assert_close(errors, pixel_errors(canvas, faces[0]))

    together = invert_targets(faces.numpy(), renderer, config, seed=0)
    apart = invert_targets(faces.numpy(), renderer, dataclasses.replace(config, searches_per_task=1), seed=0)
    assert [inv.start for inv in together] == [inv.start for inv in apart]
    assert together[0].start == int(torch.argmin(errors)) and together[0].pixel_mse == pytest.approx(
        float(errors.min()), rel=1e-4
    )
    for a, b in zip(together, apart, strict=True):
        np.testing.assert_allclose(a.canvas, b.canvas, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, 8, 8\) canvas, got \(3, 16, 16\)"):
        invert_image(renderer, torch.zeros(3, 16, 16), starts, config)


def _rows(encoder: str, type1: dict[str, list[float]]) -> list[dict]:
    """Summary-like rows: one per method and seed, with the given type-1 values."""
    return [
        {"method": method, "encoder": encoder, "seed": seed, "metrics": {"type1_far1e-2": value, "type1_far1e-3": 0.0}}
        for method, values in type1.items()
        for seed, value in enumerate(values)
    ]


def test_verdict_names_the_ceiling_and_the_floor():
    rule = {"encoder": "mobilefacenet", "metric": "type1_far1e-2", "ceiling": 0.5}
    attacks_zero = {m: [0.0, 0.0] for m in METHODS}
    # The audited case: the ceiling itself is 0 on the real encoder, every attack too.
    low = informative_verdict(
        _rows("mobilefacenet", {**attacks_zero, "pixel_inversion": [0.0, 0.1]})
        + _rows("resnet10t", {**{m: [0.9, 0.9] for m in METHODS}, "pixel_inversion": [1.0, 1.0]}),
        **rule,
    )
    assert low["informative"] is False
    assert (
        "only 0.050 type1_far1e-2 on mobilefacenet (< 0.5)" in low["reason"]
        and "every attack method is at 0" in low["reason"]
    )
    # A high ceiling but attacks all at the floor: still nothing to compare.
    floor = informative_verdict(_rows("mobilefacenet", {**attacks_zero, "pixel_inversion": [0.8, 0.9]}), **rule)
    assert (
        floor["informative"] is False
        and "every attack method is at 0" in floor["reason"]
        and "pixel inversion" not in floor["reason"]
    )
    # A ceiling just under the gate with attacks above 0: the ceiling alone decides.
    under = informative_verdict(
        _rows("mobilefacenet", {**{m: [0.1, 0.2] for m in METHODS}, "pixel_inversion": [0.5, 0.4]}), **rule
    )
    assert under["informative"] is False and "0.450" in under["reason"] and "every attack" not in under["reason"]
    # Both gates passed: informative, the numbers named.
    ok = informative_verdict(
        _rows("mobilefacenet", {"alsuv": [0.3, 0.2], "single_search": [0.0, 0.0], "pixel_inversion": [0.6, 0.5]}),
        **rule,
    )
    assert (
        ok["informative"] is True and "pixel_inversion reaches 0.550" in ok["reason"] and "alsuv 0.250" in ok["reason"]
    )
    # No ceiling row, or no rows on the encoder at all: not informative, said so.
    assert "no pixel_inversion row" in informative_verdict(_rows("mobilefacenet", {"alsuv": [0.3]}), **rule)["reason"]
    assert (
        informative_verdict(_rows("resnet10t", {"alsuv": [0.3], "pixel_inversion": [1.0]}), **rule)["informative"]
        is False
    )


# ------------------------------------------------------------------------ faces and encoders


@pytest.mark.shared_data
def test_face_check_rejects_non_faces_and_accepts_orl(shared_data):
    face = (shared_data / "orl_faces" / "s1" / "1.pgm").read_bytes()
    check_face_like(face, sample="s1/1.pgm")
    rng = np.random.default_rng(0)
    with pytest.raises(NotAFaceError, match="blank.pgm.*blank"):
        check_face_like(np.zeros((3, 32, 32)), sample="blank.pgm")
    with pytest.raises(NotAFaceError, match="noise.png: no face found"):
        check_face_like(rng.uniform(-1, 1, (112, 92)), sample="noise.png")
    import skimage.data

    brick = skimage.data.brick()[:112, :92] / 127.5 - 1
    with pytest.raises(NotAFaceError, match="brick"):
        check_face_like(brick, sample="brick")


@pytest.mark.shared_data
def test_mobilefacenet_loads_strictly_and_recognises_orl(shared_weights, shared_data):
    from raylab.eval.biometrics import verification_metrics
    from raylab.methods.alsuv.config import CanvasConfig, DataConfig, mobilefacenet_encoder
    from raylab.methods.alsuv.faces import load_protocol
    from raylab.tasks.faces.embedding import embed

    model = load_mobilefacenet(shared_weights / "mobilefacenet_casia_webface.ckpt")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(1.0e6, rel=0.05)
    encoder = make_encoder(mobilefacenet_encoder(), name="mobilefacenet", weights_root=shared_weights)
    protocol = load_protocol(DataConfig(canvas=CanvasConfig(size=32)), shared_data)
    metrics = verification_metrics(embed(encoder, protocol.held_out.images), protocol.held_out.identities)
    assert metrics["eer"] < 0.1  # a random network is near 0.5


# ------------------------------------------------------------------------ Ray Train


def test_stylegan2_and_encoder_training_on_ray_train(ray_session, tmp_path):
    from raylab.methods.alsuv.training.encoder import train_encoder
    from raylab.methods.alsuv.training.generator import train_generator

    rng = np.random.default_rng(0)
    images = np.tanh(rng.normal(size=(12, 3, 8, 8))).astype(np.float32)
    train = GanTrainConfig(
        iterations=3,
        batch_size=4,
        num_workers=2,
        checkpoint_every=3,
        d_reg_every=2,
        g_reg_every=2,
        ema_kimg=0.01,
        diffaugment=("color", "translation", "cutout"),  # R1 on step 0 runs through them too
    )
    first = train_generator(images, TINY, train, storage_path=str(tmp_path), mean_latent_samples=64)
    assert first.path.name == "generator.pt" and first.metrics["iteration"] == 2
    assert np.isfinite([first.metrics["d_loss"], first.metrics["g_loss"]]).all()
    torch.manual_seed(train.seed)
    initial = Generator(TINY)
    assert not torch.equal(
        initial.state_dict()["convs.0.conv.weight"], first.generator.state_dict()["convs.0.conv.weight"]
    )
    again = train_generator(images, TINY, train, storage_path=str(tmp_path))  # cached: no new run
    assert again.path == first.path and torch.equal(again.latent_avg, first.latent_avg)

    config = dataclasses.replace(TINY_ENCODER, train=EncoderTrainConfig(epochs=1, batch_size=4))
    trained = train_encoder(images, np.repeat(["a", "b", "c"], 4), config, storage_path=str(tmp_path))
    encoder = make_encoder(config, name="trained", state_dict=trained.state_dict)
    assert encoder(torch.from_numpy(images[:2])).shape == (2, 8)
    assert trained.metrics["epoch"] == 0 and np.isfinite(trained.metrics["loss"])


def test_margin_logits_by_hand():
    from raylab.methods.alsuv.training.encoder import MarginHead

    head = MarginHead(2, 2, loss="arcface", margin=0.5, scale=10.0)
    head.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    embedding = torch.tensor([[np.cos(0.3), np.sin(0.3)]], dtype=torch.float32) * 5  # angle 0.3 to class 0
    logits = head(embedding, torch.tensor([0]))
    torch.testing.assert_close(logits, torch.tensor([[10 * np.cos(0.8), 10 * np.sin(0.3)]], dtype=torch.float32))
    # Past theta = pi - m the ArcFace logit falls back to cos(theta) - m sin(m) (stays monotone).
    far = torch.tensor([[np.cos(2.9), np.sin(2.9)]], dtype=torch.float32)
    torch.testing.assert_close(
        head(far, torch.tensor([0]))[0, 0], torch.tensor(10 * (np.cos(2.9) - 0.5 * np.sin(0.5)), dtype=torch.float32)
    )
    cosface = MarginHead(2, 2, loss="cosface", margin=0.35, scale=10.0)
    cosface.weight.data = head.weight.data.clone()
    torch.testing.assert_close(
        cosface(embedding, torch.tensor([1])),
        torch.tensor([[10 * np.cos(0.3), 10 * (np.sin(0.3) - 0.35)]], dtype=torch.float32),
    )


# ------------------------------------------------------------------------ the job


class _Tripwire(nn.Module):
    """Wraps an unseen encoder; fails if it runs inside a Ray task or while the attack runs."""

    attacking = False

    def __init__(self, inner: FaceEncoder) -> None:
        super().__init__()
        self.inner = inner
        self.name, self.embedding_dim = inner.name, inner.embedding_dim
        self.calls = 0

    def forward(self, canvas, flip=True):
        import ray

        if ray.get_runtime_context().worker.mode != ray.SCRIPT_MODE or _Tripwire.attacking:
            raise RuntimeError(f"unseen encoder {self.inner.name} called during the attack")
        self.calls += 1
        return self.inner(canvas, flip=flip)


@pytest.mark.e2e
@pytest.mark.shared_data
def test_job_contract_and_unseen_encoders_never_called_during_search(
    ray_session, shared_data, shared_weights, tmp_path, monkeypatch
):
    # The job imports these inside its functions (its --help stays torch-free): patch them at home.
    import raylab.methods.alsuv.attack as attack_module
    import raylab.methods.alsuv.model.encoders as encoders_module
    from raylab.experiment import get_experiment, run

    # Weights made here: a tiny generator checkpoint and tiny encoders (no training in this test).
    torch.manual_seed(0)
    save_rosinality(tmp_path / "g.pt", Generator(TINY))
    for name, seed in (("source", 1), ("validation", 2), ("other", 3), ("other_b", 4)):
        torch.save(_tiny_encoder(seed).backbone.state_dict(), tmp_path / f"{name}.pt")
    encoder = {"kind": "irse", "input_size": [8, 8], "embedding_dim": 8, "layers": [1, 1], "width_multiplier": 0.125}
    config = {
        # The config describes the file it loads; its whole 8 px output is the face, on an 8 px canvas.
        "data": {"canvas": {"size": 8}},
        "generator": {
            "checkpoint": str(tmp_path / "g.pt"),
            "model": dataclasses.asdict(TINY),
            "crop": {"size_fraction": 1.0, "v_offset_fraction": 0.0},
        },
        "encoders": {
            "source": {**encoder, "weights": str(tmp_path / "source.pt")},
            "validation": {**encoder, "weights": str(tmp_path / "validation.pt")},
            # Two unseen encoders (MobileFaceNet has its own test above; here it would only cost time).
            "unseen": {
                "other": {**encoder, "weights": str(tmp_path / "other.pt")},
                "other_b": {**encoder, "weights": str(tmp_path / "other_b.pt")},
            },
        },
        "quick": {
            "max_targets": 2,
            "num_searches": 4,
            "searches_per_task": 2,
            "iterations": 2,
            "top_k": 2,
            "inversion_steps": 3,
        },
        "evaluation": {"verdict_encoder": "other"},
    }
    path = tmp_path / "alsuv.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    wires: list[_Tripwire] = []
    real_make = encoders_module.make_encoder

    def make(spec, *, name, state_dict=None, weights_root=None):
        built = real_make(spec, name=name, state_dict=state_dict, weights_root=weights_root)
        if name in config["encoders"]["unseen"]:
            wire = _Tripwire(built)
            wires.append(wire)
            return wire
        return built

    real_attack = attack_module.run_attack

    def attack(*args, **kwargs):
        _Tripwire.attacking = True
        try:
            return real_attack(*args, **kwargs)
        finally:
            _Tripwire.attacking = False

    monkeypatch.setattr(encoders_module, "make_encoder", make)
    monkeypatch.setattr(attack_module, "run_attack", attack)
    out = tmp_path / "out.json"
    result = run(
        get_experiment("alsuv_attack"),
        [
            "--dataset",
            "orl",
            "--data-root",
            str(shared_data),
            "--weights-root",
            str(shared_weights),
            "--config",
            str(path),
            "--quick",
            "--seeds",
            "0,1",
            "--summary-json",
            str(out),
        ],
    )
    assert len(wires) == 2 and all(w.calls > 0 for w in wires)  # they did evaluate, outside the attack
    summary = json.loads(out.read_text())
    assert summary["job"] == "alsuv_attack"
    assert summary["targets"] == 2 and summary["num_searches"] == 4  # the quick section's sizes
    assert result["config"].data.dataset == "orl" and result["config"].max_targets == 2
    rows = summary["rows"]
    assert {(r["method"], r["encoder"], r["seed"]) for r in rows} == {
        (m, e, s) for m in (*METHODS, "pixel_inversion") for e in ("other", "other_b") for s in (0, 1)
    }
    for row in rows:
        for key in ("type1_far1e-2", "type1_far1e-3", "type2_far1e-2", "type2_far1e-3", "rank1"):
            assert 0.0 <= row["metrics"][key] <= 1.0
        assert (
            "noise_ratio" not in row
            and row["targets"] == 2
            and -1.0 <= row["source_cosine"] <= 1.0
            and 0.0 <= row["pixel_mse"] <= 4.0
        )
        assert set(row["verification"]) == {"other", "other_b", "source", "validation"}
    assert {"alsuv", "pixel_inversion"} <= set(result["table"]["method"].tolist())
    # The verdict is the rule applied to these very rows, in the summary and on the console.
    from raylab.methods.alsuv.verdict import informative_verdict as rule

    assert summary["verdict"] == rule(rows, encoder="other", metric="type1_far1e-2", ceiling=0.5)
    assert f"verdict: {summary['verdict']['reason']}" in result["text"]
    assert result["text"].startswith(
        "ALSUV on orl: 2 targets from 10 held-out identities, N=4 searches x 2 iterations, seeds [0, 1]"
    )

    # MLflow: the shared models run (logged once, by the first seed's trial), one attack run
    # per seed and one run per method x seed, all nested under the sweep's parent run.
    import mlflow

    from raylab.testing.tracked_runs import runs_under
    from raylab.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    runs = runs_under(result["name"])
    children = sorted(r.info.run_name for r in runs)
    assert children == sorted(
        ["models", "attack-s0", "attack-s1", *(f"{m}-s{s}" for m in (*METHODS, "pixel_inversion") for s in (0, 1))]
    )
    models = next(r for r in runs if r.info.run_name == "models")
    assert models.data.metrics["generator_loaded"] == 1.0 and models.data.metrics["data/held_out_identities"] == 10
    assert {"generator_samples.png", "targets.txt", "generator.txt"} <= {
        a.path for a in client.list_artifacts(models.info.run_id)
    }
    # The search reports each seed's final cosines (no per-iteration curve): one value per
    # seed's attack run, at step 0, never the seed posing as a step.
    for seed in (0, 1):
        attack_run = next(r for r in runs if r.info.run_name == f"attack-s{seed}")
        assert attack_run.data.tags["raylab.seed"] == str(seed)
        for key in (
            "search/mean_cosine_last",
            "search/mean_cosine_averaged",
            "search/max_cosine_averaged",
            "attack_seconds",
            "inversion_seconds",
        ):
            assert [m.step for m in client.get_metric_history(attack_run.info.run_id, key)] == [0]

    # The tripwire itself works: an unseen encoder sent to a search task fails the attack.
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    renderer = _tiny_renderer()
    with pytest.raises(Exception, match="called during the attack"):
        run_attack(
            torch.randn(1, 8),
            renderer,
            _Tripwire(_tiny_encoder(4)),
            _tiny_encoder(2),
            AttackConfig(num_searches=1, searches_per_task=1, iterations=1, top_k=1),
            seed=0,
        )


def test_bad_inputs_fail_before_ray_naming_the_key(capsys, tmp_path):
    from raylab.experiment import get_experiment, run

    def refused(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            run(get_experiment("alsuv_attack"), argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "attack.iterations: expected int, got str 'notanumber'" in refused(
        ["--print-config", "--set", "attack.iterations=notanumber"]
    )
    assert "attack.top_k: must be in [1, num_searches=12]" in refused(["--print-config", "--set", "attack.top_k=13"])
    assert "data.fold: must be in [0, n_folds=4)" in refused(["--print-config", "--set", "data.fold=4"])
    # --dataset decides the face set: a config that names one is refused, not overwritten.
    assert "data.dataset is decided by each setting" in refused(["--print-config", "--set", "data.dataset=face_folder"])
    (tmp_path / "named.yaml").write_text("data: {dataset: face_folder}\n")
    assert "data.dataset is decided" in refused(["--print-config", "--config", str(tmp_path / "named.yaml")])
    assert "--seeds '0,a': 'a' is not a valid int" in refused(["--seeds", "0,a"])
    # The white-box source cannot also judge the attack: MobileFaceNet as the source with the
    # default unseen set (which holds it) is refused; the packaged real-source config moves it.
    mobilefacenet_source = (
        "encoders.source={kind: mobilefacenet, input_size: [112, 96], crop: [1.0, 0.8571428571428571], "
        "weights: mobilefacenet_casia_webface.ckpt, normalisation: mobilefacenet}"
    )
    assert "encoders.unseen: ['mobilefacenet'] is the source or validation encoder itself" in refused(
        ["--print-config", "--set", mobilefacenet_source]
    )
    # Fed another crop, it is still the same pretrained network.
    assert "is the source or validation encoder itself" in refused(
        ["--print-config", "--set", mobilefacenet_source.replace("0.8571428571428571", "1.0")]
    )
    real_source = run(get_experiment("alsuv_attack"), ["--config", "alsuv/orl_real_source", "--print-config"])["config"]
    assert real_source.encoders.source.kind == "mobilefacenet"
    assert sorted(real_source.encoders.unseen) == ["dlib_resnet", "resnet10t"]
    assert real_source.evaluation.verdict_encoder == "dlib_resnet"
    assert "generator: " in refused(
        ["--data-root", str(tmp_path), "--set", "generator.checkpoint=missing.pt", "--weights-root", str(tmp_path)]
    )
    full = run(get_experiment("alsuv_attack"), ["--profile", "full", "--config", "alsuv/ffhq256", "--print-config"])[
        "config"
    ]
    assert (
        full.attack.num_searches == 100
        and full.generator.checkpoint == "stylegan2-ffhq-256_550000.pt"
        and full.data.canvas.size == 112
    )
    assert (
        run(get_experiment("alsuv_attack"), ["--dataset", "face_folder", "--print-config"])["config"].data.dataset
        == "face_folder"
    )
