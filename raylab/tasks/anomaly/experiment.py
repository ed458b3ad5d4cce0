"""What the noise-protocol anomaly experiments (PatchCore, MeDS, TailedCore) share: their
setting axes and their inputs.

They sweep (noise ratio x test protocol x seed) over one registered corpus, optionally
subsampled per (class, split, label) group, with patch features extracted once and shared by
every trial; the sweep's identity takes the corpus's content fingerprint.

The test protocol (``injected_in_test``) is an axis because the papers disagree on it and the
difference is the mechanism: the MeDS and TailedCore releases leave every injected defect in
the test set too (``kept``), so a memory that stored a defect also scores that very image as
normal, which is what a noise-robust method is meant to prevent; SoftPatch and raylab's
default take them out (``removed``), so no image is both trained and tested on. ``both`` runs
the two side by side and every row says which it is.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raylab.config import require
from raylab.experiment import Prepared, Request, Setting
from raylab.experiment.arguments import check_ratios, parse_list
from raylab.features import FeatureSpec

# pyarrow and the feature extraction (torch) are imported where they are used, so the jobs'
# --help and config validation answer in well under a second.
if TYPE_CHECKING:
    import pyarrow as pa

    from raylab.features.extract import FeatureSet


# Values of the ``injected_in_test`` setting axis; ``both`` on the command line or in a config
# means the two of them.
INJECTED_IN_TEST = ("removed", "kept")
INJECTED_IN_TEST_CHOICES = (*INJECTED_IN_TEST, "both")


def check_injected_in_test(value: str) -> None:
    """``__post_init__`` check for a config's ``injected_in_test``."""
    require(
        value in INJECTED_IN_TEST_CHOICES,
        "injected_in_test",
        f"must be one of {', '.join(INJECTED_IN_TEST_CHOICES)}, got {value!r}",
    )


def check_group_sizes(images_per_group: int | None, quick_images_per_group: int, max_classes: int | None) -> None:
    """``__post_init__`` check for the budget's subsets: classes kept and images per (class, split, label)."""
    require(
        max_classes is None or max_classes >= 1,
        "max_classes",
        f"must be >= 1 or null, got {max_classes}",
    )
    require(
        images_per_group is None or images_per_group >= 1,
        "images_per_group",
        f"must be >= 1 or null, got {images_per_group}",
    )
    require(quick_images_per_group >= 1, "quick_images_per_group", f"must be >= 1, got {quick_images_per_group}")


def injected_in_test_option(parser) -> None:
    parser.add_argument(
        "--injected-in-test",
        choices=INJECTED_IN_TEST_CHOICES,
        default=None,
        help="test protocol for the injected defect images: removed from the test set (SoftPatch, raylab's default), "
        "kept there as well (the MeDS and TailedCore releases), or both side by side (default: the config's)",
    )


def noise_ratio_option(parser, default: str) -> None:
    parser.add_argument(
        "--noise-ratios",
        default=None,
        help=f"comma-separated noise ratios in [0, 1) (default: the config's, {default})",
    )
    injected_in_test_option(parser)


def injected_in_test_axis(request: Request) -> tuple[str, ...]:
    choice = request.args.injected_in_test or request.config.injected_in_test
    return INJECTED_IN_TEST if choice == "both" else (choice,)


def keeps_injected_in_test(setting: Setting) -> bool:
    """Whether this setting's test set keeps the injected defect images (the releases' protocol)."""
    return setting["injected_in_test"] == "kept"


def noise_axes(request: Request) -> dict[str, tuple]:
    """``--noise-ratios`` x ``--injected-in-test`` x ``--seeds``, each falling back to the config."""
    ratios = parse_list(request.args.noise_ratios, float, "--noise-ratios") or request.config.noise_ratios
    check_ratios(ratios, "--noise-ratios")
    seeds = parse_list(request.args.seeds, int, "--seeds") or request.config.seeds
    return {"noise_ratio": ratios, "injected_in_test": injected_in_test_axis(request), "seed": seeds}


@dataclass(frozen=True)
class CorpusFeatures:
    """A sweep's shared inputs: the (subsampled) corpus and its cached patch features."""

    corpus: pa.Table
    features: FeatureSet


def budget_subsets(corpus: pa.Table, max_classes: int | None, images_per_group: int | None) -> pa.Table:
    """The budget's subsets of ``corpus``: whole classes first (evenly over the sorted names),
    then a stratified subsample of each (class, split, label) group; None keeps them all."""
    from raylab.data.protocols import spread_classes, subsample_corpus

    if max_classes is not None:
        corpus = spread_classes(corpus, max_classes)
    return corpus if images_per_group is None else subsample_corpus(corpus, images_per_group)


@functools.lru_cache(maxsize=1)
def _corpus(
    dataset: str, data_root: str | None, options: str, max_classes: int | None, images_per_group: int | None
) -> pa.Table:
    """The (subsampled) corpus, loaded once per process: the check before Ray and ``prepare``
    after it read the same files (a table is immutable, so sharing it is safe)."""
    from raylab.data import load_corpus

    return budget_subsets(load_corpus(dataset, data_root, **json.loads(options)), max_classes, images_per_group)


def corpus_of(request: Request) -> pa.Table:
    config = request.config
    options = json.dumps(config.dataset_options, sort_keys=True)
    return _corpus(request.dataset, request.data_root, options, config.max_classes, config.images_per_group)


def check_noise_supply(request: Request) -> None:
    """``check`` hook: the dataset exists and each noise ratio finds its defective images in every
    class, found in seconds before Ray starts instead of in a trial after extraction."""
    from raylab.data.protocols.noise import noise_shortages
    from raylab.experiment.runner import require_registered_dataset

    require_registered_dataset(request)
    shortages = noise_shortages(corpus_of(request), noise_axes(request)["noise_ratio"])
    if shortages:
        raise ValueError(f"{request.dataset}: {'; '.join(shortages)} (lower --noise-ratios)")


def prepare_corpus_features(request: Request, spec: FeatureSpec) -> Prepared:
    from raylab.data.store import corpus_fingerprint
    from raylab.features.cache import cached_patch_features

    corpus = corpus_of(request)
    return Prepared(CorpusFeatures(corpus, cached_patch_features(corpus, spec)), corpus_fingerprint(corpus))
