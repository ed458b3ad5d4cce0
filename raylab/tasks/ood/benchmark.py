"""The OOD benchmark protocol: which images play which role, and how detectors are scored.

Roles (sample-id arrays of one :class:`Benchmark`):

* ``id_train``: the ID dataset's ``train`` split (CIFAR-10: 500 per class, drawn with the
  protocol seed): the only data detectors are fitted on (banks, statistics, ReAct).
* ``id_val`` / ``id_fit``: a seeded ``validation_fraction`` of each class of ``id_train``
  and the rest. Used only for hyperparameter selection (fit on ``id_fit``, select on
  ``id_val`` against the validation-OOD set) and, for a classifier trained here, as its
  training set (``id_fit``) so validation images are unseen by the network too.
* ``id_test``: the ID test images (CIFAR-10: the other 500 per class).
* ``ood/<name>``: every OOD set (CIFAR-10 benchmark: DTD 400, TinyImageNet 2,000, MNIST
  2,000), each resized to the classifier's input by the same transform as the ID data.

Scoring boundary: detectors return confidences (higher = more ID, OpenOOD's convention);
:func:`ood_scores` is the one place they are negated into raylab's convention (higher =
more OOD) before :func:`raylab.eval.ood.ood_metrics` sees them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylab.data import load_corpus
from raylab.eval.ood import ood_metrics
from raylab.tasks.ood.config import BenchmarkConfig
from raylab.tasks.ood.detectors import FittedDetector, ModelOutputs

METRIC_KEYS = ("auroc", "fpr95", "aupr_in", "aupr_out", "detection_acc")


@dataclass
class Benchmark:
    """The corpus (every image any role uses, once) and the sample ids of each role."""

    corpus: pa.Table
    id_classes: tuple[str, ...]
    roles: dict[str, np.ndarray]
    id_labels: dict[str, int]
    validation_ood: str | None

    @property
    def ood_names(self) -> list[str]:
        return [role.removeprefix("ood/") for role in self.roles if role.startswith("ood/")]

    def labels(self, role: str) -> np.ndarray:
        """Class indices (0..K-1 in ``id_classes`` order) of an ID role."""
        return np.array([self.id_labels[s] for s in self.roles[role]], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        return {role: len(ids) for role, ids in self.roles.items()}


def _rows(table: pa.Table, split: str, classes: tuple[str, ...] | None) -> pa.Table:
    mask = pc.equal(table.column("split"), split)
    if classes is not None:
        mask = pc.and_(mask, pc.is_in(table.column("class_name"), pa.array(list(classes))))
    return table.filter(mask)


def _seeded_subset(ids: np.ndarray, count: int | None, seed: int, salt: int) -> np.ndarray:
    if count is None or len(ids) <= count:
        return ids
    keep = np.random.default_rng((seed, salt)).permutation(len(ids))[:count]
    return ids[np.sort(keep)]


def _class_order(table: pa.Table) -> tuple[str, ...]:
    pairs = sorted(set(zip(table.column("label").to_pylist(), table.column("class_name").to_pylist(), strict=True)))
    names = [name for _, name in pairs]
    if len(names) != len(set(names)):
        raise ValueError("the ID dataset maps one class name to several labels")
    return tuple(names)


def build_benchmark(
    config: BenchmarkConfig,
    data_root: str | Path | None,
    seed: int,
    *,
    max_per_role: int | None = None,
) -> Benchmark:
    """Load the ID and OOD datasets and assign every image its role for protocol ``seed``.

    ``max_per_role`` keeps a seeded subset of each *test* role (``id_test``, ``ood/*``) for
    ``--quick``; the training roles stay whole, since the bank sizes follow from them. The
    full protocol uses every image.
    """
    id_table = load_corpus(config.id_dataset, data_root, **{**config.id_options, "split_seed": seed})
    id_classes = tuple(config.id_classes) if config.id_classes else _class_order(id_table)
    index = {name: i for i, name in enumerate(id_classes)}
    train = _rows(id_table, "train", id_classes)
    test = _rows(id_table, "test", id_classes)
    if train.num_rows == 0 or test.num_rows == 0:
        raise ValueError(f"{config.id_dataset}: no train or no test images of the ID classes {id_classes}")
    train_ids = np.asarray(train.column("sample_id").to_pylist())
    train_classes = np.asarray(train.column("class_name").to_pylist())
    val_mask = np.zeros(len(train_ids), bool)
    for i, name in enumerate(id_classes):
        members = np.flatnonzero(train_classes == name)
        take = int(np.floor(config.validation_fraction * len(members)))
        val_mask[members[np.random.default_rng((seed, 7919, i)).permutation(len(members))[:take]]] = True
    roles: dict[str, np.ndarray] = {
        "id_train": train_ids,
        "id_fit": train_ids[~val_mask],
        "id_val": train_ids[val_mask],
        "id_test": np.asarray(test.column("sample_id").to_pylist()),
    }
    tables = [train, test]
    for name, spec in config.ood_sets.items():
        if spec.dataset == config.id_dataset and not spec.options:
            source = id_table
        else:
            source = load_corpus(spec.dataset, data_root, **spec.options)
        rows = _rows(source, "test", spec.classes)
        if rows.num_rows == 0:
            raise ValueError(f"OOD set {name}: {spec.dataset} has no test images (classes {spec.classes})")
        if spec.dataset == config.id_dataset and set(rows.column("class_name").to_pylist()) & set(id_classes):
            raise ValueError(f"OOD set {name} shares classes with the ID classes {id_classes}")
        roles[f"ood/{name}"] = np.asarray(rows.column("sample_id").to_pylist())
        tables.append(rows)
    if max_per_role is not None:
        for salt, role in enumerate(sorted(roles)):
            if role == "id_test" or role.startswith("ood/"):
                roles[role] = _seeded_subset(roles[role], max_per_role, seed, salt)
    _check_disjoint(roles)
    used = set(np.concatenate(list(roles.values())).tolist())
    corpus = pa.concat_tables(tables)
    _, first = np.unique(np.asarray(corpus.column("sample_id").to_pylist()), return_index=True)
    corpus = corpus.take(pa.array(np.sort(first)))
    corpus = corpus.filter(pc.is_in(corpus.column("sample_id"), pa.array(sorted(used))))
    id_labels = {
        sid: index[name]
        for table in (train, test)
        for sid, name in zip(table.column("sample_id").to_pylist(), table.column("class_name").to_pylist(), strict=True)
    }
    return Benchmark(corpus, id_classes, roles, id_labels, config.validation_ood)


def _check_disjoint(roles: Mapping[str, np.ndarray]) -> None:
    """The bank source never overlaps a test role, and no image is both ID and OOD."""
    seen: dict[str, str] = {}
    for role in ("id_train", "id_test", *sorted(r for r in roles if r.startswith("ood/"))):
        for sid in roles[role].tolist():
            if sid in seen:
                raise ValueError(f"sample {sid} is in both {seen[sid]} and {role}")
            seen[sid] = role


def ood_scores(detector: FittedDetector, outputs: ModelOutputs) -> np.ndarray:
    """raylab's OOD score (higher = more OOD): the negated detector confidence. The only negation."""
    return -detector.confidence(outputs)


AVERAGE = "average"


def evaluate_detector(
    detector: FittedDetector, id_test: ModelOutputs, ood_sets: Mapping[str, ModelOutputs]
) -> dict[str, dict[str, float]]:
    """``{ood_set: metrics}`` for every given set, plus ``"average"``: the mean over those sets."""
    id_scores = ood_scores(detector, id_test)
    per_set = {name: ood_metrics(id_scores, ood_scores(detector, outputs)) for name, outputs in ood_sets.items()}
    per_set = {name: {key: values[key] for key in METRIC_KEYS} for name, values in per_set.items()}
    per_set[AVERAGE] = {key: float(np.mean([values[key] for values in per_set.values()])) for key in METRIC_KEYS}
    return per_set


def flat_metrics(per_set: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """MLflow's flat form: ``<metric>/<set>``, and the average as the bare ``<metric>``."""
    flat = {}
    for name, values in per_set.items():
        for key, value in values.items():
            flat[key if name == AVERAGE else f"{key}/{name}"] = value
    return flat


def accuracy(outputs: ModelOutputs, labels: np.ndarray) -> float:
    """Top-1 accuracy of the classifier's logits."""
    return float(np.mean(outputs.logits.argmax(axis=1) == labels))
