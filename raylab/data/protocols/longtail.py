"""Long-tailed, noisy training sets (TailedCore, Jung et al., CVPR 2025): ``step`` and ``pareto``.

Both are pure functions of (corpus, protocol, seed): the same inputs give the same table on
every machine, and every row is accounted for (training images a protocol drops become
``excluded``; defective images it injects move to ``train`` with ``injected_noise`` set,
as in :mod:`raylab.data.protocols.noise`).

* ``step`` (TailedCore's ``_make_class_info_step_tail``): ``round(0.6 x C)`` classes, drawn
  at random, become *tail* classes that keep ``K`` random training images (K = 1 or 4;
  a class with fewer keeps all it has). Each *head* class keeps all of its training
  images and receives ``round(noise_ratio x N_train)`` defective images (capped at what
  its test split holds).
* ``pareto`` (``_make_class_info_pareto_tail``): a discrete Pareto pmf (alpha = 6, the
  probability mass of ``C`` equal slices of the [1%, 99%] quantile range) is shuffled
  over the classes; the class with the largest mass keeps all its images and fixes the
  scale ``N_max / p_max``, every other class keeps ``round(p_c x scale)`` images, clipped
  to [``min_images`` = 5, N_c]. ``round(noise_ratio x total kept)`` defective images are
  drawn image slot by image slot among classes that kept >= 20 images (so a class gets
  noise in proportion to its size), capped at what its test split holds. Classes with
  fewer than 20 kept images are this protocol's *tail* classes (the ones too small to
  receive noise); the official generator does not name them, raylab needs them for
  ``tail_image_auroc``.

Injected images leave the test set by default (no image is both trained and tested on);
``keep_injected_in_test=True`` reproduces the official generator, which links the defect
files into ``train`` and leaves the test folders as they are. Python's ``round`` (half to
even) is used where the official code uses it, so counts match it. The ``classes`` table
of the result is the manifest a user reads: each class's status, counts before and after,
and the noise asked for and injected.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylab.data.manifest import before_after
from raylab.data.protocols.noise import COPY_SEPARATOR, _as_injected
from raylab.data.schema import CORPUS_SCHEMA, validate_corpus

if TYPE_CHECKING:  # pandas and scipy.stats load where used: see raylab.data's docstring
    import pandas as pd

Kind = Literal["step", "pareto"]


@dataclass(frozen=True)
class LongTailProtocol:
    kind: Kind = "step"
    noise_ratio: float = 0.1
    seed: int = 0
    tail_k: int = 1
    tail_class_ratio: float = 0.6
    pareto_alpha: float = 6.0
    pareto_epsilon: float = 0.01
    min_images: int = 5
    noise_min_class_size: int = 20
    keep_injected_in_test: bool = False

    @property
    def name(self) -> str:
        return f"step_k{self.tail_k}" if self.kind == "step" else "pareto"


def protocol_from_name(name: str, noise_ratio: float, seed: int, **options) -> LongTailProtocol:
    """``"step_k1"``, ``"step_k4"`` (any K) or ``"pareto"`` -> a :class:`LongTailProtocol`."""
    if name == "pareto":
        return LongTailProtocol("pareto", noise_ratio, seed, **options)
    if name.startswith("step_k") and name[6:].isdigit():
        return LongTailProtocol("step", noise_ratio, seed, tail_k=int(name[6:]), **options)
    raise ValueError(f"unknown long-tail protocol {name!r}: use step_k<K> (e.g. step_k1, step_k4) or pareto")


@dataclass(frozen=True)
class LongTailResult:
    table: pa.Table
    manifest: pd.DataFrame  # counts by (split, class, label, injected) before and after
    classes: pd.DataFrame  # one row per class: status, counts, noise asked for and injected

    @property
    def tail_classes(self) -> list[str]:
        return sorted(self.classes.loc[self.classes["status"] == "tail", "class_name"])


def discrete_pareto_pmf(alpha: float, size: int, epsilon: float = 0.01) -> np.ndarray:
    """Mass of ``size`` equal slices of the Pareto(alpha) quantile range [epsilon, 1 - epsilon]."""
    from scipy.stats import pareto as pareto_distribution

    edges = np.linspace(pareto_distribution.ppf(epsilon, alpha), pareto_distribution.ppf(1 - epsilon, alpha), size + 1)
    return np.diff(pareto_distribution.cdf(edges, alpha))


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def apply_long_tail(table: pa.Table, protocol: LongTailProtocol) -> LongTailResult:
    """Apply ``step`` or ``pareto`` to a corpus; see the module docstring for the rules."""
    _check(protocol)
    validate_corpus(table)
    if table.num_rows == 0:
        raise ValueError("the corpus is empty: a long-tail protocol needs classes with training images")
    frame = table.select(["sample_id", "class_name", "split", "label"]).to_pandas()
    classes = sorted(frame["class_name"].unique())
    train_rows = {c: _sorted_rows(frame, (frame["class_name"] == c) & (frame["split"] == "train")) for c in classes}
    defect_rows = {
        c: _sorted_rows(frame, (frame["class_name"] == c) & (frame["split"] == "test") & (frame["label"] == 1))
        for c in classes
    }
    empty = [c for c in classes if len(train_rows[c]) == 0]
    if empty:
        raise ValueError(f"classes {empty} have no training images; a long-tail protocol needs at least one per class")

    if protocol.kind == "step":
        kept, status, noise_asked = _step(classes, train_rows, protocol)
    else:
        kept, status, noise_asked = _pareto(classes, train_rows, protocol)

    split = frame["split"].to_numpy(dtype=object).copy()
    injected = np.zeros(len(frame), dtype=bool)
    rows = []
    for c in classes:
        keep = _rng(protocol.seed, f"keep/{c}").choice(train_rows[c], size=kept[c], replace=False)
        split[np.setdiff1d(train_rows[c], keep)] = "excluded"
        n_noise = min(noise_asked[c], len(defect_rows[c]))
        chosen = _rng(protocol.seed, f"noise/{c}").choice(defect_rows[c], size=n_noise, replace=False)
        injected[chosen] = True
        rows.append(
            {
                "class_name": c,
                "status": status[c],
                "train_before": len(train_rows[c]),
                "train_kept": kept[c],
                "excluded": len(train_rows[c]) - kept[c],
                "noise_requested": noise_asked[c],
                "noise_injected": n_noise,
                "defects_available": len(defect_rows[c]),
            }
        )
    out = table.set_column(table.schema.get_field_index("split"), "split", pa.array(split.tolist(), pa.string())).cast(
        CORPUS_SCHEMA
    )
    mask = pa.array(injected)
    if protocol.keep_injected_in_test:
        copies = out.filter(mask)
        copies = copies.set_column(
            copies.schema.get_field_index("sample_id"),
            "sample_id",
            pc.binary_join_element_wise(copies.column("sample_id"), f"{COPY_SEPARATOR}injected", ""),
        )
        result = pa.concat_tables([out, _as_injected(copies)])
    else:
        result = pa.concat_tables([out.filter(pc.invert(mask)), _as_injected(out.filter(mask))])
    validate_corpus(result)
    import pandas as pd

    return LongTailResult(result, before_after(table, result), pd.DataFrame(rows))


def _check(protocol: LongTailProtocol) -> None:
    if protocol.kind not in ("step", "pareto"):
        raise ValueError(f"kind must be 'step' or 'pareto', got {protocol.kind!r}")
    if not protocol.noise_ratio >= 0:
        raise ValueError(f"noise_ratio must be >= 0, got {protocol.noise_ratio}")
    if protocol.tail_k < 1:
        raise ValueError(f"tail_k must be >= 1, got {protocol.tail_k}")
    if not 0 <= protocol.tail_class_ratio <= 1:
        raise ValueError(f"tail_class_ratio must be in [0, 1], got {protocol.tail_class_ratio}")


def _sorted_rows(frame: pd.DataFrame, selector) -> np.ndarray:
    rows = frame.index[selector].to_numpy()
    return rows[np.argsort(frame.loc[rows, "sample_id"].to_numpy(), kind="stable")]


def _step(classes, train_rows, protocol):
    n_tail = round(len(classes) * protocol.tail_class_ratio)
    tail = set(_rng(protocol.seed, "step/tail_classes").choice(classes, size=n_tail, replace=False).tolist())
    kept, status, noise = {}, {}, {}
    for c in classes:
        n = len(train_rows[c])
        if c in tail:
            kept[c], status[c], noise[c] = min(protocol.tail_k, n), "tail", 0
        else:
            kept[c], status[c], noise[c] = n, "head", round(n * protocol.noise_ratio)
    return kept, status, noise


def _pareto(classes, train_rows, protocol):
    sizes = np.array([len(train_rows[c]) for c in classes])
    small = [f"{c} ({n})" for c, n in zip(classes, sizes, strict=True) if n <= protocol.min_images]
    if small:
        raise ValueError(
            f"the pareto protocol needs more than min_images={protocol.min_images} training images in every class; "
            f"too few in: {', '.join(small)}"
        )
    rng = _rng(protocol.seed, "pareto/class_order")
    pmf = discrete_pareto_pmf(protocol.pareto_alpha, len(classes), protocol.pareto_epsilon)
    pmf = pmf[rng.permutation(len(classes))]
    top = int(pmf.argmax())
    desired = np.round(pmf * (sizes[top] / pmf[top])).astype(int)
    kept_sizes = np.maximum(np.minimum(sizes, desired), protocol.min_images)
    kept = {c: int(k) for c, k in zip(classes, kept_sizes, strict=True)}
    total_noise = round(int(kept_sizes.sum()) * protocol.noise_ratio)
    slots = np.array(
        [i for i, c in enumerate(classes) if kept[c] >= protocol.noise_min_class_size for _ in range(kept[c])],
        dtype=int,
    )
    drawn = rng.permutation(slots)[:total_noise]
    counts = np.bincount(drawn, minlength=len(classes))
    noise = {c: int(counts[i]) for i, c in enumerate(classes)}
    status = {c: "head" if kept[c] >= protocol.noise_min_class_size else "tail" for c in classes}
    return kept, status, noise
