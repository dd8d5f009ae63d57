"""``model.num_classes`` against the manifest's class map and a checkpoint's weights:
checked on the driver before any worker starts or any tensor is allocated (issue 20,
item 8)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from frameexit.checkpoint import load_model_checkpoint, model_from_state, save_model_checkpoint
from frameexit.config import config_from_dict
from frameexit.errors import CheckpointError, ConfigError
from frameexit.model import build_model
from pipelines.common import EXIT_CONFIG, run_command
from pipelines.data import load_split, video_dataset


def manifest(folder, num_classes: int, labels: list[str], *, multi: bool = False) -> str:
    """A plain CSV manifest whose ``classes.json`` names ``num_classes`` classes."""
    names = [f"class{i:03d}" for i in range(num_classes)]
    (folder / "classes.json").write_text(json.dumps(names))
    column = "labels" if multi else "label"
    lines = [f"video,{column},split"]
    lines += [f"v{i}.mp4,{label},train" for i, label in enumerate(labels)]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def config(uri: str, num_classes: int, *, multi: bool = False):
    return config_from_dict(
        {
            "model": {"backbone": "tiny", "num_classes": num_classes, "multi_label": multi,
                      "num_steps": 2, "feature_dim": 8},
            "data": {"manifest": uri},
        }
    )  # fmt: skip


def test_single_label_with_fewer_classes_than_the_manifest_fails_on_the_driver(tmp_path):
    """200 classes on a 400-class manifest: before, every Train worker failed on
    ``Target 399 is out of bounds`` (retried, exit 3); now the data step refuses it."""
    import ray

    uri = manifest(tmp_path, 400, ["class000", "class123", "class399"])
    cfg = config(uri, 200)
    with pytest.raises(ConfigError) as caught:
        load_split(cfg, "train")
    assert caught.value.field == "model.num_classes"
    assert "400 classes (ids 0..399, max label id 399)" in caught.value.reason
    assert "model.num_classes=400" in caught.value.reason

    # the training dataset is never built (no Ray started for it), and the exit code is 2
    was = ray.is_initialized()  # the session's Ray may be up already
    assert run_command(lambda argv: video_dataset(cfg, "train", train=True), []) == EXIT_CONFIG
    assert ray.is_initialized() == was


def test_multi_label_ids_beyond_the_model_fail_instead_of_being_dropped(tmp_path) -> None:
    uri = manifest(tmp_path, 6, ["class000|class005", "class002"], multi=True)
    with pytest.raises(ConfigError, match=r"6 classes \(ids 0\.\.5, max label id 5\)") as caught:
        load_split(config(uri, 4, multi=True), "train")
    assert caught.value.field == "model.num_classes"


def test_a_model_that_fits_the_class_map_loads(tmp_path) -> None:
    uri = manifest(tmp_path, 5, ["class000", "class004", "class002"])
    rows = load_split(config(uri, 5), "train")
    assert sorted(rows["label_ids"].map(tuple)) == [(0,), (2,), (4,)]
    # a class map smaller than the model (a class without videos) is allowed
    assert len(load_split(config(uri, 8), "train")) == 3


def tampered(tmp_path, variant: str = "paper", **declared) -> str:
    """A real checkpoint of a small model whose stored config then declares ``declared``."""
    cfg = config_from_dict(
        {"model": {"backbone": "tiny", "num_classes": 5, "num_steps": 3, "feature_dim": 16,
                   "gate_hidden": 8, "variant": variant}}
    )  # fmt: skip
    uri = str(tmp_path / "model.pt")
    save_model_checkpoint(build_model(cfg.model), cfg, uri)
    blob = torch.load(uri, weights_only=True)
    blob["config"]["model"].update(declared)
    torch.save(blob, uri)
    return uri


def test_a_checkpoint_declaring_a_huge_num_classes_is_refused_before_allocating(tmp_path):
    """Before, the model of the declared size was built first: 2**40 classes raised
    ``RuntimeError: can't allocate memory`` (or ate the node's memory), not a
    CheckpointError."""
    uri = tampered(tmp_path, num_classes=2**40)
    began = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"model\.num_classes is 1099511627776 .* 5 "):
        load_model_checkpoint(uri)
    assert time.perf_counter() - began < 5


@pytest.mark.parametrize(
    ("variant", "field", "value"),
    [
        ("paper", "num_steps", 4096),
        ("paper", "feature_dim", 2**30),
        ("paper", "gate_hidden", 2**30),
        ("official", "gate_hidden", 2**30),
    ],
)
def test_every_shape_defining_field_is_checked_against_the_weights(
    tmp_path, variant: str, field: str, value: int
) -> None:
    uri = tampered(tmp_path, variant, **{field: value})
    with pytest.raises(CheckpointError, match=rf"model\.{field} is {value} in its config"):
        load_model_checkpoint(uri)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_an_untampered_checkpoint_still_loads(tmp_path, variant: str) -> None:
    model, cfg = load_model_checkpoint(tampered(tmp_path, variant))
    assert cfg.model.num_classes == 5 and model.classifiers[0].out_features == 5
    state = model.state_dict()
    with pytest.raises(CheckpointError, match="no classifiers"):
        model_from_state(cfg.model, {k: v for k, v in state.items() if "classifiers" not in k})
