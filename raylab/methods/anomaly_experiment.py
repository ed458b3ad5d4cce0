"""What the noise-protocol anomaly experiments (PatchCore, MeDS) share: their setting axes and
their inputs.

Both sweep (noise ratio x seed) over one registered corpus, optionally subsampled per
(class, split, label) group, with patch features extracted once and shared by every trial;
the sweep's identity takes the corpus's content fingerprint.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raylab.experiment import Prepared, Request
from raylab.experiment.arguments import check_ratios, parse_list
from raylab.features import FeatureSpec

# pyarrow and the feature extraction (torch) are imported where they are used, so the jobs'
# --help and config validation answer in well under a second.
if TYPE_CHECKING:
    import pyarrow as pa

    from raylab.features.extract import FeatureSet


def noise_ratio_option(parser, default: str) -> None:
    parser.add_argument("--noise-ratios", default=None, help=f"comma-separated noise ratios in [0, 1) (default: the config's, {default})")


def noise_axes(request: Request) -> dict[str, tuple]:
    """``--noise-ratios`` x ``--seeds``, each falling back to the config's own lists."""
    ratios = parse_list(request.args.noise_ratios, float, "--noise-ratios") or request.config.noise_ratios
    check_ratios(ratios, "--noise-ratios")
    seeds = parse_list(request.args.seeds, int, "--seeds") or request.config.seeds
    return {"noise_ratio": ratios, "seed": seeds}


@dataclass(frozen=True)
class CorpusFeatures:
    """A sweep's shared inputs: the (subsampled) corpus and its cached patch features."""

    corpus: pa.Table
    features: FeatureSet


@functools.lru_cache(maxsize=1)
def _corpus(dataset: str, data_root: str | None, options: str, images_per_group: int | None) -> pa.Table:
    """The (subsampled) corpus, loaded once per process: the check before Ray and ``prepare``
    after it read the same files (a table is immutable, so sharing it is safe)."""
    from raylab.data import load_corpus
    from raylab.data.protocols import subsample_corpus

    corpus = load_corpus(dataset, data_root, **json.loads(options))
    return corpus if images_per_group is None else subsample_corpus(corpus, images_per_group)


def corpus_of(request: Request) -> pa.Table:
    config = request.config
    return _corpus(request.dataset, request.data_root, json.dumps(config.dataset_options, sort_keys=True), config.images_per_group)


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
