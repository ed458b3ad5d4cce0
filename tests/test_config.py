"""Tests for raylab.config: typed configs from YAML files (nested dataclasses, tuples, typos)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from raylab.config import deep_merge, load_config
from raylab.features import BackboneSpec, FeatureSpec
from raylab.methods.patchcore.experiment import PatchCoreEvalConfig


@dataclass
class Inner:
    size: int = 224
    scales: tuple[int, ...] = (2, 3)
    name: str = "inner"


@dataclass
class Outer:
    ratios: tuple[float, ...] = (0.0,)
    inner: Inner = field(default_factory=Inner)
    optional_inner: Inner | None = None
    optional_tuple: tuple[int, ...] | None = None
    options: dict = field(default_factory=dict)
    seed: int = 0


def write_yaml(path: Path, values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_load_config_builds_nested_dataclasses_and_tuples(tmp_path):
    path = write_yaml(
        tmp_path / "job.yaml",
        {
            "ratios": [0.1, 0.2],
            "inner": {"scales": [1, 2, 3]},
            "optional_inner": {"size": 64},
            "optional_tuple": [7, 8],
            "options": {"split_seed": 3, "nested": [1, 2]},
        },
    )
    config = load_config(Outer, path)
    assert config.ratios == (0.1, 0.2) and isinstance(config.ratios, tuple)
    assert isinstance(config.inner, Inner)
    assert config.inner.scales == (1, 2, 3) and isinstance(config.inner.scales, tuple)
    assert config.inner.size == 224 and config.inner.name == "inner"  # unspecified: defaults
    assert config.optional_inner == Inner(size=64)
    assert config.optional_tuple == (7, 8)
    assert config.options == {"split_seed": 3, "nested": [1, 2]}  # plain dicts stay as written
    assert config.seed == 0


def test_load_config_defaults_overrides_and_empty_file(tmp_path):
    assert load_config(Outer) == Outer()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Outer, empty) == Outer()
    path = write_yaml(tmp_path / "job.yaml", {"inner": {"size": 32, "name": "file"}, "seed": 1})
    config = load_config(Outer, path, overrides={"inner": {"size": 16}, "optional_inner": None})
    assert config.inner == Inner(size=16, name="file")  # override merges key by key
    assert config.seed == 1 and config.optional_inner is None
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}, "d": 4}) == {"a": {"b": 1, "c": 3}, "d": 4}


def test_unknown_key_names_file_and_key(tmp_path):
    path = write_yaml(tmp_path / "typo.yaml", {"ratio": [0.1]})
    with pytest.raises(KeyError) as error:
        load_config(Outer, path)
    assert str(path) in str(error.value) and "'ratio'" in str(error.value)

    nested = write_yaml(tmp_path / "nested_typo.yaml", {"inner": {"sise": 3}})
    with pytest.raises(KeyError) as error:
        load_config(Outer, nested)
    message = str(error.value)
    assert f"{nested}.inner" in message and "'sise'" in message and "size" in message


def test_non_mapping_files_are_rejected(tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(TypeError, match="top level must be a mapping"):
        load_config(Outer, listing)
    scalar_section = write_yaml(tmp_path / "scalar.yaml", {"inner": 5})
    with pytest.raises(TypeError, match=rf"{scalar_section}\.inner: expected a mapping for Inner"):
        load_config(Outer, scalar_section)
    # A dataclass instance given as an override is used as it is.
    assert load_config(Outer, overrides={"inner": Inner(size=8)}).inner == Inner(size=8)


def test_real_job_config(tmp_path):
    path = write_yaml(
        tmp_path / "patchcore.yaml",
        {
            "noise_ratios": [0, 0.1],
            "seeds": [0, 1, 2],
            "dataset_options": {"split_seed": 1},
            "patchcore": {
                "coreset_ratio": 0.01,
                "features": {"image_size": 112, "backbone": {"out_indices": [1, 2], "weights": None}},
            },
        },
    )
    config = load_config(PatchCoreEvalConfig, path)
    assert config.noise_ratios == (0, 0.1) and config.seeds == (0, 1, 2)
    assert config.dataset_options == {"split_seed": 1}
    assert config.patchcore.coreset_ratio == 0.01
    assert config.patchcore.features == FeatureSpec(
        backbone=BackboneSpec(out_indices=(1, 2), weights=None), image_size=112
    )
    assert config.patchcore.num_neighbors == 1  # default kept
