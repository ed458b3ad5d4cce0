"""The smoke budget: a full-size config run with its architecture unchanged and only its budget shrunk.

A paper-size config is what a user takes to a GPU cluster; the smoke budget lets it run end
to end on a laptop or in CI first, so a size mismatch or a loader that cannot read its
weight format shows up in minutes instead of hours into a cluster run. What makes that a
proof and not a different experiment is that the smoke overlay may touch *budget* keys only:
how much work a run does (steps, epochs, image and target counts, seeds, folds, trials),
never what it computes with (networks, widths, image sizes, backbones, losses). The runner
enforces it on every experiment's overlay, so no smoke budget can quietly change a size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raylab.config import ConfigError
from raylab.experiment.identity import flatten

# Leaf names of the config keys that say how much work a run does. A key is a budget key
# when its last component is one of these; everything else is architecture or method.
BUDGET_LEAVES = frozenset(
    {
        # steps and passes
        "iterations",
        "warmup_iterations",
        "hard_mining_ramp_iterations",
        "epochs",
        "steps",
        "kimg",
        "search_iterations",
        "n_trials",
        # how much data
        "images_per_group",
        "targets_per_identity",
        "identities",
        "max_images",
        "tail_images",
        "max_test_images",
        "images_per_identity",
        "max_targets",
        "max_classes",
        # how many runs and searches
        "seeds",
        "folds",
        "noise_ratios",
        "protocols",
        "classes",
        "normal_classes",
        "searches",
        "bootstraps",
        "num_searches",
    }
)


def budget_violations(overlay: Mapping[str, Any]) -> list[str]:
    """The keys of ``overlay`` that are not budget keys (sorted, dotted)."""
    return sorted(key for key in flatten(overlay) if key.rpartition(".")[2] not in BUDGET_LEAVES)


def check_budget_only(overlay: Mapping[str, Any], where: str) -> None:
    bad = budget_violations(overlay)
    if bad:
        raise ConfigError(
            f"{where}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a budget key; a smoke budget may only "
            f"shrink how much work runs ({', '.join(sorted(BUDGET_LEAVES))}), never the architecture"
        )
