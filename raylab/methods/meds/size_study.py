"""The command line shared by the studies that compare MeDS decoder sizes (``benchmarks/meds_*``).

Each study reads a sweep config (its dataset's packaged one by default), a list of sizes in
the one spelling :func:`~raylab.methods.meds.config.with_decoder_size` reads, and the corpus;
a size that does not parse fails before any data is read.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import pyarrow as pa

from raylab.methods.meds.config import MeDSConfig, with_decoder_size

if TYPE_CHECKING:
    from raylab.methods.meds.experiment import MeDSSweepConfig


def add_size_study_arguments(parser: argparse.ArgumentParser, default_sizes: str) -> None:
    parser.add_argument("--dataset", default="magnetic_tile")
    parser.add_argument("--data-root")
    parser.add_argument(
        "--config", help="sweep YAML, a file or a packaged name such as meds/smoke (default: meds/<dataset>)"
    )
    parser.add_argument("--sizes", default=default_sizes, help="comma-separated WIDTHxBLOCKS@ITERATIONS")


def size_study_inputs(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[MeDSSweepConfig, dict[str, MeDSConfig], pa.Table]:
    """(the sweep config, ``{size: MeDS config}``, the corpus) of a size study's arguments."""
    from raylab.config import load_config
    from raylab.data import load_corpus
    from raylab.experiment.runner import config_file, packaged_config
    from raylab.methods.meds.experiment import MeDSSweepConfig

    overlay = config_file(args.config) if args.config else packaged_config("meds", args.dataset)
    config = load_config(MeDSSweepConfig, overlay)
    try:
        sizes = {size: with_decoder_size(config.meds, size) for size in args.sizes.split(",")}
    except ValueError as error:
        parser.error(str(error))
    return config, sizes, load_corpus(args.dataset, args.data_root, **config.dataset_options)
