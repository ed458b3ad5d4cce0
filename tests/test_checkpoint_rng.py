"""A checkpoint holds every global random generator a training loop may draw from.

A worker restarted from a checkpoint must continue torch's, numpy's and Python's streams
where the checkpoint left them; otherwise a resumed run's dropout masks, augmentations or
sampling differ from an uninterrupted run's and its results drift. The states travel through
:func:`save_state` / :func:`load_state`, so they must also survive ``weights_only=True``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from raylab.train import harness


def _draws() -> tuple[list[float], list[float], list[float]]:
    """A few draws from each generator, Gaussian ones included (they cache a second value)."""
    return (
        torch.rand(4).tolist() + torch.randn(3).tolist(),
        np.random.rand(4).tolist() + [float(np.random.standard_normal())],
        [random.random() for _ in range(4)] + [random.gauss(0.0, 1.0)],
    )


def test_restored_generator_states_reproduce_the_next_draws(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    _draws()
    # An odd number of Gaussian draws leaves numpy and Python each holding a cached value,
    # which is part of the state and must come back too.
    np.random.standard_normal(), random.gauss(0.0, 1.0)
    path = tmp_path / harness.STATE_FILE
    harness.save_state({"epoch": 0, harness.RNG_STATES: [harness._rng_state()]}, path)
    expected = _draws()

    # Move every generator elsewhere, as a fresh worker process would be.
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    assert _draws() != expected

    restored = harness.load_state(path)  # weights_only=True underneath
    harness._set_rng_state(restored[harness.RNG_STATES][0])
    assert _draws() == expected


def test_a_checkpoint_without_numpy_and_python_states_still_restores_torch(tmp_path):
    """Checkpoints written before numpy's and Python's states were saved hold torch's only."""
    torch.manual_seed(5)
    path = tmp_path / harness.STATE_FILE
    harness.save_state({harness.RNG_STATES: [{"torch": torch.get_rng_state()}]}, path)
    expected = torch.rand(5).tolist()
    np_before = np.random.get_state()[1].copy()
    harness._set_rng_state(harness.load_state(path)[harness.RNG_STATES][0])
    assert torch.rand(5).tolist() == expected
    assert np.array_equal(np.random.get_state()[1], np_before)
