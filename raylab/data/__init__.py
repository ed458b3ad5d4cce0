"""Image corpora as Arrow tables, Parquet shards and Ray Datasets, plus the protocols on them.

Every Ray worker that extracts features imports this package, so its modules import pandas
and scipy.stats inside the functions that use them: at module level they were a quarter of a
worker's start-up imports (about 1.1 of 4.6 s on 2 busy cores, ``python -X importtime``).
"""

from raylab.data.images import CorruptSampleError, ImageTransform
from raylab.data.manifest import before_after, corpus_counts
from raylab.data.protocols import NoiseProtocol, ProtocolResult, inject_noise
from raylab.data.protocols.noise import base_sample_id
from raylab.data.registry import DATASETS, load_corpus
from raylab.data.schema import CORPUS_SCHEMA, CorpusRecord, records_to_table, validate_corpus
from raylab.data.store import cache_root, corpus_fingerprint, read_dataset, read_table, write_shards

__all__ = [
    "CORPUS_SCHEMA",
    "DATASETS",
    "CorpusRecord",
    "CorruptSampleError",
    "ImageTransform",
    "NoiseProtocol",
    "ProtocolResult",
    "base_sample_id",
    "before_after",
    "cache_root",
    "corpus_counts",
    "corpus_fingerprint",
    "inject_noise",
    "load_corpus",
    "read_dataset",
    "read_table",
    "records_to_table",
    "validate_corpus",
    "write_shards",
]
