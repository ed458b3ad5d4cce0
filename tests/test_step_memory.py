"""Accelerator memory counted on the meta device, checked against what can be worked out by hand."""

from __future__ import annotations

import torch
from torch import nn

from raylab.step_memory import step_peak_bytes

FLOAT32 = 4


def test_inference_counts_the_activations_alive_together_not_all_of_them():
    """Ten layers in a row under no_grad: each output is freed once the next exists, so the peak
    is the input and two consecutive outputs, not ten outputs (a counter that never frees would
    report the sum)."""
    width, batch, layers = 256, 64, 10

    def build() -> nn.Module:
        return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])

    peak = step_peak_bytes(build, lambda net: net(torch.empty(batch, width)), train=False)
    weights = layers * (width * width + width) * FLOAT32
    activation = batch * width * FLOAT32
    assert peak == weights + 3 * activation


def test_a_training_step_holds_weights_gradients_moments_and_saved_activations():
    width, batch = 512, 32

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def step(net: nn.Module) -> torch.Tensor:
        return net(torch.empty(batch, width)).pow(2).mean()

    parameters = 2 * (width * width + width) * FLOAT32
    activation = batch * width * FLOAT32
    inference = step_peak_bytes(build, lambda net: net(torch.empty(batch, width)), train=False)
    training = step_peak_bytes(build, step, train=True, optimizer_moments=2)
    # Weights + gradients + two Adam moments, and at least the two activations the backward
    # pass keeps (the input, for the first layer's weight gradient, and the ReLU's output);
    # no more than a few activations beyond them.
    assert 4 * parameters + 2 * activation <= training <= 4 * parameters + 8 * activation
    assert training > inference + 3 * parameters - activation
