"""Checkpoints and cached training states are loaded without running code.

Ray Train checkpoints and the final states of trained models live in the shared cache
(``RAYLAB_CACHE_DIR``) under predictable names. A pickle planted there must not execute when
the next job loads it: every load goes through ``torch.load(..., weights_only=True)``
(:func:`raylab.train.harness.load_state`). These tests plant a pickle whose ``__reduce__``
would create a marker file, load it through raylab's own code paths, and check that the load
is refused and the marker never appears. No Ray cluster is started.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raylab.train import harness

ROOT = Path(__file__).resolve().parents[1]


class _Planted:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Planted(marker), "epoch": 0, "history": []}, path)
    return path


def _refused(load, marker: Path) -> None:
    with pytest.raises(pickle.UnpicklingError):
        load()
    assert not marker.exists(), "the planted pickle ran code"


def test_the_planted_pickle_is_live(tmp_path):
    """Guard for the tests below: an unrestricted load of the same file does run the payload."""
    marker = tmp_path / "pwned"
    path = _plant(tmp_path / "state.pt", marker)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_a_planted_checkpoint_is_refused_by_load_result_state(tmp_path):
    import ray.train

    marker = tmp_path / "pwned"
    checkpoint_dir = tmp_path / "run" / "checkpoint_000000"
    _plant(checkpoint_dir / harness.STATE_FILE, marker)
    result = SimpleNamespace(
        checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)), path=str(tmp_path / "run")
    )
    _refused(lambda: harness.load_result_state(result), marker)


def test_a_planted_checkpoint_is_refused_on_restore_in_a_train_worker(tmp_path, monkeypatch):
    """What a (restarted) Ray Train worker runs first: ``restore_state`` / ``resume``."""
    import ray.train

    marker = tmp_path / "pwned"
    checkpoint_dir = tmp_path / "checkpoint_000003"
    _plant(checkpoint_dir / harness.STATE_FILE, marker)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(checkpoint_dir)))
    _refused(harness.restore_state, marker)
    _refused(lambda: harness.resume(torch.nn.Linear(2, 2)), marker)


def test_a_planted_final_state_is_refused_by_the_nnguide_classifier_cache(tmp_path):
    from raylab.artefacts import write_manifest
    from raylab.methods.nnguide.config import TrainConfig
    from raylab.methods.nnguide.training import FINAL_STATE, run_name, train_classifier
    from raylab.tasks.ood.config import ClassifierConfig

    pixels = np.zeros((4, 1, 8, 8), np.float32)
    labels = np.array([0, 1, 2, 3], np.int64)
    model, train = ClassifierConfig(), TrainConfig(epochs=1)
    marker = tmp_path / "pwned"
    planted = _plant(tmp_path / "runs" / run_name(pixels, labels, model, train, 0) / FINAL_STATE, marker)
    # Whoever can plant the file can plant its manifest too: the check passes, the load must refuse.
    write_manifest(planted.parent, [planted.name])
    _refused(
        lambda: train_classifier(pixels, labels, model, train, seed=0, storage_path=str(tmp_path / "runs")), marker
    )


def test_a_planted_final_state_is_refused_by_the_ckd_cache(tmp_path):
    from raylab.methods.ckd.config import CKDConfig, Variant
    from raylab.methods.ckd.pairs import PairSet
    from raylab.methods.ckd.training import FINAL_STATE, run_name, train_ckd

    n = 4
    pairs = PairSet(
        faces=np.zeros((n, 3, 8, 8), np.float32),
        periocular=np.zeros((n, 3, 4, 8), np.float32),
        labels=np.arange(n, dtype=np.int64) % 2,
        identities=np.arange(n, dtype=np.int64),
        sample_ids=np.array([f"s{i}" for i in range(n)]),
    )
    ckd, variant = CKDConfig(), Variant()
    workers = ckd.train.num_workers
    marker = tmp_path / "pwned"
    _plant(tmp_path / "runs" / run_name(pairs, pairs, ckd, variant, 0, workers) / FINAL_STATE, marker)
    _refused(lambda: train_ckd(pairs, pairs, 2, ckd, variant, seed=0, storage_path=str(tmp_path / "runs")), marker)


def test_a_planted_final_state_is_refused_by_the_dcae_cache(tmp_path):
    from raylab.methods.dcae.config import TRAINED, LossWeights, NetworkConfig, TrainConfig
    from raylab.methods.dcae.training import FINAL_STATE, train_variants

    images = np.zeros((4, 1, 16, 16), np.uint8)
    variants = {"ae": (TRAINED["ae"], LossWeights())}
    network, train = (
        NetworkConfig(width=8, latent_dim=4, downsamplings=2, latent_hidden=16),
        TrainConfig(epochs=1, num_workers=1),
    )
    marker = tmp_path / "pwned"
    _plant(tmp_path / "runs" / "planted" / FINAL_STATE.format(epochs=1), marker)
    _refused(
        lambda: train_variants(
            images, variants, network, train, seed=0, storage_path=str(tmp_path / "runs"), name="planted"
        ),
        marker,
    )


def test_states_with_numpy_round_trip_through_the_safe_loader(tmp_path):
    """What the trained methods checkpoint (state dicts, numpy masks and scalars, plain
    containers) is written so that ``weights_only=True`` reads it, and comes back as it was."""
    network = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    optimizer = torch.optim.Adam(network.parameters())
    network(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    history = [np.array([True, False, True]), np.array([False, False, True])]
    state = {
        "model": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "history": history,
        "metrics": [{"loss": np.float32(0.5), "kept": np.int64(2)}],
        "best": {"accuracy": 0.75, "model": None, "pair": (1, np.arange(3))},
    }
    path = tmp_path / harness.STATE_FILE
    harness.save_state(state, path)
    torch.load(path, map_location="cpu", weights_only=True)  # the raw file passes the restricted loader
    loaded = harness.load_state(path)
    assert loaded["epoch"] == 3 and loaded["best"]["accuracy"] == 0.75 and loaded["best"]["model"] is None
    assert len(loaded["history"]) == 2
    for got, want in zip(loaded["history"], history, strict=True):
        assert isinstance(got, np.ndarray) and got.dtype == np.bool_ and np.array_equal(got, want)
    assert loaded["metrics"] == [{"loss": 0.5, "kept": 2}]
    assert loaded["best"]["pair"][0] == 1 and np.array_equal(loaded["best"]["pair"][1], np.arange(3))
    assert isinstance(loaded["model"], collections.OrderedDict)
    assert loaded["model"]._metadata == network.state_dict()._metadata  # BatchNorm's version survives
    for key, tensor in network.state_dict().items():
        assert torch.equal(loaded["model"][key], tensor), key
    torch.optim.Adam(network.parameters()).load_state_dict(loaded["optimizer"])
    assert isinstance(history[0], np.ndarray)  # the caller's state is not changed by saving it


def test_object_arrays_are_not_checkpointed(tmp_path):
    with pytest.raises(TypeError):
        harness.save_state({"ids": np.array(["a", None], dtype=object)}, tmp_path / "state.pt")


def test_no_unrestricted_torch_load_in_raylab():
    pattern = re.compile(r"weights_only\s*=\s*False")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "raylab").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders
