"""What the noise-protocol anomaly experiments (PatchCore, MeDS) share: their setting axes and
their inputs.

Both sweep (noise ratio x seed) over one registered corpus, optionally subsampled per
(class, split, label) group, with patch features extracted once and shared by every trial;
the sweep's identity takes the corpus's content fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raylab.experiment import Prepared, Request
from raylab.experiment.arguments import check_ratios, parse_list
from raylab.features import FeatureSpec
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


def prepare_corpus_features(request: Request, dataset_options: dict[str, Any], images_per_group: int | None, spec: FeatureSpec) -> Prepared:
    from raylab.data import load_corpus
    from raylab.data.protocols import subsample_corpus
    from raylab.data.store import corpus_fingerprint
    from raylab.features import cached_patch_features

    corpus = load_corpus(request.dataset, request.data_root, **dataset_options)
    if images_per_group is not None:
        corpus = subsample_corpus(corpus, images_per_group)
    return Prepared(CorpusFeatures(corpus, cached_patch_features(corpus, spec)), corpus_fingerprint(corpus))
