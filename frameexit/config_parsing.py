"""Plain data to typed config dataclasses: YAML files, ``a.b=value`` overrides, coercion
to the annotated types, and the value checks every section's ``validate`` uses. Every
failure is a :class:`frameexit.errors.ConfigError` naming the dotted field."""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from frameexit.errors import ConfigError

# --- value checks ---------------------------------------------------------------------


def positive(prefix: str, name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{prefix}.{name}", f"must be an integer >= 1, got {value!r}")


def integer(prefix: str, name: str, value: int, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{prefix}.{name}", f"must be an integer >= {minimum}, got {value!r}")


def number(
    prefix: str,
    name: str,
    value: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_low: bool = False,
) -> None:
    """A finite number within [minimum, maximum] (``open_low``: strictly above minimum)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_low else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        low = "" if minimum is None else (f"> {minimum:g}" if open_low else f">= {minimum:g}")
        high = "" if maximum is None else f"<= {maximum:g}"
        bound = " and ".join(b for b in (low, high) if b)
        raise ConfigError(
            f"{prefix}.{name}",
            f"must be a finite number{' ' + bound if bound else ''}, got {value!r}",
        )


def choice(prefix: str, name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{prefix}.{name}", f"must be one of {', '.join(choices)}; got {value!r}")


def unit_interval(prefix: str, name: str, value: float, allow_above: bool = False) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value >= 0 and (allow_above or value <= 1)):
        bound = "[0, inf)" if allow_above else "[0, 1]"
        raise ConfigError(f"{prefix}.{name}", f"must be in {bound}, got {value!r}")


# --- building dataclasses from plain data ---------------------------------------------


def coerce(value: Any, annotation: Any, dotted: str) -> Any:
    """Convert YAML data to the annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(dotted, f"must be a mapping, got {type(value).__name__}")
        return build(annotation, value, dotted)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, dotted)
            except ConfigError as error:
                errors.append(error.reason)
        raise ConfigError(dotted, "; ".join(errors))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(dotted, f"must be a list, got {value!r}")
        (item_type,) = args or (Any,)
        return [coerce(item, item_type, f"{dotted}[{i}]") for i, item in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(dotted, f"must be a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(dotted, f"must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(dotted, f"must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(dotted, f"must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(dotted, f"must be a string, got {value!r}")
    return value


def build(cls: type, data: Mapping[str, Any], prefix: str, base: Any = None) -> Any:
    """``cls`` (``base``, or its defaults) with the fields in ``data`` set, converted to
    their annotated types; nested sections are merged field by field. A frozen dataclass
    (``DecodeOptions``) is rebuilt with the new values, so its own checks run, and a
    ``ConfigError`` it raises names the field under ``prefix``."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(where, f"unknown key; known keys: {', '.join(sorted(known))}")
    obj = base if base is not None else cls()
    values = {}
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else name
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            values[name] = build(type(current), value, dotted, base=current)
        else:
            values[name] = coerce(value, hints[name], dotted)
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        for name, value in values.items():
            setattr(obj, name, value)
        return obj
    try:
        return dataclasses.replace(obj, **values)
    except ConfigError as error:  # the frozen class checks itself: "decode.backend"
        field = error.field.split(".", 1)[-1]
        raise ConfigError(f"{prefix}.{field}" if prefix else field, error.reason) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value parsed as a YAML scalar or list)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "an override must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(key, f"cannot parse value {raw!r}: {error}") from error
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Merge ``a.b=value`` overrides into a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(path), f"{part} is not a section")
            node = child
        node[path[-1]] = value
    return data


#: the key of a YAML config naming the file(s) it extends (relative to the config's folder)
BASE_KEY = "base"


def read_yaml(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The mapping in the YAML file at ``uri`` (any fsspec URI), with the files its
    ``base:`` key names (one path or a list, relative to ``uri``'s folder) merged
    underneath: this file's values win, mappings merge key by key, anything else
    (lists included) is replaced. A base may have a base; a cycle is a ConfigError
    naming the files in it."""
    return _read_with_bases(uri, storage_options, ())


def _read_yaml_file(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    import fsspec

    try:
        with fsspec.open(uri, "r", **dict(storage_options or {})) as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError as error:
        raise ConfigError("config", f"file not found: {uri}") from error
    except yaml.YAMLError as error:
        raise ConfigError("config", f"{uri} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError("config", f"{uri} must hold a mapping at the top level")
    return data


def _read_with_bases(
    uri: str, storage_options: Mapping[str, Any] | None, chain: tuple[str, ...]
) -> dict[str, Any]:
    from frameexit.storage import absolute_uri

    uri = absolute_uri(uri)
    if uri in chain:
        cycle = " -> ".join((*chain[chain.index(uri) :], uri))
        raise ConfigError(BASE_KEY, f"configs extend each other in a cycle: {cycle}")
    data = _read_yaml_file(uri, storage_options)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(BASE_KEY, f"{uri}: must be a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:  # later bases over earlier ones, the file over all of them
        base_data = _read_with_bases(base_uri(uri, base), storage_options, (*chain, uri))
        merged = merge_mappings(merged, base_data)
    return merge_mappings(merged, data)


def base_uri(uri: str, base: str) -> str:
    """Where the ``base:`` entry ``base`` of the config at ``uri`` points: an absolute
    path or a ``scheme://`` URI as is, anything else relative to ``uri``'s folder."""
    from frameexit.storage import is_local, parent_uri

    if "://" in base or os.path.isabs(os.path.expanduser(base)):
        return base
    folder = parent_uri(uri)
    if is_local(uri):
        return os.path.normpath(os.path.join(folder, base))
    scheme, rest = folder.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, base))}"


def merge_mappings(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``under``: nested mappings merge, other values are replaced."""
    out = deep_copy(dict(under))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = deep_copy(value)
    return out


def deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [deep_copy(value) for value in data]
    return data
