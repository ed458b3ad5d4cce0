"""Fault tolerance of Ray Train runs: a worker killed mid-run (SIGKILL, as a lost node or the
OOM killer would) is restarted by ``FailureConfig(max_failures)``, resumes from the last
checkpoint, and ends exactly where an uninterrupted run ends.

The loop is the one every MeDS network trains in, ``meds_loop`` (stage 2, then stage 3 from
the distilled weights, in one Train run), on two DDP workers with MeDS's default dropout of
0.2, and one worker is killed in each stage: the restart must resume inside the stage its
checkpoint names. The batch order is a function of (seed, stage, epoch, pass, rank) and every
worker's torch generator state is in the checkpoint, so a resumed run must reproduce the
uninterrupted run bit for bit (exact equality of the final weights, distilled weights, kept
masks and losses). Interrupted and restarted sweeps are covered end to end in
``test_ops_jobs.py`` (``ray job stop`` + resubmission).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ops_support import descendants

from raylab.methods.meds.config import DistillationConfig, SelectionConfig

pytestmark = pytest.mark.ops

EPOCHS = 6  # per stage: the run registers 2 x EPOCHS checkpoints
DROPOUT = 0.2  # MeDS's default (DistillationConfig.dropout)
KILLS = (2, EPOCHS + 2)  # after 2 checkpoints of stage 2, then after 2 of stage 3


def _loop_config() -> dict:
    rng = np.random.default_rng(0)
    return {
        "tokens": rng.normal(size=(32, 49, 16)).astype(np.float32),
        "targets": rng.random((32, 49)).astype(np.float32),
        "model": {
            "groups": [[[0, 8]], [[8, 16]]],
            "in_dim": 16,
            "hidden_dim": 32,
            "decoder_blocks": 2,
            "heads": 2,
            "dropout": DROPOUT,
        },
        "seed": 0,
        "distillation": DistillationConfig(
            lr=2e-3,
            final_lr=2e-4,
            warmup_iterations=10,
            weight_decay=1e-4,
            grad_clip=0.1,
            loss_weight=10.0,
            loss="mse",
            batch_size=8,
            epochs=EPOCHS,
            iterations=EPOCHS * 16,
        ),
        "selection": SelectionConfig(
            iterations=EPOCHS * 16, epochs=EPOCHS, batch_size=8, hard_mining_ramp_iterations=16, hard_mining_factor=0.1
        ),
        "class_ids": np.zeros(32, dtype=np.int64),
        "top_fraction": 0.1,
    }


def _checkpoints(storage: Path) -> list[Path]:
    return sorted(p for p in storage.glob("*/checkpoint_*") if p.is_dir())


def _committed(storage: Path) -> int:
    """Checkpoints the Train controller has registered (its snapshot), not just written:
    a restart resumes from the latest registered one."""
    snapshot = next(storage.glob("*/checkpoint_manager_snapshot.json"), None)
    try:
        return len(json.loads(snapshot.read_text())["checkpoint_results"]) if snapshot else 0
    except (OSError, ValueError, KeyError):  # being rewritten
        return 0


class WorkerKiller(threading.Thread):
    """Each time the run has registered the next of ``thresholds`` checkpoints, SIGKILL one of
    its live Train workers (the restarted group's, after the first kill)."""

    def __init__(self, storage: Path, thresholds: tuple[int, ...]) -> None:
        super().__init__(daemon=True)
        self.storage = storage
        self.thresholds = thresholds
        self.kills: list[tuple[int, float]] = []  # (checkpoints registered before, time)
        self.stop = threading.Event()
        self.killed_pids: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.kills) < len(self.thresholds):
            written = _committed(self.storage)
            if written >= self.thresholds[len(self.kills)]:
                workers = [
                    pid
                    for pid, cmd in descendants(os.getpid())
                    if cmd.startswith("ray::RayTrainWorker") and pid not in self.killed_pids
                ]
                if workers:
                    os.kill(workers[-1], signal.SIGKILL)
                    self.killed_pids.add(workers[-1])
                    self.kills.append((written, time.time()))
            time.sleep(0.05)


def _position(checkpoint: Path) -> int:
    """A checkpoint's place in the run: stage 2's epochs 0..EPOCHS-1, then stage 3's."""
    from raylab.train.harness import STATE_FILE, load_state

    state = load_state(checkpoint / STATE_FILE)
    return int(state["epoch"]) + (EPOCHS if state["stage"] == "selection" else 0)


def test_killed_train_worker_resumes_from_checkpoint_and_matches(ray_session, tmp_path):
    """One worker killed in stage 2 and one in stage 3 of the same run: each restart resumes
    in the stage it was in, and the run ends identical to an uninterrupted one."""
    from raylab.methods.meds.training import meds_loop
    from raylab.train import TrainSpec, fit, load_result_state

    config = _loop_config()
    keep = 3 * EPOCHS
    reference = fit(
        meds_loop, config, TrainSpec("uninterrupted", storage_path=str(tmp_path / "a"), checkpoints_to_keep=keep)
    )

    storage = tmp_path / "b"
    killer = WorkerKiller(storage, KILLS)
    killer.start()
    spec = TrainSpec("killed", max_failures=len(KILLS), storage_path=str(storage), checkpoints_to_keep=keep)
    try:
        resumed = fit(meds_loop, config, spec)
    finally:
        killer.stop.set()
    assert len(killer.kills) == len(KILLS), f"the run ended after {len(killer.kills)} of {len(KILLS)} kills"
    for (written, killed_at), threshold, stage_end in zip(killer.kills, KILLS, (EPOCHS, 2 * EPOCHS), strict=True):
        assert threshold <= written < stage_end, (written, threshold)
        # The restarted workers went on from the last registered checkpoint, in its stage: every
        # checkpoint written after the kill is at or past the epoch in flight (whose report never
        # completed), never the stage's first epoch again.
        after_kill = [_position(c) for c in _checkpoints(storage) if c.stat().st_mtime > killed_at]
        assert after_kill and min(after_kill) >= written - 1, after_kill
        assert max(after_kill) == 2 * EPOCHS - 1

    expected, actual = load_result_state(reference), load_result_state(resumed)
    assert expected["stage"] == actual["stage"] == "selection"
    assert expected["epoch"] == actual["epoch"] == EPOCHS - 1
    for weights in ("model", "distilled"):
        for key, tensor in expected[weights].items():
            assert torch.equal(tensor, actual[weights][key]), (weights, key)
    assert [m.tolist() for m in expected["history"]] == [m.tolist() for m in actual["history"]]
    assert expected["reports"] == actual["reports"]
    assert reference.metrics["selection_loss"] == resumed.metrics["selection_loss"]
