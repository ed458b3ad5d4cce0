"""Arrays kept in sample-id order and read by sample id.

Features and classifier outputs are computed once per corpus and shared by every trial, each
of which asks for its own images by id; one lookup serves them all, and a missing id fails
naming the sample instead of reading a neighbour's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass
class SampleRows:
    """Row lookup for arrays whose ``i``-th row belongs to ``sample_ids[i]``."""

    sample_ids: np.ndarray
    # What the rows hold, for the error that names a missing sample.
    holds: ClassVar[str] = "rows"

    def __post_init__(self) -> None:
        self._row = {sid: i for i, sid in enumerate(self.sample_ids.tolist())}

    def lookup_key(self, sample_id: str) -> str:
        """The id a sample's row is stored under (derived copies override this)."""
        return sample_id

    def rows(self, sample_ids) -> np.ndarray:
        try:
            return np.array([self._row[self.lookup_key(s)] for s in sample_ids], dtype=np.int64)
        except KeyError as error:
            raise KeyError(f"sample {error.args[0]!r} has no {self.holds}") from None
