"""Face corpora (ORL, identity folders), identity-disjoint folds and the IR-SE face networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raylab.data import CorruptSampleError, load_corpus
from raylab.data.adapters.common import DatasetNotFoundError
from raylab.data.splits import identity_folds
from raylab.nets import IRSEConfig, IRSEResNet, StreamBatchNorm2d, ir_se_resnet18
from raylab.tasks.faces.embedding import embed
from raylab.tasks.faces.protocol import best_accuracy_threshold, far_label, gallery_draws


def _write_faces(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for identity, count in counts.items():
        (root / identity).mkdir(parents=True)
        for k in range(count):
            Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(root / identity / f"{k}.png")
    return root


def test_identity_folds_are_a_disjoint_cover_and_a_pure_function() -> None:
    ids = [f"s{i}" for i in range(1, 41)]
    folds = identity_folds(ids, 4, seed=3)
    assert sorted(i for fold in folds for i in fold) == sorted(ids)
    assert [len(f) for f in folds] == [10, 10, 10, 10]
    assert identity_folds(list(reversed(ids)), 4, seed=3) == folds  # listing order does not matter
    assert identity_folds(ids, 4, seed=4) != folds
    with pytest.raises(ValueError, match="n_folds"):
        identity_folds(ids[:3], 4, seed=0)


def test_orl_folds_hold_out_whole_identities(shared_data: Path) -> None:
    table = load_corpus("orl", shared_data, fold=1, split_seed=0)
    rows = table.select(["label", "class_name", "split", "attributes"]).to_pylist()
    assert len(rows) == 400 and len({r["class_name"] for r in rows}) == 40
    test_ids = {r["class_name"] for r in rows if r["split"] == "test"}
    train_ids = {r["class_name"] for r in rows if r["split"] == "train"}
    assert len(test_ids) == 10 and not test_ids & train_ids
    assert all(json.loads(r["attributes"])["fold"] == 1 for r in rows if r["split"] == "test")
    labels = {r["class_name"]: r["label"] for r in rows}
    assert labels["s1"] == 0 and labels["s2"] == 1 and labels["s10"] == 9  # natural order


def test_face_folder_errors_name_the_culprit(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="one subfolder per person"):
        load_corpus("face_folder", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="orl_faces/s1/1.pgm"):
        load_corpus("orl", tmp_path)
    root = _write_faces(tmp_path / "people", {"alice": 3, "bob": 1, "carol": 2})
    with pytest.raises(ValueError, match=r"bob \(1 image\)"):
        load_corpus("face_folder", root)
    (root / "bob" / "1.png").write_bytes(b"not an image at all")
    with pytest.raises(CorruptSampleError, match="bob/1"):
        load_corpus("face_folder", root)
    (root / "bob" / "1.png").unlink()
    Image.fromarray(np.zeros((24, 20), np.uint8)).save(root / "bob" / "1.png")
    table = load_corpus("face_folder", root, fold=0, n_folds=3)
    assert table.num_rows == 7 and table.column("split").to_pylist().count("test") in (2, 3)


def test_stream_batchnorm_joint_statistics_cover_every_stream() -> None:
    torch.manual_seed(0)
    face, eyes = torch.randn(4, 3, 8, 8) + 2.0, torch.randn(4, 3, 3, 8) - 1.0
    joint, separate = StreamBatchNorm2d(3, joint=True), StreamBatchNorm2d(3, joint=False)
    face_j, eyes_j = joint([face, eyes])
    face_s, eyes_s = separate([face, eyes])
    both = torch.cat([face.transpose(0, 1).flatten(1), eyes.transpose(0, 1).flatten(1)], 1)
    expected = (face - both.mean(1)[None, :, None, None]) / (
        both.var(1, unbiased=False)[None, :, None, None] + 1e-5
    ).sqrt()
    torch.testing.assert_close(face_j, expected, atol=1e-5, rtol=1e-5)
    assert face_s.mean().abs() < 1e-5 and eyes_s.mean().abs() < 1e-5  # each stream centred on its own
    assert face_j.mean() - eyes_j.mean() > 1.5  # jointly: the modalities keep their offset


def test_irse_resnet18_standalone_encoder() -> None:
    torch.manual_seed(0)
    model = ir_se_resnet18((112, 112), width_multiplier=0.25, num_classes=5).eval()
    assert model.config.map_size() == (7, 7)
    images = torch.randn(2, 3, 112, 112)
    embeddings, logits = model.logits(images)
    assert embeddings.shape == (2, 512) and logits.shape == (2, 5)
    exported = torch.export.export(model, (images,))
    torch.testing.assert_close(exported.module()(images), model(images))
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(2, 3, 96, 96))
    official = IRSEResNet(IRSEConfig())
    assert official.config.map_size() == (8, 8) and official.config.map_size((48, 128)) == (3, 8)


def test_gallery_draws_are_closed_set_and_seeded() -> None:
    ids = np.repeat(np.asarray(["x", "y", "z"]), 4)
    draws = gallery_draws(ids, 1, 3, seed=0)
    for gallery, probe in draws:
        assert sorted(ids[gallery]) == ["x", "y", "z"] and len(probe) == 9 and not set(gallery) & set(probe)
    assert all((g1 == g2).all() for (g1, _), (g2, _) in zip(draws, gallery_draws(ids, 1, 3, seed=0), strict=True))
    with pytest.raises(ValueError, match="gallery_per_identity=4"):
        gallery_draws(ids, 4, 1, seed=0)


def test_best_accuracy_threshold_balances_genuine_and_impostor_pairs() -> None:
    """Ten impostors per genuine pair: plain accuracy (34 of 35 right at 0.62) would give up a
    genuine pair to reject three impostors; balanced accuracy keeps every genuine pair."""
    genuine = np.asarray([0.6, 0.7, 0.8])
    impostor = np.concatenate([np.linspace(0.0, 0.5, 29), [0.62, 0.62, 0.62]])
    assert best_accuracy_threshold(genuine, impostor) == pytest.approx(0.5)
    assert far_label(1e-2) == "far1e-2" and far_label(0.001) == "far1e-3"


class _Scaled(torch.nn.Module):
    """A face encoder whose output depends on its mode and a forward argument."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.norm(x.flatten(1)) * scale


def test_embed_is_eval_mode_batch_invariant_and_passes_forward_arguments() -> None:
    encoder = _Scaled()
    encoder.norm.running_mean += 1.0
    images = np.random.default_rng(0).normal(size=(10, 1, 2, 2)).astype(np.float32)
    whole = embed(encoder, images, batch_size=10)
    assert not encoder.training  # running statistics, not the batch's
    np.testing.assert_allclose(whole, (images.reshape(10, 4) - 1.0) / np.sqrt(1.0 + 1e-5), rtol=1e-5)
    np.testing.assert_array_equal(embed(encoder, images, batch_size=3), whole)
    np.testing.assert_allclose(embed(encoder, images, scale=2.0), 2.0 * whole, rtol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        embed(encoder, images, batch_size=0)
