"""What a config field does beyond its value, declared once on the field.

``setting(default, resumable=..., fingerprint=..., checkpoint_override=..., commands=...)``
is ``dataclasses.field`` with the field's roles in its metadata. The code that needs a
role reads it from there (``frameexit.config.fields_with``), never from a hand-kept list:

* ``resumable``: may change when a training run is resumed (``--resume``): how much to
  train, where and how fast it runs, how it is tracked; never what shapes the model, the
  data or the optimisation.
* ``fingerprint``: changes the labels a labeling run writes, so an output refuses rows
  made with another value (``True``: recorded under the dotted name; a string: under that
  key, the name earlier versions recorded).
* ``checkpoint_override``: a model field that may still be set on the command line when
  the model comes from a checkpoint (inference-time behaviour, not the weights' shape).
* ``commands``: the commands whose ``--help`` lists the field (on a section: every field
  in it).

A role set on a section field (``Config.exit``) holds for every field inside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

ROLES = ("resumable", "fingerprint", "checkpoint_override", "commands")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    resumable: bool = False,
    fingerprint: bool | str = False,
    checkpoint_override: bool = False,
    commands: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with its roles (see the module doc)."""
    metadata = {
        "resumable": resumable,
        "fingerprint": fingerprint,
        "checkpoint_override": checkpoint_override,
        "commands": tuple(commands),
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def role(f: dataclasses.Field, name: str) -> Any:
    """The value of role ``name`` declared on field ``f`` (False / () when undeclared)."""
    if name not in ROLES:
        raise KeyError(f"unknown field role {name!r}; roles: {', '.join(ROLES)}")
    return f.metadata.get(name, () if name == "commands" else False)


# --- reading the roles of the run config's fields ---------------------------------


def _walk(cls: type, prefix: str = "", inherited: Mapping[str, Any] | None = None):
    """(dotted name, field, roles in effect, is a section) for every field under ``cls``,
    sections before their fields; a role set on a section holds for the fields inside."""
    inherited = dict(inherited or {})
    defaults = cls()
    for f in dataclasses.fields(cls):
        name = f"{prefix}.{f.name}" if prefix else f.name
        roles = {key: role(f, key) or inherited.get(key, role(f, key)) for key in ROLES}
        value = getattr(defaults, f.name)
        section = dataclasses.is_dataclass(value)
        yield name, f, roles, section
        if section:
            yield from _walk(type(value), name, roles)


def fields_with(name: str) -> dict[str, Any]:
    """``{dotted field: role value}`` for every config field that has role ``name``
    (``resumable``, ``fingerprint``, ``checkpoint_override``, ``commands``), itself or
    through its section (a section is listed with its fields)."""
    from frameexit.config import Config

    return {dotted: roles[name] for dotted, _, roles, _ in _walk(Config) if roles[name]}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` of nested dicts."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def fingerprint_of(cfg: Any) -> dict[str, Any]:
    """The config's part of a labeling output's fingerprint: every field or section that
    declares ``fingerprint`` itself, under its recorded key, as plain data."""
    out: dict[str, Any] = {}
    for dotted, f, _, _ in _walk(type(cfg)):
        key = role(f, "fingerprint")
        if not key:
            continue
        value: Any = cfg
        for part in dotted.split("."):
            value = getattr(value, part)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out[key if isinstance(key, str) else dotted] = value
    return out


def config_help(command: str) -> str:
    """The config fields ``command``'s ``--help`` lists (declared with ``commands`` on the
    field or its section), with their defaults."""
    from frameexit.config import Config

    lines = ["config fields (set with --config FILE.yaml or a.b=value):"]
    defaults = dataclasses.asdict(Config())
    plain = flatten(defaults)
    for dotted, f, roles, section in _walk(Config):
        if section or command not in roles["commands"]:
            continue
        if dotted in plain:
            kind = str(f.type).replace("typing.", "")
            lines.append(f"  {dotted} = {plain[dotted]!r}  ({kind})")
        else:  # a dict-valued field
            for key in sorted(k for k in plain if k.startswith(dotted + ".")):
                lines.append(f"  {key} = {plain[key]!r}")
    return "\n".join(lines)
