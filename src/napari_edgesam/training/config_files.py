"""Config files, overrides and typed construction from plain data (for :mod:`.config`).

``read_config_file`` reads JSON (``.json``), TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs
PyYAML); ``apply_override`` applies ``section.field=value`` strings (values parsed as JSON when
possible, else kept as text); ``build_dataclass`` builds and type-checks a (nested) dataclass.
Every problem raises :class:`ConfigError` naming the field. Does not import torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or override is malformed or inconsistent (the message names the field)."""


# ---------------------------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------------------------


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Nested plain data of a ``.json``, ``.toml`` or ``.yaml``/``.yml`` config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml), or use JSON") from None
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: unsupported config format {suffix!r}; use .json, .toml or .yaml")
    except ConfigError:
        raise
    except Exception as err:  # parse errors of any of the three formats
        raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """JSON value if ``text`` parses as JSON (numbers, true/false, null, lists), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply ``section.field=value`` (or ``phase=...``) to nested plain data in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
    node[parts[-1]] = parse_value(raw.strip())


# ---------------------------------------------------------------------------------------------
# Typed construction from plain data
# ---------------------------------------------------------------------------------------------


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from nested plain data: nested dataclass fields are built
    recursively, other values checked and coerced to their annotated type; keys starting with
    ``_`` are comments. ``prefix`` (``"section."``) names the fields in errors."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names and not str(k).startswith("_")]
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {names}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], hint, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()
        ):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported field type {hint!r}")  # pragma: no cover
