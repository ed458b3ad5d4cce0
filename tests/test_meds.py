"""MeDS stages 2-3: selection schedule, the released stage-3 recipe, losses, network, the fused
stage 2+3 Train run and its resume, the clean oracle's training set, and the rule that the
method never reads the injected-noise flags."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
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
    manual = torch.stack(
        [1 - torch.nn.functional.cosine_similarity(e, d, dim=-1) for e, d in zip(encoded, decoded, strict=True)]
    ).mean(0)
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


FLAG_NAMES = {
    "injected_noise",
    "train_injected",
    "injected",
}  # the corpus column, the split's copy, filter_quality's argument


def test_meds_never_reads_injected_noise_flags():
    """The injected-noise flags reach only the oracle row and the filter's scoring, never the method.

    MeDS is handed patch arrays (and class ids for a unified model): no flags; no module of the
    method but the sweep's ``experiment.py`` names the flags; there, only the clean oracle's
    mask and the filter-quality row (scored after the fit) read them. A change that let the
    method see which images are noise fails here by name.
    """
    import ast
    import inspect
    from pathlib import Path

    from raylab.features.extract import FeatureSet
    from raylab.methods.meds import experiment
    from raylab.methods.meds.method import MeDS

    assert [field.name for field in dataclasses.fields(FeatureSet)] == ["sample_ids", "patches"]
    assert list(inspect.signature(MeDS.fit).parameters) == ["self", "train_patches", "class_ids"]
    readers: dict[str, set[str]] = {}
    for module in sorted(Path(experiment.__file__).parent.glob("*.py")):
        tree = ast.parse(module.read_text())
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    name = (
                        node.attr
                        if isinstance(node, ast.Attribute)
                        else node.id
                        if isinstance(node, ast.Name)
                        else None
                    )
                    if isinstance(node, ast.Constant) and isinstance(node.value, str):
                        name = node.value
                    if name in FLAG_NAMES:
                        readers.setdefault(module.name, set()).add(function.name)
    # trial(): passes split.train_injected to filter_quality after meds.fit, for the filter's row.
    assert readers == {"experiment.py": {"clean_training_mask", "filter_quality", "trial"}}, readers
    trial_source = inspect.getsource(experiment.trial)
    assert trial_source.count("train_injected") == 1
    assert trial_source.index("meds.fit(") < trial_source.index("filter_quality(kept, split.train_injected)")


def test_meds_refuses_to_score_or_retrain_before_it_is_fitted(tmp_path):
    from raylab.features.extract import FeatureSet
    from raylab.methods.meds.method import MeDS

    meds = MeDS(_tiny_config(), seed=0, image_size=40, run_name="unfitted", storage_path=str(tmp_path))
    features = FeatureSet(np.array(["a", "b"]), np.zeros((2, 4, 4, 8), np.float32))
    with pytest.raises(RuntimeError, match="fit must run"):
        meds.predict(features)
    with pytest.raises(RuntimeError, match="fit or MeDS.distil must run"):
        meds.train_on(np.ones(2, bool), "oracle")


# ----------------------------------------------------------------- stage 3 as released


def test_stage3_defaults_are_the_released_recipe():
    """step_3_data_selection_with_distilled_model.py: StableAdamW lr 2e-3 -> 2e-4 warm-cosine
    with 100 warm-up iterations over 10k, p ramped to 0.5 over 1k iterations, factor 0.1."""
    from raylab.methods.meds.config import MeDSConfig, SelectionConfig
    from raylab.train.optim import warm_cosine_lr

    s = MeDSConfig().selection
    assert (s.iterations, s.batch_size, s.lr, s.final_lr, s.warmup_iterations) == (10_000, 16, 2e-3, 2e-4, 100)
    assert (s.hard_mining_p, s.hard_mining_ramp_iterations, s.hard_mining_factor, s.mad_k) == (0.5, 1_000, 0.1, 3.0)
    lr = [
        warm_cosine_lr(i, base_lr=s.lr, final_lr=s.final_lr, warmup=s.warmup_iterations, total=s.iterations)
        for i in range(s.iterations)
    ]
    assert lr[0] < 1e-4 and lr[99] == pytest.approx(2e-3) and lr[-1] == pytest.approx(2e-4, rel=1e-3)
    assert hard_mining_fraction(500, s.hard_mining_p, s.hard_mining_ramp_iterations) == pytest.approx(0.25)
    # The CPU size scales the warm-up and the ramp with its iterations (800 of 10k).
    cpu = cpu_config().selection
    assert cpu.warmup_iterations == round(100 * cpu.iterations / 10_000) and cpu.hard_mining_ramp_iterations == round(
        1_000 * cpu.iterations / 10_000
    )
    assert (cpu.lr, cpu.final_lr, cpu.hard_mining_factor) == (2e-3, 2e-4, 0.1)
    with pytest.raises(ValueError, match="epochs"):
        SelectionConfig(iterations=4, epochs=5)


def test_a_decoder_size_is_spelled_one_way_and_the_cpu_size_is_64x2_at_800():
    """Size studies and configs name a decoder as WIDTHxBLOCKS@ITERATIONS; the CPU size's own
    spelling reproduces it exactly, and another size keeps the release's shares of each run."""
    from raylab.methods.meds.config import with_decoder_size

    cpu = cpu_config()
    assert with_decoder_size(cpu, "64x2@800") == cpu
    bigger = with_decoder_size(cpu, "256x4@1600")
    decoder = bigger.distillation
    assert (decoder.hidden_dim, decoder.decoder_blocks, decoder.heads) == (256, 4, 8)
    assert (bigger.distillation.iterations, bigger.selection.iterations) == (800, 1600)
    assert (bigger.selection.warmup_iterations, bigger.selection.hard_mining_ramp_iterations) == (16, 160)
    assert bigger.stage1 == cpu.stage1 and bigger.groups == cpu.groups
    for bad in ("64x2", "64@800", "wide x2@800", "64x1@800"):
        with pytest.raises(ValueError, match=bad.split("@")[0][:2]):
            with_decoder_size(cpu, bad)


def test_one_network_learns_every_class_as_the_release_trains_it():
    """The release's stages 2 and 3 train one network on the classes' concatenated images;
    ``network_per_class`` is the opt-in alternative, a network (and Train run) per class."""
    from types import SimpleNamespace

    from raylab.methods.meds.config import MeDSConfig
    from raylab.methods.meds.experiment import networks

    assert MeDSConfig().network_per_class is False and cpu_config().network_per_class is False
    splits = [SimpleNamespace(class_name="mono"), SimpleNamespace(class_name="poly")]
    assert networks(splits, per_class=False) == [("all_classes", splits)]
    assert networks(splits, per_class=True) == [("mono", splits[:1]), ("poly", splits[1:])]


def test_a_pass_covers_the_kept_set_once_in_lock_step():
    from raylab.methods.meds.training import pass_batches

    kept = np.arange(0, 75, 2)  # 38 kept samples, 2 workers, batch 4
    batches = [pass_batches(kept, rank, 2, 4, np.random.default_rng(rank)) for rank in (0, 1)]
    assert [len(b) for b in batches] == [4, 4]  # 19 per worker -> 4 whole batches each (DDP lock-step)
    seen = np.concatenate([np.concatenate(b) for b in batches])
    assert len(set(seen.tolist())) == len(seen) == 32 and set(seen.tolist()) <= set(kept.tolist())
    # A share smaller than a batch is one batch of itself.
    small = pass_batches(np.array([3, 5, 7]), 1, 2, 16, np.random.default_rng(0))
    assert [sorted(b.tolist()) for b in small] == [[5]]


def test_selection_score_is_the_release_top_token_mean():
    from raylab.methods.meds.training import token_top_mean

    maps = np.arange(2 * 196, dtype=np.float64).reshape(2, 196)
    np.testing.assert_allclose(token_top_mean(maps, 0.01), [195.0, 391.0])  # int(1.96) = 1 token
    np.testing.assert_allclose(
        token_top_mean(np.arange(784.0)[None], 0.01), [np.arange(777.0, 784.0).mean()]
    )  # 7 of 784


def _fused_config(selection, epochs: int = 2) -> dict:
    tokens = _tiny_patches().reshape(12, 16, 8)
    config = _tiny_config()
    return {
        "tokens": tokens,
        "targets": np.random.default_rng(1).random((12, 16)).astype(np.float32),
        "model": {"groups": [[[0, 4]], [[4, 8]]], "in_dim": 8, "hidden_dim": 16, "decoder_blocks": 2, "heads": 2},
        "seed": 0,
        "distillation": dataclasses.replace(config.distillation, epochs=epochs, iterations=4 * epochs),
        "selection": selection,
        "class_ids": np.zeros(12, dtype=np.int64),
        "top_fraction": 0.1,
    }


# Fault tolerance (a stopped run resumes from its checkpoint): the ops tier.
@pytest.mark.ops
def test_fused_run_resumes_in_the_stage_it_was_in(ray_session, tmp_path):
    """One Train run trains stage 2 then stage 3; re-run, it continues where its checkpoint's
    stage marker says: a finished stage 2 is not trained again."""
    from raylab.methods.meds.config import SelectionConfig
    from raylab.methods.meds.training import meds_loop
    from raylab.train import TrainSpec, fit, load_result_state

    selection = SelectionConfig(
        iterations=8, epochs=2, batch_size=4, warmup_iterations=1, hard_mining_ramp_iterations=2
    )
    spec = TrainSpec("fused-resume", num_workers=2, storage_path=str(tmp_path))
    # Stage 2 only (selection None), then the same run with stage 3: stage 2 is not redone.
    stage2 = fit(meds_loop, _fused_config(None), spec)
    assert list(stage2.metrics_dataframe["stage"]) == [2, 2]
    distilled = load_result_state(stage2)["model"]
    both = fit(meds_loop, _fused_config(selection), spec)
    frame = both.metrics_dataframe
    assert list(frame["stage"]) == [3, 3] and list(frame["epoch"]) == [0, 1]
    state = load_result_state(both)
    assert state["stage"] == "selection"
    assert all(torch.equal(distilled[k], state["distilled"][k]) for k in distilled)
    # Re-selection before every pass: more masks than epochs, one per pass.
    assert len(state["history"]) == sum(r["passes"] for r in state["reports"] if r["stage"] == 3) > 2
    assert [(r["stage"], r["epoch"]) for r in state["reports"]] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    # Longer stage 3 on the same run: it resumes inside stage 3 (epochs 2, 3 only).
    longer = fit(meds_loop, _fused_config(dataclasses.replace(selection, iterations=16, epochs=4)), spec)
    assert list(longer.metrics_dataframe["stage"]) == [3, 3] and list(longer.metrics_dataframe["epoch"]) == [2, 3]
    assert all(torch.equal(distilled[k], load_result_state(longer)["distilled"][k]) for k in distilled)


@pytest.fixture(scope="module")
def fitted_meds(ray_session, tmp_path_factory):
    """One tiny MeDS fitted (one Train run), for the fit's checks and as the oracle's start."""
    from raylab.methods.meds.method import MeDS

    storage = tmp_path_factory.mktemp("meds-fit")
    meds = MeDS(_tiny_config(), seed=0, image_size=40, run_name="fused-fit", storage_path=str(storage))
    meds.fit(_tiny_patches())
    return meds, storage


def test_meds_fit_is_one_train_run_with_both_stages(fitted_meds):
    meds, storage = fitted_meds
    assert sorted(p.name for p in storage.iterdir() if p.name.startswith("fused-fit")) == ["fused-fit-stage2-3"]
    assert [r["epoch"] for r in meds.training_metrics["distillation"]] == [0, 1]
    assert [r["epoch"] for r in meds.training_metrics["selection"]] == [0, 1]
    assert len(meds.selection_history) == sum(r["passes"] for r in meds.training_metrics["selection"])
    # The distilled detector is the stage-2 network, not the final one.
    distilled = meds.distilled.network.state_dict()
    final = meds.final.network.state_dict()
    assert any(not torch.equal(distilled[k], final[k]) for k in distilled)


def test_clean_oracle_trains_on_the_clean_training_images_only(fitted_meds, shared_data):
    """Magnetic tile at noise 0.4: the oracle's training set is the class's training ids minus
    the injected ones (every injected one out, every original normal in)."""
    from raylab.data import NoiseProtocol, inject_noise, load_corpus
    from raylab.methods.meds.experiment import clean_training_mask
    from raylab.tasks.anomaly.benchmark import class_splits

    corpus = load_corpus("magnetic_tile", str(shared_data))
    table = inject_noise(corpus, NoiseProtocol(0.4, seed=0)).table
    split = class_splits(table, image_size=224)[0]
    keep = clean_training_mask(split)
    injected = {
        r["sample_id"] for r in table.select(["sample_id", "injected_noise"]).to_pylist() if r["injected_noise"]
    }
    originals = {
        r["sample_id"]
        for r in corpus.select(["sample_id", "split", "class_name"]).to_pylist()
        if r["split"] == "train" and r["class_name"] == split.class_name
    }
    kept_ids = {i for i, k in zip(split.train_ids, keep, strict=True) if k}
    assert injected and not (kept_ids & injected)
    assert kept_ids == originals and len(kept_ids) < len(split.train_ids)

    # The oracle's Train run, from the fitted MeDS's distilled weights, uses exactly that mask
    # at every pass (its own run name) and leaves MeDS's own final network as it was.
    meds, storage = fitted_meds
    patches = _tiny_patches()
    final = {k: v.clone() for k, v in meds.final.network.state_dict().items()}
    mask = np.ones(12, bool)
    mask[:2] = False  # the two "defect" images
    oracle = meds.train_on(mask, "clean_oracle")
    assert (storage / "fused-fit-clean_oracle").is_dir() and oracle.predict(patches).image_scores.shape == (12,)
    assert all(torch.equal(v, meds.final.network.state_dict()[k]) for k, v in final.items())
    assert [r["epoch"] for r in meds.training_metrics["clean_oracle"]] == [0, 1]
    assert all(r["kept_fraction"] == pytest.approx(10 / 12) for r in meds.training_metrics["clean_oracle"])
    with pytest.raises(ValueError, match="non-empty mask"):
        meds.train_on(np.zeros(12, bool), "clean_oracle")


def test_filter_curve_averages_each_pass_over_the_classes_that_ran_it():
    """Classes trained by networks of their own make different numbers of selection passes
    (``network_per_class``): the curve runs to the longest class, each pass the mean of the
    classes that made it. One shared network makes every class's passes together; each class's
    part of a pass's mask is its own images' slice."""
    from raylab.methods.meds.experiment import class_parts, filter_curve, filter_quality

    injected = np.array([True, False, False, False])
    short = filter_quality([np.array([False, True, True, True]), np.ones(4, bool)], injected)
    long = filter_quality([np.array([True, False, True, True])] * 3, injected)
    curve = filter_curve([short, long])
    assert [row["kept_fraction"] for row in curve] == pytest.approx([0.75, 0.875, 0.75])
    assert curve[0]["filter_precision"] == pytest.approx(0.5) and curve[2]["filter_recall"] == 0.0
    assert curve[1]["filter_precision"] == 0.0  # the short class removed none (NaN), the long one a clean image
    assert filter_curve([]) == []
    # Nothing injected (noise 0): the filter's precision is undefined in every class, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = filter_curve([filter_quality([np.ones(4, bool)], np.zeros(4, bool))] * 2)
    assert np.isnan(clean[0]["filter_precision"]) and clean[0]["kept_fraction"] == 1.0
    shared = [np.array([True, False, True, True, False]), np.array([False, True, True, True, True])]
    first, second = class_parts(shared, [2, 3])
    assert [m.tolist() for m in first] == [[True, False], [False, True]]
    assert [m.tolist() for m in second] == [[True, True, False], [True, True, True]]
