"""MeDS stages 2-3: selection schedule, losses, network, Ray Train resume, and the rule that
the method never reads the injected-noise flags."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from raylab.methods.meds.config import cpu_config
from raylab.methods.meds.losses import global_cosine_hard_mining, hard_mining_fraction
from raylab.methods.meds.model import ReconstructionScoreNet
from raylab.methods.meds.selection import blend_weight, select_samples, selection_threshold


def test_selection_keeps_the_median_half_at_iteration_zero():
    scores = np.random.default_rng(0).normal(size=101)
    keep = select_samples(scores, scores * 0 + 99, np.zeros(101, int), iteration=0, total_iterations=100)
    assert keep.sum() == 50
    assert np.all(scores[keep] < np.median(scores))


def test_threshold_follows_median_plus_scaled_mad():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, MAD = median(|[-2,-1,0,1,97]|) = 1
    assert selection_threshold(scores, 0, 10, k=3) == pytest.approx(3.0)
    assert selection_threshold(scores, 5, 10, k=3) == pytest.approx(3.0 + 0.5 * 3 * 1.0)
    assert selection_threshold(scores, 10, 10, k=3) == pytest.approx(6.0)


def test_blend_moves_from_distilled_to_current_by_half_time():
    assert blend_weight(0, 100) == 1.0
    assert blend_weight(25, 100) == pytest.approx(0.5)
    assert blend_weight(50, 100) == 0.0 and blend_weight(90, 100) == 0.0


def test_selection_is_per_class():
    # Class 1's scores are all far above class 0's: a pooled threshold would drop all of them.
    scores = np.concatenate([np.arange(10.0), 100 + np.arange(10.0)])
    classes = np.repeat([0, 1], 10)
    keep = select_samples(scores, scores, classes, 0, 10)
    assert keep[:10].sum() == 5 and keep[10:].sum() == 5


def test_hard_mining_mutes_gradients_of_easy_tokens():
    torch.manual_seed(0)
    target = torch.randn(2, 8, 4)
    output = (target + 0.01 * torch.randn(2, 8, 4)).requires_grad_(True)
    with torch.no_grad():
        output[:, :2] += 5 * torch.randn(2, 2, 4)  # two hard tokens per image
    loss = global_cosine_hard_mining([target], [output], p=0.75, factor=0.0)
    loss.backward()
    moved = output.grad.abs().sum(-1) > 0
    assert moved[:, :2].all()
    assert moved.sum() == 4  # only the top 25% hardest tokens (4 of 16) get gradient
    assert hard_mining_fraction(0, 0.5, 1000) == 0 and hard_mining_fraction(2000, 0.5, 1000) == 0.5


def test_network_maps_are_per_token_cosine_distances():
    net = ReconstructionScoreNet([[(0, 4)], [(4, 10)]], in_dim=10, hidden_dim=16, decoder_blocks=2, heads=2).eval()
    tokens = torch.randn(3, 5, 10)
    encoded, decoded = net(tokens)
    assert [e.shape for e in encoded] == [(3, 5, 4), (3, 5, 6)] == [d.shape for d in decoded]
    amap = net.anomaly_map(tokens)
    manual = torch.stack([1 - torch.nn.functional.cosine_similarity(e, d, dim=-1) for e, d in zip(encoded, decoded)]).mean(0)
    assert torch.allclose(amap, manual) and amap.shape == (3, 5)


def _tiny_config():
    config = cpu_config()
    return dataclasses.replace(
        config,
        stage1=dataclasses.replace(config.stage1, bootstraps=3),
        distillation=dataclasses.replace(config.distillation, hidden_dim=16, iterations=8, epochs=2, batch_size=4),
        selection=dataclasses.replace(config.selection, iterations=8, epochs=2, batch_size=4),
        groups=(((0, 4),), ((4, 8),)),
        token_grid=None,
        train_workers=1,
    )


def _tiny_patches(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    patches = rng.normal(size=(12, 4, 4, 8)).astype(np.float32)
    patches[:2, 1:3, 1:3] += 4.0  # two images with a "defect" blob
    return patches


def test_distillation_resumes_from_its_checkpoint(ray_session, tmp_path):
    from raylab.methods.meds.training import distillation_loop
    from raylab.train import TrainSpec, fit

    tokens = _tiny_patches().reshape(12, 16, 8)
    config = _tiny_config()
    schedule = dataclasses.replace(config.distillation, epochs=2, iterations=8)
    loop_config = {
        "tokens": tokens,
        "targets": np.random.default_rng(1).random((12, 16)).astype(np.float32),
        "model": {"groups": [[[0, 4]], [[4, 8]]], "in_dim": 8, "hidden_dim": 16, "decoder_blocks": 2, "heads": 2},
        "seed": 0,
        "schedule": schedule,
    }
    spec = TrainSpec("resume-test", num_workers=2, storage_path=str(tmp_path))
    first = fit(distillation_loop, loop_config, spec)
    assert list(first.metrics_dataframe["epoch"]) == [0, 1]
    longer = {**loop_config, "schedule": dataclasses.replace(schedule, epochs=4, iterations=16)}
    second = fit(distillation_loop, longer, spec)
    # A resumed run continues after the last checkpoint: it reports epochs 2 and 3 only.
    assert list(second.metrics_dataframe["epoch"]) == [2, 3]


def test_meds_never_reads_injected_noise_flags(ray_session, tmp_path):
    """Two corpora identical but for their ``injected_noise`` flags give identical MeDS runs.

    Were the method reading the flags (directly or through what the platform hands it), the
    per-epoch selections or the final scores would differ.
    """
    from raylab.data import CORPUS_SCHEMA, NoiseProtocol, inject_noise
    from raylab.data.images import encode_png
    from raylab.data.schema import CorpusRecord, records_to_table
    from raylab.features.extract import FeatureSet
    from raylab.methods.anomaly_benchmark import class_splits
    from raylab.methods.meds.method import MeDS

    pixel = encode_png(np.zeros((4, 4), np.uint8))
    records = [CorpusRecord(f"s{i:02d}", pixel, 0, "c", "train", f"s{i}") for i in range(10)]
    records += [CorpusRecord(f"d{i:02d}", pixel, 1, "c", "test", f"d{i}") for i in range(4)]
    records += [CorpusRecord(f"t{i:02d}", pixel, 0, "c", "test", f"t{i}") for i in range(2)]
    corpus = records_to_table(records)
    noisy = inject_noise(corpus, NoiseProtocol(0.2, seed=0)).table
    flags = noisy.column("injected_noise")
    flipped = noisy.set_column(noisy.schema.get_field_index("injected_noise"), "injected_noise", pa.array([False] * len(flags))).cast(CORPUS_SCHEMA)
    assert sum(flags.to_pylist()) == 2

    ids = np.array(sorted(r.sample_id for r in records))
    features = FeatureSet(ids, np.random.default_rng(3).normal(size=(len(ids), 4, 4, 8)).astype(np.float32))
    outcomes = []
    for index, table in enumerate((noisy, flipped)):
        split = class_splits(table, image_size=40)[0]
        meds = MeDS(_tiny_config(), seed=0, image_size=40, run_name=f"flags-{index}", storage_path=str(tmp_path))
        with pytest.raises(RuntimeError, match="distil must run"):
            meds.select()
        meds.fit(features.take(split.train_ids))
        distilled_maps, memory_maps = meds.training_maps()
        assert distilled_maps.shape == memory_maps.shape == (len(split.train_ids), 4, 4)
        outcomes.append((meds.selection_history, meds.predict(features.take(split.test_ids)).image_scores))
    (history_a, scores_a), (history_b, scores_b) = outcomes
    assert all(np.array_equal(a, b) for a, b in zip(history_a, history_b))
    np.testing.assert_array_equal(scores_a, scores_b)
