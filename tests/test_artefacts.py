"""Stored artefacts check themselves: a damaged file is named and never silently read.

The manifest mechanism on its own (truncation, a flipped bit, a missing or unlisted file,
stale staging folders), the saved-state loader naming the file it cannot read, and a real
Ray Train run whose newest checkpoint was damaged resuming from the previous one. The
feature cache's own recovery is tested in ``test_features.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from raylab.artefacts import MANIFEST, CorruptArtefactError, remove_stale_staging, verify, write_manifest
from raylab.train import harness


@pytest.fixture
def entry(tmp_path) -> Path:
    directory = tmp_path / "entry"
    directory.mkdir()
    (directory / "a.bin").write_bytes(os.urandom(4096))
    (directory / "b.txt").write_text("hello")
    write_manifest(directory)
    return directory


def test_an_intact_entry_passes(entry):
    verify(entry)
    verify(entry, ["b.txt"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "a.bin").write_bytes((d / "a.bin").read_bytes()[:100]),
            r"a.bin: 100 bytes, the manifest says 4096",
        ),
        (
            lambda d: (d / "a.bin").write_bytes(
                bytes([(d / "a.bin").read_bytes()[0] ^ 1]) + (d / "a.bin").read_bytes()[1:]
            ),
            r"a.bin: checksum differs",
        ),
        (lambda d: (d / "b.txt").unlink(), r"b.txt: missing \(listed in"),
        (lambda d: (d / MANIFEST).unlink(), r"manifest.json: missing"),
        (lambda d: (d / MANIFEST).write_text("{not json"), r"manifest.json: unreadable manifest"),
    ],
    ids=["truncated", "flipped-bit", "file-missing", "manifest-missing", "manifest-garbled"],
)
def test_damage_is_named(entry, damage, message):
    damage(entry)
    with pytest.raises(CorruptArtefactError, match=message):
        verify(entry)


def test_a_file_outside_the_manifest_is_refused(entry):
    (entry / "c.bin").write_bytes(b"planted")
    with pytest.raises(CorruptArtefactError, match="c.bin: not in its manifest"):
        verify(entry, ["c.bin"])


def test_only_stale_staging_folders_are_removed(tmp_path):
    old, fresh = tmp_path / ".staging-old", tmp_path / ".staging-fresh"
    old.mkdir(), fresh.mkdir()
    (old / "patches.npy").write_bytes(b"x" * 10)
    day_ago = time.time() - 24 * 3600
    os.utime(old, (day_ago, day_ago))
    assert remove_stale_staging(tmp_path) == [old]
    assert not old.exists() and fresh.exists()


def test_a_truncated_saved_state_names_its_file(tmp_path):
    path = tmp_path / "state.pt"
    harness.save_state({"model": {"w": torch.ones(64, 64)}, "epoch": 3}, path)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(CorruptArtefactError, match=f"{path}: cannot read the saved state"):
        harness.load_state(path)


def _counting_loop(config):
    """Adds 1 to a counter each epoch, starting from whatever checkpoint Ray Train hands back;
    the state keeps every epoch an attempt started at, so a restart shows in the history."""
    state = harness.restore_state()
    start = 0 if state is None else state["epoch"] + 1
    value = torch.zeros(1) if state is None else state["value"]
    starts = [start] if state is None else [*state["starts"], start]
    for epoch in range(start, config["epochs"]):
        value = value + 1
        harness.report_epoch({"epoch": epoch}, {"value": value, "epoch": epoch, "starts": starts})


# Fault tolerance (an injected fault: a damaged file): the ops tier.
@pytest.mark.ops
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(ray_session, tmp_path):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import a test module
    # One restart allowed, as the jobs allow: a Train process lost to the machine (not to the
    # damaged file, which is read inside the loop) must not decide this test.
    spec = harness.TrainSpec(
        "fallback", num_workers=1, storage_path=str(tmp_path), checkpoints_to_keep=2, max_failures=1
    )
    first = harness.fit(_counting_loop, {"epochs": 2}, spec)
    newest = Path(first.checkpoint.path) / harness.STATE_FILE
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))

    resumed = harness.load_result_state(harness.fit(_counting_loop, {"epochs": 3}, spec))
    # The damaged epoch-1 checkpoint was skipped: the second run resumed after epoch 0 and redid
    # epoch 1 (a restart after that would only add a later start).
    assert resumed["starts"][:2] == [0, 1]
    assert resumed["epoch"] == 2 and resumed["value"].item() == 3.0
