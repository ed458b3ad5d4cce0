"""A Ray Train run's name is its identity: the folder its checkpoints live in.

A rerun with the same inputs must find the run (and resume or reuse it); a rerun with any
input changed must not, or it would continue someone else's training.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raylab.digests import content_digest
from raylab.train.harness import run_name


@dataclasses.dataclass(frozen=True)
class _Schedule:
    epochs: int = 10
    lr: float = 0.1


def test_a_run_name_changes_with_every_input_and_only_with_them():
    images = np.arange(12, dtype=np.uint8).reshape(3, 4)
    settings = {"train": _Schedule(), "seed": 0}
    name = run_name("method", images, settings=settings)
    assert name == run_name("method", images.copy(), settings={"seed": 0, "train": _Schedule()})
    changed = [
        run_name("other", images, settings=settings),
        run_name("method", images[::-1], settings=settings),
        run_name("method", images, settings={**settings, "seed": 1}),
        run_name("method", images, settings={**settings, "train": _Schedule(lr=0.01)}),
    ]
    assert len({name, *changed}) == 5
    # A dataclass enters as its fields, nested ones included: the names runs already have.
    plain = {"train": {"epochs": 10, "lr": 0.1}, "seed": 0}
    assert name == f"method-{content_digest(images, settings=plain)}"
    pair = run_name("method", images, settings={"variants": {"a": (_Schedule(), _Schedule(lr=0.5))}}, length=12)
    fields = {"variants": {"a": [plain["train"], {"epochs": 10, "lr": 0.5}]}}
    assert pair == f"method-{content_digest(images, settings=fields, length=12)}"
