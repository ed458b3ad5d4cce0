"""Whether an ALSUV run can show anything about the attack methods on a real encoder.

Two ways a run is uninformative, both read from the summary rows of one real, black-box
encoder (MobileFaceNet, ``evaluation.verdict_encoder``) at one metric (type-1 success at
FAR 1e-2), each method's value the mean over seeds:

* the ceiling is low: the generator's pixel inversion of the very target images
  (``pixel_inversion``) succeeds on fewer than ``ceiling`` of the targets, so the generator
  cannot render the held-out people well enough for that encoder, and an attack through it
  is bounded by that, whatever its method;
* the floor: every attack method scores 0, so nothing separates them (ties at 0 are not
  evidence that one method is at least as good as another).

Plain Python over row dicts (the summary's rows), so it is checked on hand-made rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CEILING_METHOD = "pixel_inversion"


def _method_means(rows: Sequence[Mapping[str, Any]], encoder: str, metric: str) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for row in rows:
        value = row["metrics"].get(metric) if row.get("encoder") == encoder else None
        if value is not None:
            values.setdefault(row["method"], []).append(float(value))
    return {method: sum(v) / len(v) for method, v in values.items()}


def informative_verdict(
    rows: Sequence[Mapping[str, Any]], *, encoder: str, metric: str, ceiling: float = 0.5
) -> dict[str, Any]:
    """``{"informative": bool, "reason": str}``: the ceiling and floor rules above, the numbers in the reason."""
    means = _method_means(rows, encoder, metric)
    attacks = {method: value for method, value in means.items() if method != CEILING_METHOD}
    if not attacks:
        return {"informative": False, "reason": f"no attack rows with {metric} on {encoder}: nothing to compare"}
    listed = ", ".join(f"{method} {value:.3f}" for method, value in attacks.items())
    problems = []
    if CEILING_METHOD not in means:
        problems.append(f"no {CEILING_METHOD} row on {encoder}, so the ceiling is unknown")
    elif means[CEILING_METHOD] < ceiling:
        problems.append(
            f"the generator's own pixel inversion of the targets reaches only {means[CEILING_METHOD]:.3f} {metric} "
            f"on {encoder} (< {ceiling:g}): the generator cannot render these faces well enough for {encoder}"
        )
    if all(value == 0.0 for value in attacks.values()):
        problems.append(f"every attack method is at 0 {metric} on {encoder}: nothing separates them")
    if problems:
        return {"informative": False, "reason": f"not informative: {'; '.join(problems)} (attacks: {listed})"}
    return {
        "informative": True,
        "reason": f"informative: {CEILING_METHOD} reaches {means[CEILING_METHOD]:.3f} {metric} on {encoder} "
        f"(>= {ceiling:g}) and the attacks score above 0 there ({listed})",
    }
