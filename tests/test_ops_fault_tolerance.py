"""Fault tolerance of Ray Train runs: a worker killed mid-run (SIGKILL, as a lost node or the
OOM killer would) is restarted by ``FailureConfig(max_failures)``, resumes from the last
checkpoint, and ends exactly where an uninterrupted run ends.

The loops are MeDS's real stage-2 and stage-3 loops (``distillation_loop``, then
``selection_loop`` from the distilled weights) on two DDP workers, with MeDS's default
dropout of 0.2: the batch order is a function of (seed, epoch, rank) and every worker's
torch generator state is in the checkpoint, so a resumed run must reproduce the
uninterrupted run bit for bit (exact equality of the final weights, kept masks and losses).
Interrupted and restarted sweeps are covered end to end in ``test_ops_jobs.py``
(``ray job stop`` + resubmission).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ops_support import descendants

from raylab.methods.meds.config import DistillationConfig

pytestmark = pytest.mark.ops

EPOCHS = 6
DROPOUT = 0.2  # MeDS's default (DistillationConfig.dropout)


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
        "schedule": DistillationConfig(
            lr=2e-3,
            final_lr=2e-4,
            warmup_iterations=10,
            weight_decay=1e-4,
            grad_clip=0.1,
            loss_weight=10.0,
            loss="mse",
            batch_size=8,
            epochs=EPOCHS,
            iterations=EPOCHS * 40,
        ),
    }


def _checkpoints(storage: Path) -> list[Path]:
    return sorted(p for p in storage.glob("*/checkpoint_*") if p.is_dir())


def _committed(storage: Path) -> int:
    """Checkpoints the Train controller has registered (its snapshot), not just written:
    a restart resumes from the latest registered one."""
    import json

    snapshot = next(storage.glob("*/checkpoint_manager_snapshot.json"), None)
    try:
        return len(json.loads(snapshot.read_text())["checkpoint_results"]) if snapshot else 0
    except (OSError, ValueError, KeyError):  # being rewritten
        return 0


class WorkerKiller(threading.Thread):
    """Once the run has registered ``after`` checkpoints, SIGKILL one of its Train workers."""

    def __init__(self, storage: Path, after: int) -> None:
        super().__init__(daemon=True)
        self.storage, self.after = storage, after
        self.killed: tuple[int, int, float] | None = None  # (pid, checkpoints registered before, time)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            written = _committed(self.storage)
            if written >= self.after:
                workers = [pid for pid, cmd in descendants(os.getpid()) if cmd.startswith("ray::RayTrainWorker")]
                if workers:
                    os.kill(workers[-1], signal.SIGKILL)
                    self.killed = (workers[-1], written, time.time())
                    return
            time.sleep(0.05)


def _selection_config(distilled_state: dict) -> dict:
    from raylab.methods.meds.config import SelectionConfig

    config = _loop_config()
    return {
        "tokens": config["tokens"],
        "model": config["model"],
        "seed": 0,
        "schedule": SelectionConfig(
            iterations=EPOCHS * 40, epochs=EPOCHS, batch_size=8, hard_mining_ramp_iterations=40, hard_mining_factor=0.1
        ),
        "class_ids": np.zeros(32, dtype=np.int64),
        "distilled_scores": np.random.default_rng(1).random(32),
        "initial_state": distilled_state,
        "grid": 7,
        "image_size": 28,
        "blur_sigma": 1.0,
        "top_fraction": 0.1,
    }


def _kill_one_worker_mid_run(loop, config: dict, storage: Path):
    """The run with one of its two workers SIGKILLed after two checkpoints, and when that happened."""
    from raylab.train import TrainSpec, fit

    killer = WorkerKiller(storage, after=2)
    killer.start()
    spec = TrainSpec("killed", num_workers=2, max_failures=2, storage_path=str(storage), checkpoints_to_keep=EPOCHS * 2)
    try:
        resumed = fit(loop, config, spec)
    finally:
        killer.stop.set()
    assert killer.killed is not None, "the run ended before a worker could be killed"
    _, written_before_kill, killed_at = killer.killed
    assert 2 <= written_before_kill < EPOCHS
    # The restarted workers went on from the last committed checkpoint: every checkpoint
    # written after the kill is of a later epoch than the ones before it (at most the epoch
    # in flight, whose report never completed, is redone), never epoch 0 again.
    after_kill = [_epoch(c) for c in _checkpoints(storage) if c.stat().st_mtime > killed_at]
    assert after_kill and min(after_kill) >= written_before_kill - 1, after_kill
    assert max(after_kill) == EPOCHS - 1
    return resumed


def _assert_identical(reference, resumed, loss: str) -> dict:
    from raylab.train import load_result_state

    final_a, final_b = load_result_state(reference), load_result_state(resumed)
    assert final_a["epoch"] == final_b["epoch"] == EPOCHS - 1
    for key, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][key]), key
    assert reference.metrics[loss] == resumed.metrics[loss]
    return final_a


def test_killed_train_worker_resumes_from_checkpoint_and_matches(ray_session, tmp_path):
    """Stage 2, then stage 3 from its weights: each killed mid-run, each identical to an uninterrupted run."""
    from raylab.methods.meds.training import distillation_loop, selection_loop
    from raylab.train import TrainSpec, fit, load_result_state

    config = _loop_config()
    reference = fit(
        distillation_loop,
        config,
        TrainSpec("uninterrupted", num_workers=2, storage_path=str(tmp_path / "a"), checkpoints_to_keep=EPOCHS * 2),
    )
    distilled = _assert_identical(
        reference, _kill_one_worker_mid_run(distillation_loop, config, tmp_path / "b"), "distillation_loss"
    )

    selection = _selection_config(distilled["model"])
    reference = fit(
        selection_loop,
        selection,
        TrainSpec("uninterrupted", num_workers=2, storage_path=str(tmp_path / "c"), checkpoints_to_keep=EPOCHS * 2),
    )
    resumed = _kill_one_worker_mid_run(selection_loop, selection, tmp_path / "d")
    final = _assert_identical(reference, resumed, "selection_loss")
    assert [m.tolist() for m in final["history"]] == [m.tolist() for m in load_result_state(resumed)["history"]]


def _epoch(checkpoint: Path) -> int:
    from raylab.train.harness import STATE_FILE

    return int(torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)["epoch"])
