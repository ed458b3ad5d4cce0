"""Accelerator memory of one step, counted without an accelerator.

A full-size run goes to a GPU cluster, but ``--dry-run`` runs on a laptop that has none, and
a smoke run on a CPU cannot measure what a GPU would hold. What a step holds on the device is
mostly a property of the network and the batch, though: its weights and buffers, the
optimiser's moments, the gradients, and the activations alive together at the step's peak.
So the step is run on PyTorch's ``meta`` device (shapes only: no memory, no arithmetic), with a
dispatch mode that adds every new storage when an operator returns it and subtracts it when
the storage is freed, the same bookkeeping a caching allocator does. The peak it reports is
a lower bound on a real device's: the CUDA context, cuDNN workspaces and the allocator's
fragmentation come on top (typically a few hundred MB to a few GB).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any


def _live_bytes_mode() -> Any:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        """The running and peak sum of storages created under the mode and still referenced."""

        def __init__(self) -> None:
            super().__init__()
            self.live = 0
            self.peak = 0
            self._alive: set[int] = set()

        def _freed(self, key: int, size: int) -> None:
            self._alive.discard(key)
            self.live -= size

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # A view or an in-place result shares an input's storage (a weight's transpose,
            # a reshaped activation): it allocates nothing.
            inputs = {
                t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
            }
            for tensor in tree_flatten(out)[0]:
                if not isinstance(tensor, torch.Tensor):
                    continue
                storage = tensor.untyped_storage()
                key = storage._cdata  # one id per storage, shared by its views
                if key in self._alive or key in inputs:
                    continue
                size = storage.nbytes()
                self._alive.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._freed, key, size)
            return out

    return LiveBytes()


def step_peak_bytes(
    build: Callable[[], Any], step: Callable[[Any], Any], *, train: bool, optimizer_moments: int = 0
) -> int:
    """Peak device bytes of one step of the module ``build()`` makes.

    ``step(module)`` makes its own inputs (they are created on the meta device) and returns the
    loss when ``train`` (its backward pass is part of the step) or the outputs otherwise.
    ``optimizer_moments``: tensors the optimiser keeps per trainable parameter (Adam 2, SGD with
    momentum 1), allocated at the first update and held for the whole run.
    """
    import torch

    with torch.device("meta"):
        module = build()
    module.train(train)
    resident = sum(t.nbytes for t in module.parameters()) + sum(t.nbytes for t in module.buffers())
    trainable = sum(p.nbytes for p in module.parameters() if p.requires_grad)
    counter = _live_bytes_mode()
    with torch.device("meta"), torch.set_grad_enabled(train), counter:
        result = step(module)
        if train:
            result.backward()
        del result
    return resident + counter.peak + optimizer_moments * trainable


def state_bytes(build: Any) -> int:
    """Bytes of the state dict (parameters and buffers) of the module ``build()`` makes, built on
    the meta device: what a logged model's weight file holds, known before any weights exist."""
    import torch

    with torch.device("meta"):
        state = build().state_dict()
    return sum(tensor.numel() * tensor.element_size() for tensor in state.values())
