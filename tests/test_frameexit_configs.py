"""Config inheritance (``base:``) and the paper configs built on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frameexit.config import Config, config_to_dict, load_config
from frameexit.config_parsing import read_yaml
from frameexit.errors import ConfigError
from frameexit.fields import flatten

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
#: every config's resolved values where they differ from the defaults (dotted keys),
#: dumped before the paper configs were split into bases; a field added since then must
#: resolve to its default
RESOLVED = json.loads((ROOT / "tests" / "data" / "paper_configs_resolved.json").read_text())


def test_every_shipped_config_is_listed_in_the_reference() -> None:
    assert sorted(p.name for p in CONFIGS) == sorted(RESOLVED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_config_resolves_to_the_same_values_as_before_the_bases(path: Path) -> None:
    resolved = _flat(load_config(str(path)))
    defaults = _flat(Config())
    expected = RESOLVED[path.name]
    assert set(expected) <= set(resolved)
    changed = {
        key: (value, expected.get(key, defaults[key]))
        for key, value in resolved.items()
        if value != expected.get(key, defaults[key])
    }
    assert not changed, changed  # field: (now, before)


def _flat(cfg: Config) -> dict:
    return flatten(json.loads(json.dumps(config_to_dict(cfg))))


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.stem != "synthetic"], ids=lambda p: p.stem
)
def test_paper_configs_hold_only_what_differs(path: Path) -> None:
    import yaml

    own = yaml.safe_load(path.read_text())
    assert own.pop("base")
    leaves = [f"{s}.{k}" for s, section in own.items() for k in section]
    assert "train.name" in leaves and len(leaves) <= 2, leaves


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_is_merged_underneath_relative_to_the_file(tmp_path: Path) -> None:
    _write(
        tmp_path, "bases/root.yaml", "model: {num_steps: 4, pooling: mean}\ntrain: {beta: 0.1}\n"
    )
    _write(
        tmp_path,
        "bases/mid.yaml",
        "base: root.yaml\nmodel: {num_steps: 6}\ntrain: {stage1: {milestones: [1, 2]}}\n",
    )
    top = _write(
        tmp_path,
        "run/top.yaml",
        "base: [../bases/mid.yaml]\ntrain: {name: top, stage1: {milestones: [3]}}\n",
    )
    data = read_yaml(str(top))
    assert data == {
        "model": {"num_steps": 6, "pooling": "mean"},  # mid over root, mappings merged
        "train": {"beta": 0.1, "name": "top", "stage1": {"milestones": [3]}},  # lists replaced
    }
    cfg = load_config(str(top), ["model.num_steps=5"])  # overrides stay on top
    assert (cfg.model.num_steps, cfg.model.pooling, cfg.train.name) == (5, "mean", "top")


def test_later_bases_win_over_earlier_ones(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", "model: {num_steps: 4, feature_dim: 32}\n")
    _write(tmp_path, "b.yaml", "model: {num_steps: 8}\n")
    top = _write(tmp_path, "top.yaml", "base: [a.yaml, b.yaml]\n")
    assert read_yaml(str(top)) == {"model": {"num_steps": 8, "feature_dim": 32}}


def test_a_cycle_is_an_error_naming_the_files(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", "base: b.yaml\n")
    _write(tmp_path, "b.yaml", "base: c.yaml\n")
    _write(tmp_path, "c.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(tmp_path / "a.yaml"))
    assert error.value.field == "base"
    message = str(error.value)
    assert all(str(tmp_path / n) in message for n in ("a.yaml", "b.yaml", "c.yaml")), message


def test_a_missing_base_names_the_file(tmp_path: Path) -> None:
    top = _write(tmp_path, "top.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(str(top))


def test_a_base_that_is_no_path_is_refused(tmp_path: Path) -> None:
    top = _write(tmp_path, "top.yaml", "base: {model: x}\n")
    with pytest.raises(ConfigError, match="path"):
        load_config(str(top))
