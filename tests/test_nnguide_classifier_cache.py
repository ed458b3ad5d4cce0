"""The NNGuide trained-classifier cache checks itself before it is reused.

A finished training run leaves its final weights (``final_state.pt``) with a manifest beside
them, and a later sweep that trains the same classifier reads them instead of training again.
Weights that were damaged or replaced since must not be used: the run is discarded, with a
warning naming the file, and the classifier is trained again, to the same weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from raylab.artefacts import MANIFEST, verify


@pytest.fixture(scope="module")
def tiny_training_set():
    """The first 96 ``id_fit`` images of the job's ``--quick`` benchmark, as the job decodes them."""
    from raylab.experiment import get_experiment, run
    from raylab.methods.nnguide.experiment import training_data
    from raylab.tasks.ood.benchmark import build_benchmark

    config = run(get_experiment("nnguide_eval"), ["--quick", "--print-config"])["config"]
    bench = build_benchmark(config.benchmark, None, 0, max_per_role=config.max_test_images_per_role)
    pixels, labels = training_data(bench, config)
    # One worker and two short epochs: enough to write checkpoints and final weights, and
    # deterministic on CPU, so a retrained classifier can be compared weight for weight.
    train = dataclasses.replace(config.train, epochs=2, num_workers=1, batch_size=32)
    return pixels[:96], labels[:96], config.classifier, train


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# Fault tolerance (an injected fault: a damaged file): the ops tier.
@pytest.mark.ops
def test_damaged_or_unvouched_final_weights_are_named_discarded_and_retrained(ray_session, tmp_path, tiny_training_set):
    from raylab.methods.nnguide.training import FINAL_STATE, train_classifier

    pixels, labels, model, train = tiny_training_set
    first = train_classifier(pixels, labels, model, train, seed=0, storage_path=str(tmp_path))
    run = Path(first.run_path)
    final = run / FINAL_STATE
    verify(run, [FINAL_STATE])  # written with a manifest

    # Reused while intact: the run folder is kept, not trained again.
    marker = run / "reuse-marker"
    marker.write_text("the run was kept")
    again = train_classifier(pixels, labels, model, train, seed=0, storage_path=str(tmp_path))
    assert marker.exists() and again.metrics == first.metrics

    _flip_one_byte(final)
    with pytest.warns(RuntimeWarning, match=rf"discarding the cache entry .*{FINAL_STATE}: checksum differs"):
        retrained = train_classifier(pixels, labels, model, train, seed=0, storage_path=str(tmp_path))
    assert not marker.exists()  # the damaged run was removed, not resumed
    verify(run, [FINAL_STATE])
    assert retrained.state_dict.keys() == first.state_dict.keys()
    for key, value in first.state_dict.items():
        assert torch.equal(retrained.state_dict[key], value), key

    # A job killed between writing the weights and their manifest leaves weights nobody vouches for.
    (run / MANIFEST).unlink()
    with pytest.warns(RuntimeWarning, match=rf"{MANIFEST}: missing"):
        train_classifier(pixels, labels, model, train, seed=0, storage_path=str(tmp_path))
    verify(run, [FINAL_STATE])
