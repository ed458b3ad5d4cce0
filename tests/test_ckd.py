"""CKD: shared BatchNorm, the distillation loss, pairs, evaluation, Ray Train DDP, the job."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raylab.data import load_corpus
from raylab.methods.ckd.config import VARIANTS, CKDConfig, NetworkConfig, PairConfig, ProtocolConfig, TrainConfig
from raylab.methods.ckd.evaluate import evaluate_embeddings
from raylab.methods.ckd.losses import ckd_loss, distillation_kl
from raylab.methods.ckd.model import PeriocularEncoder, build_ckd_net
from raylab.methods.ckd.pairs import PairSet, fold_roles, make_pair
from raylab.methods.ckd.training import _flipped, train_ckd

TINY = NetworkConfig(
    layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), embedding_dim=32, face_size=(16, 16), periocular_size=(8, 16)
)


def _batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g) + 1.0, torch.randn(n, 3, 8, 16, generator=g) - 1.0


def test_shared_bn_normalises_over_both_modalities() -> None:
    """The periocular path depends on the face batch exactly when BN is shared across modalities."""
    face, eyes = _batch()
    other_face = face * 3.0 + 2.0
    for name, coupled in (("ckd", True), ("f2p_only", True), ("per_modality_bn", False), ("no_sharing", False)):
        net = build_ckd_net(TINY, 5, VARIANTS[name], seed=0).train()
        with torch.no_grad():
            first = net(face, eyes).periocular_logits
            second = net(other_face, eyes).periocular_logits
        assert (not torch.allclose(first, second, atol=1e-5)) == coupled, name

    net = build_ckd_net(TINY, 5, VARIANTS["ckd"], seed=0).train()
    seen = {}
    stem_bn = net.trunk[0].bn1
    stem_bn.register_forward_hook(lambda module, inputs, output: seen.update(inputs=inputs[0], output=output))
    with torch.no_grad():
        net(face, eyes)
    face_out, eyes_out = seen["output"]
    pixels = [x.transpose(0, 1).flatten(1) for x in seen["inputs"]]
    joint_mean = torch.cat(pixels, 1).mean(1)
    torch.testing.assert_close(stem_bn.running_mean, stem_bn.momentum * joint_mean, atol=1e-5, rtol=1e-4)
    # Joint statistics: zero mean over all pixels of both streams, not per stream.
    total = torch.cat([face_out.transpose(0, 1).flatten(1), eyes_out.transpose(0, 1).flatten(1)], 1)
    assert total.mean(1).abs().max() < 1e-4
    assert eyes_out.transpose(0, 1).flatten(1).mean(1).abs().max() > 0.05


def test_variants_forward_and_encoder() -> None:
    face, eyes = _batch()
    for _name, switches in VARIANTS.items():
        net = build_ckd_net(TINY, 5, switches, seed=0)
        out = net(face if switches.use_face else None, eyes)
        assert out.periocular_logits.shape == (6, 5) and out.periocular_embedding.shape == (6, 32)
        assert (out.face_logits is not None) == switches.use_face
        net.eval()
        encoder = PeriocularEncoder(net).eval()
        torch.testing.assert_close(encoder(eyes), net.periocular_embedding(eyes))
    with pytest.raises(ValueError, match="no face branch"):
        build_ckd_net(TINY, 5, VARIANTS["periocular_only"])(face, eyes)
    encoder = PeriocularEncoder(build_ckd_net(TINY, 5, VARIANTS["ckd"], seed=0)).eval()
    torch.testing.assert_close(torch.export.export(encoder, (eyes,)).module()(eyes), encoder(eyes))


def test_kl_terms_are_zero_for_equal_logits_and_never_reach_the_teacher() -> None:
    logits = torch.randn(4, 7)
    assert float(distillation_kl(logits, logits.clone(), 2.5)) == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([0, 1, 2, 3])
    terms = ckd_loss(logits.clone(), logits.clone(), labels, VARIANTS["ckd"], 2.5)
    assert float(terms["kl_f2p"]) == pytest.approx(0.0, abs=1e-6) and float(terms["kl_p2f"]) == pytest.approx(
        0.0, abs=1e-6
    )

    student = torch.randn(4, 7, requires_grad=True)
    teacher = torch.randn(4, 7, requires_grad=True)
    loss = distillation_kl(student, teacher, 2.5)
    loss.backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0
    tau = 2.5
    p = torch.softmax(teacher.detach() / tau, 1)
    manual = tau**2 * (p * (p.log() - torch.log_softmax(student.detach() / tau, 1))).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float(manual), rel=1e-5)

    # In the full objective the face->periocular term moves only the periocular logits.
    face = torch.randn(4, 7, requires_grad=True)
    eyes = torch.randn(4, 7, requires_grad=True)
    ckd_loss(face, eyes, labels, VARIANTS["ckd"], tau)["kl_f2p"].backward()
    assert face.grad is None and eyes.grad.abs().sum() > 0
    only = ckd_loss(face, eyes, labels, VARIANTS["f2p_only"], tau)
    assert float(only["kl_p2f"].detach()) == 0.0 and float(only["kl_f2p"].detach()) > 0.0
    alone = ckd_loss(None, eyes, labels, VARIANTS["periocular_only"], tau)
    assert float(alone["loss"].detach()) == pytest.approx(float(alone["ce_periocular"].detach()))


def test_schedule_scales_the_official_milestones() -> None:
    assert TrainConfig().milestone_epochs() == (30, 60, 80)
    assert TrainConfig(epochs=30).milestone_epochs() == (10, 20, 27)
    train = TrainConfig(epochs=30, lr=0.01)
    assert (
        train.lr_at(9) == pytest.approx(0.01)
        and train.lr_at(10) == pytest.approx(0.001)
        and train.lr_at(29) == pytest.approx(1e-5)
    )


def test_eye_band_comes_from_the_same_image_and_flips_with_it() -> None:
    pixels = np.zeros((112, 92), np.uint8)
    pixels[20:70, :46] = 255  # a bright block over the whole eye band, left half only
    buffer = __import__("io").BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    face, band = make_pair(buffer.getvalue(), PairConfig(), TINY)
    assert face.shape == (3, 16, 16) and band.shape == (3, 8, 16)
    assert band[:, :, :6].mean() > 0.9 and band[:, :, 10:].mean() < -0.9  # the block fills the band's left half
    images = torch.from_numpy(np.stack([band, band]))
    flipped = _flipped(images, torch.tensor([True, False])[:, None, None, None])
    torch.testing.assert_close(flipped[0], images[0].flip(2))
    torch.testing.assert_close(flipped[1], images[1])


def test_verification_excludes_self_pairs() -> None:
    """Genuine pairs score 0, every impostor pair > 0: EER is 1 unless self-pairs sneak in."""
    a1, a2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    b1, b2 = [1.0, 1.0, 1.0], [1.0, 1.0, -2.0]
    embeddings = np.asarray([a1, a2, b1, b2])
    identities = np.asarray(["a", "a", "b", "b"])
    result = evaluate_embeddings(embeddings, identities, ProtocolConfig(gallery_draws=2, max_rank=2))
    assert result.metrics["n_genuine"] == 2 and result.metrics["n_impostor"] == 4
    assert result.metrics["eer"] == pytest.approx(1.0)
    assert result.metrics["tar_at_far1e-2"] == 0.0


def test_fold_roles_split_training_identities_and_name_short_ones(shared_data: Path) -> None:
    table = load_corpus("orl", shared_data, fold=2)
    roles = fold_roles(table, PairConfig(), TINY, val_per_identity=2, split_seed=0)
    assert (len(roles.fit), len(roles.val), len(roles.test), roles.num_classes) == (240, 60, 100, 30)
    assert not set(roles.test.identities) & set(roles.fit.identities)
    assert not set(roles.fit.sample_ids) & set(roles.val.sample_ids)
    assert set(roles.fit.labels) == set(range(30))
    with pytest.raises(ValueError, match="has 10 images: needs more than val_per_identity=10"):
        fold_roles(table, PairConfig(), TINY, val_per_identity=10, split_seed=0)


def _random_pairs(n: int, classes: int, seed: int) -> PairSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    # Class-dependent means so there is something to learn.
    faces = (rng.normal(size=(n, 3, 16, 16)) + labels[:, None, None, None] * 0.3).astype(np.float32)
    eyes = (rng.normal(size=(n, 3, 8, 16)) + labels[:, None, None, None] * 0.3).astype(np.float32)
    ids = np.asarray([f"p{c}" for c in labels])
    return PairSet(faces, eyes, labels.astype(np.int64), ids, np.asarray([f"s{i}" for i in range(n)]))


def test_ddp_two_workers_follow_the_one_worker_loss_curve(ray_session, tmp_path: Path) -> None:
    config = CKDConfig(network=TINY, train=TrainConfig(epochs=3, lr=0.01, batch_size=16, cpus_per_worker=0.99))
    fit, val = _random_pairs(64, 4, 0), _random_pairs(16, 4, 1)
    one = train_ckd(fit, val, 4, config, VARIANTS["ckd"], seed=0, num_workers=1, storage_path=str(tmp_path))
    two = train_ckd(fit, val, 4, config, VARIANTS["ckd"], seed=0, num_workers=2, storage_path=str(tmp_path))
    loss_one = np.asarray([h["loss"] for h in one.history])
    loss_two = np.asarray([h["loss"] for h in two.history])
    assert len(loss_one) == len(loss_two) == 3
    assert loss_one[-1] < loss_one[0]
    # Same pairs, same steps, gradients averaged over the two half-batches; only BatchNorm's
    # batch statistics (per worker) differ.
    np.testing.assert_allclose(loss_two, loss_one, rtol=0.1)
    assert 0 <= one.best_epoch < 3 and math.isclose(one.best_val_accuracy, max(h["val_accuracy"] for h in one.history))
    started = time.perf_counter()
    again = train_ckd(fit, val, 4, config, VARIANTS["ckd"], seed=0, num_workers=1, storage_path=str(tmp_path))
    assert time.perf_counter() - started < 10  # a finished training is reused, not rerun
    assert again.history == one.history
    for key, value in again.state_dict.items():
        torch.testing.assert_close(value, one.state_dict[key])


def _write_people(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for person, count in counts.items():
        (root / person).mkdir(parents=True)
        for k in range(count):
            Image.fromarray(rng.integers(0, 255, (56, 46), dtype=np.uint8)).save(root / person / f"{k}.png")
    return root


def _no_ray(monkeypatch) -> None:
    def refuse(**kwargs):
        raise AssertionError("Ray must not start for bad input")

    monkeypatch.setattr("raylab.experiment.session.init_ray", refuse)


def _exit_message(argv: list[str], capsys) -> str:
    """Run the job expecting a usage error (exit code 2); its stderr."""
    from raylab.experiment import get_experiment, run

    with pytest.raises(SystemExit) as exit_info:
        run(get_experiment("ckd_train"), argv)
    assert exit_info.value.code == 2, argv
    return capsys.readouterr().err


def test_job_rejects_bad_folders_before_training(tmp_path: Path, capsys, monkeypatch) -> None:
    _no_ray(monkeypatch)
    root = _write_people(tmp_path / "people", {"ann": 4, "ben": 1, "cat": 4, "dan": 4})
    assert re.search(r"ben \(1 image\)", _exit_message(["--dataset", "face_folder", "--data-root", str(root)], capsys))
    (root / "ben" / "0.png").write_bytes(b"GIF89a truncated")
    Image.fromarray(np.zeros((56, 46), np.uint8)).save(root / "ben" / "1.png")
    assert "ben/0" in _exit_message(["--dataset", "face_folder", "--data-root", str(root)], capsys)


def test_bad_options_fail_before_ray_naming_the_option(capsys, monkeypatch) -> None:
    _no_ray(monkeypatch)
    cases = [
        (["--set", "ckd.train.epochs=notanumber"], "ckd.train.epochs"),
        (["--set", "ckd.train.lr=0"], "ckd.train.lr"),
        (["--set", "protocol.folds=[5]"], "protocol.folds"),
        (["--set", "methods=[ckd, ocgan]"], "ocgan"),
        (["--set", "seeds=[0]"], None),  # a valid value: only the missing data root below stops it
        (["--folds", "0,x"], "--folds"),
        (["--folds", "0,,1"], "--folds"),
        (["--folds", "4"], "--folds"),
        (["--methods", "ckd,ocgan"], "--methods"),
        (["--seeds", "0,0"], "--seeds"),
    ]
    for extra, named in cases:
        message = _exit_message(["--dataset", "face_folder", "--data-root", "/nonexistent/people", *extra], capsys)
        assert (named or "/nonexistent/people") in message, (extra, message)


def test_profiles_and_overlays_keep_the_documented_sizes(capsys) -> None:
    """``--dataset orl`` resolves to configs/ckd/orl.yaml over the official defaults, as the job
    always did; ckd/orl_full gives the official sizes over either profile; --quick shrinks."""
    import dataclasses

    from raylab.config import load_config
    from raylab.experiment import get_experiment, run
    from raylab.methods.ckd.config import CKDJobConfig, cpu_config

    def resolved(*argv: str) -> CKDJobConfig:
        return run(get_experiment("ckd_train"), [*argv, "--print-config"])["config"]

    configs = Path(__file__).resolve().parents[1] / "raylab" / "configs" / "ckd"
    orl = load_config(CKDJobConfig, configs / "orl.yaml")
    assert resolved("--dataset", "orl") == orl
    assert dataclasses.replace(orl, seeds=cpu_config().seeds) == cpu_config()
    full = resolved("--profile", "full", "--config", "ckd/orl_full")
    assert full == resolved("--config", "ckd/orl_full") == load_config(CKDJobConfig, configs / "orl_full.yaml")
    assert (
        full.ckd.network.widths == (64, 128, 256, 512)
        and full.ckd.train.epochs == 90
        and full.protocol.folds == (0, 1, 2, 3)
    )
    quick = resolved("--dataset", "orl", "--quick")
    assert quick.ckd.train.epochs == 4 and quick.methods == ("ckd", "periocular_only") and quick.protocol.folds == (0,)
    assert dataclasses.replace(quick.ckd.train, epochs=30) == orl.ckd.train and quick.ckd.network == orl.ckd.network


@pytest.mark.e2e
def test_job_end_to_end_on_orl(ray_session, shared_data: Path, tmp_path: Path) -> None:
    from raylab.experiment import get_experiment, run

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "ckd:\n  network: {layers: [1, 1, 1, 1], widths: [16, 16, 32, 32], embedding_dim: 32, face_size: [32, 32], "
        "periocular_size: [12, 32]}\n  train: {epochs: 1, lr: 0.01, num_workers: 1}\n"
        "protocol: {folds: [1], gallery_draws: 2}\nmethods: [ckd, periocular_only]\nseeds: [0]\n"
    )
    summary = tmp_path / "ckd.json"
    out = run(
        get_experiment("ckd_train"),
        [
            "--dataset",
            "orl",
            "--data-root",
            str(shared_data),
            "--config",
            str(config),
            "--summary-json",
            str(summary),
            "--no-progress",
        ],
    )
    written = json.loads(summary.read_text())
    rows = written["rows"]
    assert written["folds"] == [1] and written["table"] == out["text"]
    assert out["text"].startswith("mean ± std over folds [1] x seeds [0]\n")
    assert all("noise_ratio" not in r for r in rows)
    assert {(r["method"], r["fold"], r["seed"]) for r in rows} == {("ckd", 1, 0), ("periocular_only", 1, 0)}
    for row in rows:
        metrics = row["metrics"]
        assert 0.0 <= metrics["eer"] <= 1.0 and 0.0 <= metrics["rank1"] <= metrics["rank5"] <= 1.0
        assert 0.0 <= metrics["tar_at_far1e-2"] <= 1.0 and metrics["best_epoch"] == 0
    assert "ckd - periocular_only" in out["text"]

    import mlflow

    client = mlflow.MlflowClient()
    children = [
        logged
        for logged in mlflow.search_runs(search_all_experiments=True, output_format="list")
        if logged.data.tags.get("raylab.dataset") == "orl" and logged.data.tags.get("raylab.fold") == "1"
    ]
    assert {child.data.tags["raylab.method"] for child in children} == {"ckd", "periocular_only"}
    for child in children:
        assert child.data.tags.get("mlflow.parentRunId")
        assert {"figures/cmc.png", "figures/roc.png"} <= {
            a.path for a in client.list_artifacts(child.info.run_id, "figures")
        }
        (logged,) = mlflow.search_logged_models(
            experiment_ids=[child.info.experiment_id],
            filter_string=f"source_run_id = '{child.info.run_id}'",
            output_format="list",
        )
        uri = json.loads(child.data.tags["raylab.models"])["periocular_encoder"]
        assert logged.name == "periocular_encoder" and uri.endswith(logged.model_id)
        assert "torch==" in Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text()
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 1
