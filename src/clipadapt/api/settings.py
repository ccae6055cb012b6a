"""Settings from Python: nested dicts or dotted keys, turned into the command line's ``--set`` items so that both are
validated by one code path (``config.apply_overrides``) and fail with the same messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from clipadapt.errors import ConfigError


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 4}, "train.epochs": 5}`` -> ``{"lora.r": 4, "train.epochs": 5}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"setting {key!r}: names are strings like 'lora' or 'train.epochs'")
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def as_overrides(settings: Mapping[str, Any] | None = None, overrides: Iterable[str] = ()) -> list[str]:
    """``--set`` items (``overrides``, as typed) followed by ``settings`` (Python values, ``None`` means null)."""
    items = [str(item) for item in overrides]
    for name, value in flatten(settings or {}).items():
        items.append(f"{name}={_yaml_scalar(value)}")
    return items


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The explicit arguments of a call that were given (``None``: leave the config's value)."""
    return {name: value for name, value in values.items() if value is not None}
