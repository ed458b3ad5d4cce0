"""DCAE: compact latent, the discriminator metric, Ray Train resume, the one-class protocol,
selection blind to the test split, bad input, and the sweep job end to end."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from raylab.data.images import CorruptSampleError, encode_png
from raylab.eval.anomaly import image_metrics
from raylab.methods.dcae.config import (
    METHODS,
    TRAINED,
    LossWeights,
    NetworkConfig,
    ProtocolConfig,
    SelectionConfig,
    TrainConfig,
    trained_for,
)
from raylab.methods.dcae.losses import to_unit_range
from raylab.methods.dcae.model import DCAE, feature_distance
from raylab.methods.dcae.selection import make_pseudo_novelties, quadrant_shuffle, select_for_split, select_loss_weights
from raylab.methods.dcae.training import (
    build_model,
    make_trainers,
    run_epoch,
    score_images,
    train_in_process,
    train_variants,
)
from raylab.tasks.one_class.protocol import DecodedCorpus, decode_corpus, load_one_class_corpus, one_class_split


@pytest.fixture(autouse=True)
def one_thread():
    """Training is timed for one thread per process (as in Train workers); more only contend on CI."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY = NetworkConfig(width=8, latent_dim=4, downsamplings=2, latent_hidden=16)
TRAIN = TrainConfig(epochs=2, batch_size=16, lr=1e-3, num_workers=1)


def blobs(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """In-class toy images: one bright Gaussian blob at a random place on a dark background."""
    rng = np.random.default_rng(seed)
    grid = np.arange(size)[:, None], np.arange(size)[None, :]
    out = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(4, size - 4, 2)
        blob = np.exp(-((grid[0] - cy) ** 2 + (grid[1] - cx) ** 2) / (2 * 2.0**2))
        out[i, 0] = np.clip(255 * blob, 0, 255).astype(np.uint8)
    return out


def stripes(n: int, size: int = 16, seed: int = 1) -> np.ndarray:
    """Far-away toy images: high-frequency stripes with a random phase and direction."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        phase, axis = rng.integers(0, 2), rng.integers(0, 2)
        line = ((np.arange(size) + phase) % 2 * 255).astype(np.uint8)
        out[i, 0] = line[None, :].repeat(size, 0) if axis else line[:, None].repeat(size, 1)
    return out


def toy_corpus(n_per_class: int = 40, size: int = 16) -> DecodedCorpus:
    images = np.concatenate([blobs(n_per_class, size, 0), stripes(n_per_class, size, 1)])
    labels = np.r_[np.zeros(n_per_class, int), np.ones(n_per_class, int)]
    splits = np.array(["train", "test"] * n_per_class, dtype=object)
    ids = np.array([f"toy/{i:03d}" for i in range(len(images))], dtype=object)
    return DecodedCorpus(images, labels, splits, ids, {0: "blob", 1: "stripes"})


# ---------------------------------------------------------------------------- model


def test_latent_stays_in_the_compact_cube_for_any_input():
    torch.manual_seed(0)
    dcae = build_model(TINY, TRAINED["dcae"], 1, 16).eval()
    plain = build_model(TINY, TRAINED["ae"], 1, 16).eval()
    wild = torch.cat(
        [torch.randn(8, 1, 16, 16) * 1e4, torch.full((1, 1, 16, 16), -1e6), torch.full((1, 1, 16, 16), 1e6)]
    )
    with torch.no_grad():
        codes = dcae.encoder(wild)
        plain_codes = plain.encoder(wild)
    assert codes.shape == (10, TINY.latent_dim)
    assert torch.all(codes.abs() <= 1.0)
    assert plain_codes.abs().max() > 1.0  # the plain AE's latent is unbounded: the check can fail


def test_the_discriminator_width_is_its_own_setting():
    """A wider image discriminator (the design benchmark's ``wide_d``) changes D and nothing else;
    unset, D is as wide as the encoder."""
    wide = build_model(dataclasses.replace(TINY, discriminator_width=3 * TINY.width), TRAINED["dcae"], 1, 16)
    same = build_model(TINY, TRAINED["dcae"], 1, 16)
    assert wide.image_discriminator.blocks[0][0].out_channels == 3 * TINY.width
    assert same.image_discriminator.blocks[0][0].out_channels == TINY.width
    for part in ("encoder", "decoder", "latent_discriminator"):
        shapes = [p.shape for p in getattr(wide, part).parameters()]
        assert shapes == [p.shape for p in getattr(same, part).parameters()], part
    with pytest.raises(ValueError, match="discriminator_width"):
        NetworkConfig(discriminator_width=0)


def test_trained_codes_stay_compact_and_do_not_collapse():
    images = blobs(64)
    trained = train_in_process(images, {"dcae": (TRAINED["dcae"], LossWeights())}, TINY, TRAIN, seed=0, epochs=3)
    model = trained.models["dcae"]
    with torch.no_grad():
        codes = model.encoder(torch.from_numpy(np.concatenate([images, stripes(16)])).float() / 127.5 - 1)
    assert torch.all(codes.abs() <= 1.0)
    inside = codes[:64]
    distances = torch.cdist(inside, inside) + torch.eye(64) * 10
    assert distances.min() > 1e-4  # no two training images share a code


def test_feature_distance_levels_scales_and_calibration():
    torch.manual_seed(0)
    a = [torch.rand(3, 4, 5, 5) + 0.1, 100 * torch.rand(3, 6, 2, 2)]
    b = [torch.rand(3, 4, 5, 5), 100 * torch.rand(3, 6, 2, 2)]
    assert torch.allclose(feature_distance(a, a), torch.zeros(3))
    # Default scales are the reference's energy per level: a common rescaling of both sides
    # (or of one level) changes nothing, so no level dominates by its raw magnitude.
    rescaled = feature_distance([7 * a[0], a[1] / 50], [7 * b[0], b[1] / 50])
    assert torch.allclose(rescaled, feature_distance(a, b), rtol=1e-4)
    by_hand = sum(((x - y) ** 2).flatten(1).mean(1) / (x**2).mean() for x, y in zip(a, b, strict=True))
    assert torch.allclose(feature_distance(a, b), by_hand, rtol=1e-5)
    assert torch.allclose(
        feature_distance(a, b, [1.0, 0.0]) + feature_distance(a, b, [0.0, 1.0]), feature_distance(a, b)
    )
    with pytest.raises(ValueError, match="level weights"):
        feature_distance(a, b, [1.0])
    with pytest.raises(ValueError, match="positive scale"):
        feature_distance(a, b, scales=[1.0, 0.0])
    model = build_model(TINY, TRAINED["dcae"], 1, 16).eval()
    images = torch.rand(10, 1, 16, 16) * 2 - 1
    with pytest.raises(RuntimeError, match="calibrate"):
        model.scores(images)
    scales = model.calibrate(images, batch_size=3)
    with torch.no_grad():
        _, features = model.image_discriminator(images)
    assert torch.allclose(scales, torch.stack([f.pow(2).mean() for f in features]), rtol=1e-5)
    assert model.scores(images).shape == (10,)


def test_discriminator_metric_ranks_training_images_above_far_away_images():
    """After a short training on blobs, a blob's reconstruction is closer (in D's feature space)
    than the reconstruction of a far-away striped image."""
    train = blobs(96, seed=3)
    trained = train_in_process(
        train,
        {"dcae": (TRAINED["dcae"], LossWeights())},
        TINY,
        dataclasses.replace(TRAIN, batch_size=32),
        seed=0,
        epochs=15,
    )
    model = trained.models["dcae"]
    inside = score_images(model, train[:32], "discriminator")
    far = score_images(model, stripes(32), "discriminator")
    assert np.all(np.isfinite(inside)) and np.all(np.isfinite(far))
    assert inside.mean() < far.mean()
    assert np.mean(inside[:, None] < far[None, :]) > 0.9  # AUROC of the toy case


def test_methods_map_onto_three_trained_variants():
    assert trained_for(("dcae", "dcae_pixel_metric")) == ("dcae",)
    assert set(trained_for(tuple(METHODS))) == {"dcae", "dcae_no_adv", "ae"}
    assert METHODS["dcae_pixel_metric"] == ("dcae", "pixel")
    with pytest.raises(KeyError, match="unknown DCAE methods"):
        trained_for(("dcae", "ocgan"))
    with pytest.raises(ValueError, match="bounded_latent"):
        DCAE(
            1,
            16,
            width=8,
            latent_dim=4,
            downsamplings=2,
            latent_hidden=8,
            bounded_latent=False,
            image_gan=True,
            latent_adversarial=True,
        )


# ---------------------------------------------------------------------------- Ray Train


# Fault tolerance (a stopped run resumes from its checkpoint): the ops tier.
@pytest.mark.ops
def test_checkpoint_then_resume_gives_the_same_next_epoch(ray_session, tmp_path):
    """Epoch 0 on two DDP workers; the same run asked for 2 epochs resumes from its checkpoint
    (here on one worker: a smaller cluster) and its epoch 1 equals, loss for loss and weight
    for weight, epoch 1 computed in this process from the saved epoch-0 state."""
    images = blobs(48, seed=5)
    variants = {"dcae": (TRAINED["dcae"], LossWeights()), "ae": (TRAINED["ae"], LossWeights())}
    storage = str(tmp_path / "runs")
    two = dataclasses.replace(TRAIN, num_workers=2, cpus_per_worker=0.99, batch_size=16)
    first = train_variants(images, variants, TINY, two, seed=1, epochs=1, storage_path=storage, name="interrupted")
    one = dataclasses.replace(two, num_workers=1)
    resumed = train_variants(images, variants, TINY, one, seed=1, epochs=2, storage_path=storage, name="interrupted")
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    assert resumed.history[0] == first.history[0]  # epoch 0 came from the checkpoint, not a re-run

    saved = torch.load(Path(storage) / "interrupted" / "final_state_e1.pt", weights_only=True)
    trainers = make_trainers(variants, TINY, one, 1, 16, seed=1)
    for name, trainer in trainers.items():
        trainer.load_state_dict(saved["variants"][name])
    expected = run_epoch(
        trainers, to_unit_range(torch.from_numpy(images)), 1, seed=1, batch_size=16, latent_dim=TINY.latent_dim
    )
    for key in (
        "dcae/first_step_loss",
        "dcae/loss",
        "dcae/image_discriminator",
        "dcae/latent_discriminator",
        "ae/first_step_loss",
    ):
        assert resumed.history[1][key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    for name, trainer in trainers.items():
        for key, value in trainer.model.state_dict().items():
            if key not in ("feature_scales", "calibrated"):
                assert torch.allclose(resumed.models[name].state_dict()[key].float(), value.float(), atol=1e-6), (
                    name,
                    key,
                )
    again = train_variants(images, variants, TINY, one, seed=1, epochs=2, storage_path=storage, name="interrupted")
    assert again.history == resumed.history  # a finished run is reused, not retrained


# ---------------------------------------------------------------------------- protocol and bad input


def test_one_class_split_on_the_real_mnist_halves(shared_data):
    corpus = load_one_class_corpus("mnist", shared_data, ProtocolConfig())
    data = decode_corpus(corpus, "L")
    assert data.images.shape == (10_000, 1, 28, 28)
    assert (data.splits == "train").sum() == sum(np.floor((data.labels == c).sum() / 2) for c in range(10))
    split = one_class_split(data, 3)
    assert len(split.train_images) == int(((data.labels == 3) & (data.splits == "train")).sum())
    assert len(split.test_images) == int((data.splits == "test").sum())
    assert split.test_novel.sum() == int(((data.labels != 3) & (data.splits == "test")).sum())
    again = decode_corpus(load_one_class_corpus("mnist", shared_data, ProtocolConfig()), "L")
    assert np.array_equal(again.splits, data.splits)  # the fixed split seed gives the same halves


def _write_png(path: Path, size: tuple[int, int], value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)


def test_bad_input_gives_clear_errors(tmp_path):
    # A class folder with no images.
    root = tmp_path / "empty_class"
    for i in range(4):
        _write_png(root / "cats" / f"{i}.png", (8, 8))
    (root / "dogs").mkdir()
    with pytest.raises(ValueError, match=r"dogs holds no images"):
        load_one_class_corpus("class_folders", root, ProtocolConfig())
    # Images of mixed sizes.
    mixed = tmp_path / "mixed"
    for i in range(4):
        _write_png(mixed / "a" / f"{i}.png", (8, 8))
        _write_png(mixed / "b" / f"{i}.png", (8, 8) if i else (12, 10))
    corpus = load_one_class_corpus("class_folders", mixed, ProtocolConfig())
    with pytest.raises(CorruptSampleError, match=r"mixed/b/0 is 12x10 but mixed/a/\d is 8x8"):
        decode_corpus(corpus)
    assert decode_corpus(corpus, resize_to=8).images.shape == (8, 1, 8, 8)
    # A class with a single image cannot be split into train and test.
    single = tmp_path / "single"
    _write_png(single / "a" / "0.png", (8, 8))
    for i in range(4):
        _write_png(single / "b" / f"{i}.png", (8, 8))
    with pytest.raises(ValueError, match=r"class 'a' \(label 0\) has 1 image"):
        load_one_class_corpus("class_folders", single, ProtocolConfig())
    # A normal class with no training images; an unknown class; an empty training set.
    data = toy_corpus(8)
    data.splits[data.labels == 0] = "test"
    with pytest.raises(ValueError, match=r"normal class 0 \('blob'\) has no training images"):
        one_class_split(data, 0)
    with pytest.raises(KeyError, match="normal class 7 is not in the dataset"):
        one_class_split(data, 7)
    with pytest.raises(ValueError, match="no training images"):
        train_in_process(
            np.zeros((0, 1, 16, 16), np.uint8), {"ae": (TRAINED["ae"], LossWeights())}, TINY, TRAIN, seed=0, epochs=1
        )
    with pytest.raises(ValueError, match="not divisible by 2\\^2"):
        build_model(TINY, TRAINED["ae"], 1, 18)


# ---------------------------------------------------------------------------- selection


def test_pseudo_novelties_are_in_class_images_transformed():
    images = np.arange(2 * 16, dtype=np.uint8).reshape(2, 1, 4, 4)
    shuffled = quadrant_shuffle(images)
    assert np.array_equal(shuffled[0, 0, :2, 2:], images[0, 0, :2, :2])  # top-left -> top-right
    assert np.array_equal(quadrant_shuffle(quadrant_shuffle(quadrant_shuffle(quadrant_shuffle(images)))), images)
    assert make_pseudo_novelties(images, ("vflip", "rotate90")).shape == (4, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown"):
        make_pseudo_novelties(images, ("mixup",))


def test_selection_never_reads_the_test_split(tmp_path):
    """Same training images, different test images and labels -> identical selection; different
    training images -> a different one (so the comparison can fail)."""
    selection = SelectionConfig(n_trials=2, epochs=1, val_fraction=0.25)
    data = toy_corpus(24)
    split = one_class_split(data, 0)
    tampered = dataclasses.replace(
        split,
        test_images=255 - split.test_images,
        test_novel=~split.test_novel,
    )
    base = select_for_split(split, TINY, TRAIN, selection, LossWeights(), seed=0)
    same = select_for_split(tampered, TINY, TRAIN, selection, LossWeights(), seed=0)
    assert same.trials.to_dict() == base.trials.to_dict()
    assert same.best == base.best
    other_train = dataclasses.replace(split, train_images=np.ascontiguousarray(split.train_images[:, :, ::-1]))
    different = select_for_split(other_train, TINY, TRAIN, selection, LossWeights(), seed=0)
    assert different.trials["val_pseudo_auroc"].tolist() != base.trials["val_pseudo_auroc"].tolist()
    # The first trial is the configured default, clipped into the search ranges.
    assert base.trials.loc[0, "feature"] == pytest.approx(LossWeights().feature)
    cached = select_loss_weights(split.train_images, TINY, TRAIN, selection, seed=0, cache_dir=tmp_path)
    again = select_loss_weights(split.train_images, TINY, TRAIN, selection, seed=0, cache_dir=tmp_path)
    assert again.cached and not cached.cached and again.best == cached.best


@pytest.mark.parametrize("n_trials,max_concurrent", [(1, 1), (1, 6), (4, 3), (5, 2)])
def test_selection_runs_exactly_the_trials_asked_for(n_trials, max_concurrent):
    """The enqueued default waits in the study until asked: it must count once, so a one-trial
    selection (the smoke budget) still trains the default, and rounds never run one short."""
    split = one_class_split(toy_corpus(24), 0)
    selection = SelectionConfig(n_trials=n_trials, epochs=1, val_fraction=0.25, max_concurrent=max_concurrent)
    result = select_loss_weights(split.train_images, TINY, TRAIN, selection, seed=0, on_ray=False)
    assert len(result.trials) == n_trials and set(result.trials["state"]) == {"COMPLETE"}
    assert result.trials.loc[0, "feature"] == pytest.approx(LossWeights().feature)


def test_selection_trials_are_ray_tasks_with_their_own_resources(ray_session):
    """Every selection trial is a Ray task in a worker process, assigned exactly the CPUs the
    selection asks for; a round of one records what the sequential in-process study records,
    and rounds of two run on two workers at once and still give the same record run after run."""
    split = one_class_split(toy_corpus(24), 0)
    one_at_a_time = SelectionConfig(n_trials=3, epochs=1, val_fraction=0.25, max_concurrent=1, cpus_per_trial=0.5)
    on_ray = select_for_split(split, TINY, TRAIN, one_at_a_time, LossWeights(), seed=0)
    in_process = select_loss_weights(split.train_images, TINY, TRAIN, one_at_a_time, seed=0, on_ray=False)
    assert list(on_ray.trials.columns) == [
        "trial",
        "feature",
        "pixel",
        "image_adversarial",
        "latent_adversarial",
        "val_pseudo_auroc",
        "state",
    ]
    assert on_ray.trials.to_dict() == in_process.trials.to_dict() and on_ray.best == in_process.best
    assert in_process.placements == []
    assert [p["trial"] for p in on_ray.placements] == [0, 1, 2]
    assert all(p["pid"] != os.getpid() and p["resources"] == {"CPU": pytest.approx(0.5)} for p in on_ray.placements)

    in_rounds = dataclasses.replace(one_at_a_time, max_concurrent=2, cpus_per_trial=0.99)
    first = select_for_split(split, TINY, TRAIN, in_rounds, LossWeights(), seed=0)
    again = select_for_split(split, TINY, TRAIN, in_rounds, LossWeights(), seed=0)
    assert first.trials.to_dict() == again.trials.to_dict() and first.best == again.best
    assert all(p["resources"] == {"CPU": pytest.approx(0.99)} for p in first.placements)
    round_one = [p["pid"] for p in first.placements if p["trial"] in (0, 1)]
    assert len(set(round_one)) == 2  # trials 0 and 1 were in flight together, on two workers
    too_big = dataclasses.replace(one_at_a_time, cpus_per_trial=3.0)
    with pytest.raises(ValueError, match="cpus_per_trial=3"):
        select_for_split(split, TINY, TRAIN, too_big, LossWeights(), seed=0)


# ---------------------------------------------------------------------------- the job


def _toy_folders(root: Path) -> Path:
    """The toy corpus as ``class_folders`` (``blob`` = class 0, ``stripes`` = class 1)."""
    toy = toy_corpus(12)
    for image, label, sample in zip(toy.images, toy.labels, toy.sample_ids, strict=True):
        folder = root / toy.class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{sample.split('/')[1]}.png")
    return root


@pytest.mark.e2e
def test_sweep_job_end_to_end(ray_session, tmp_path):
    import mlflow

    from raylab.experiment import get_experiment, run

    root = _toy_folders(tmp_path / "digits")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "network: {width: 8, latent_dim: 4, downsamplings: 2, latent_hidden: 16}\n"
        "train: {epochs: 2, batch_size: 8, num_workers: 1}\n"
        "selection: {enabled: true, n_trials: 2, epochs: 1, val_fraction: 0.34}\n"
        "reconstructions_per_side: 2\n"
    )
    out = tmp_path / "summary.json"
    result = run(
        get_experiment("dcae_sweep"),
        [
            "--dataset",
            "class_folders",
            "--data-root",
            str(root),
            "--config",
            str(config),
            "--seeds",
            "0",
            "--summary-json",
            str(out),
            "--no-progress",
        ],
    )
    summary = json.loads(out.read_text())
    rows = summary["rows"]
    assert summary["classes"] == [0, 1] and summary["seeds"] == [0] and summary["selection"] is True
    assert all(
        "noise_ratio" not in r
        and r["class_name"] in ("blob", "stripes")
        and set(r["loss_weights"]) == {"feature", "pixel", "image_adversarial", "latent_adversarial"}
        for r in rows
    )
    assert {(r["method"], r["normal_class"], r["seed"]) for r in rows} == {
        (m, c, 0) for m in ("dcae", "ae_pixel", "dcae_pixel_metric", "dcae_no_adv") for c in (0, 1)
    }
    assert all(0.0 <= r["metrics"]["auroc"] <= 1.0 for r in rows)
    assert list(result["table"]["normal_class"]) == ["0", "1", "mean"]
    assert result["text"].startswith("class_folders: one-class AUROC per normal class (mean ± std over seeds 0)\n")
    assert "blob" in result["text"] and "n_seeds" in result["text"]
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("raylab/dcae_sweep")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")
    trial_runs = [r for r in runs if r.info.run_name in ("c0-s0", "c1-s0")]
    assert len(trial_runs) == 2
    trial = next(r for r in trial_runs if r.info.run_name == "c0-s0")
    artifacts = {a.path for a in client.list_artifacts(trial.info.run_id)}
    assert {"reconstructions.png", "selection_trials.csv"} <= artifacts
    method_runs = {
        r.data.tags["raylab.method"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial.info.run_id
    }
    assert sorted(method_runs) == sorted(METHODS)

    # Each method's network is an MLflow model: loaded from the store and fed the test images
    # as encoded files, it reproduces the method's logged AUROC (DCAE scores in discriminator space).
    resolved = result["config"]
    data = decode_corpus(
        load_one_class_corpus("class_folders", root, resolved.protocol),
        resolved.protocol.color,
        resolved.protocol.resize_to,
    )
    split = one_class_split(data, 0, max_test=resolved.max_test_images, seed=resolved.protocol.split_seed)
    images = pd.DataFrame({"image": [encode_png(image[0]) for image in split.test_images]})
    for method in ("dcae", "ae_pixel"):
        uri = json.loads(method_runs[method].data.tags["raylab.models"])[split.class_name]
        scores = mlflow.pyfunc.load_model(uri).predict(images)["novelty_score"].to_numpy()
        logged = next(r for r in rows if (r["method"], r["normal_class"]) == (method, 0))["metrics"]["auroc"]
        assert image_metrics(split.test_novel, scores)["image_auroc"] == pytest.approx(logged), method


def _resolved(*argv: str):
    from raylab.experiment import get_experiment, run

    return run(get_experiment("dcae_sweep"), [*argv, "--print-config"])["config"]


def test_the_mnist_config_file_is_the_cpu_size(capsys):
    from raylab.config import load_config
    from raylab.methods.dcae.config import DCAESweepConfig, cpu_config

    configs = Path(__file__).resolve().parents[1] / "raylab" / "configs" / "dcae"
    spelled_out = load_config(DCAESweepConfig, configs / "mnist.yaml")
    assert dataclasses.replace(spelled_out, protocol=cpu_config().protocol) == cpu_config()
    full = load_config(DCAESweepConfig, configs / "cifar10_full.yaml")
    assert full.network == NetworkConfig() and full.train.epochs == 200 and full.protocol.color == "RGB"
    # Through the runner: the dataset's packaged overlay over the cpu profile is the CPU size;
    # a *_full file gives the full size over either profile.
    assert _resolved("--dataset", "mnist") == spelled_out
    assert _resolved("--dataset", "cifar10").network.latent_dim == 32
    for profile in ("cpu", "full"):
        assert _resolved("--dataset", "cifar10", "--profile", profile, "--config", "dcae/cifar10_full") == full
        mnist_full = _resolved("--profile", profile, "--config", "dcae/mnist_full")
        assert mnist_full == dataclasses.replace(DCAESweepConfig(), network=NetworkConfig(downsamplings=2))
    assert _resolved("--dataset", "class_folders") == cpu_config()  # no overlay: the cpu profile


def test_quick_and_no_selection_are_the_documented_reductions(capsys):
    """``--quick`` keeps what the job always ran: the first seed, classes 0 and 1, 4 epochs,
    2 selection trials of 2 epochs, 1000 test images (README numbers stay reproducible). The
    CPU size runs no selection (its short trials mis-rank weightings) unless it is switched on;
    the full size selects."""
    config = _resolved("--quick", "--dataset", "mnist")
    assert config.seeds == (0,) and config.normal_classes == (0, 1) and config.max_test_images == 1000
    assert config.train.epochs == 4 and (config.selection.n_trials, config.selection.epochs) == (2, 2)
    assert not config.selection.enabled and config.network == _resolved("--dataset", "mnist").network
    assert _resolved("--dataset", "mnist").train.epochs == 30
    assert _resolved("--set", "selection.enabled=true").selection.enabled
    assert not _resolved("--no-selection", "--set", "selection.enabled=true").selection.enabled
    assert _resolved("--config", "dcae/mnist_full").selection.enabled
    assert _resolved().max_test_images is None


def test_bad_options_fail_before_ray_naming_the_option(tmp_path, capsys, monkeypatch):
    from raylab.experiment import get_experiment, run

    def no_ray(**kwargs):
        raise AssertionError("Ray must not start for a bad option")

    monkeypatch.setattr("raylab.experiment.session.init_ray", no_ray)
    root = _toy_folders(tmp_path / "digits")
    base = ["--dataset", "class_folders", "--data-root", str(root)]
    cases = [
        (["--set", "train.epochs=notanumber"], "train.epochs"),
        (["--set", "selection.val_fraction=1.5"], "val_fraction"),
        (["--set", "methods=[dcae, ocgan]"], "ocgan"),
        (["--classes", "0,,1"], "--classes"),
        (["--classes", "0,x"], "--classes"),
        (["--classes", "0,7"], "[7]"),
        (["--seeds", "0;1"], "--seeds"),
        (["--set", "selection.pseudo_novelties=[mixup]"], "mixup"),
    ]
    for extra, named in cases:
        with pytest.raises(SystemExit) as exit_info:
            run(get_experiment("dcae_sweep"), base + extra)
        assert exit_info.value.code == 2, extra
        assert named in capsys.readouterr().err, extra
    with pytest.raises(SystemExit) as exit_info:
        run(get_experiment("dcae_sweep"), ["--dataset", "class_folders", "--data-root", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "missing" in capsys.readouterr().err
