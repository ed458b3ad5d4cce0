"""Arrays whose rows are samples: read by sample id, or cut by position all at once.

Features and classifier outputs are computed once per corpus and shared by every trial, each
of which asks for its own images by id; one lookup serves them all, and a missing id fails
naming the sample instead of reading a neighbour's row. Decoded sets (face pairs, canvases
with their identities) are cut into roles by position; one ``take`` cuts every column, so an
image can never be separated from its label.
"""

from __future__ import annotations

import dataclasses
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


class ParallelRows:
    """Mixin for a dataclass whose every field is an array with one row per sample."""

    def __len__(self) -> int:
        return len(getattr(self, dataclasses.fields(self)[0].name))

    def take(self, rows):
        """The same dataclass holding rows ``rows`` (positions) of every field."""
        rows = np.asarray(rows, dtype=np.int64)
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})
