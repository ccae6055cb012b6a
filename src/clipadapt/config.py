"""Dataclass configs: YAML in, dotted ``--set section.key=value`` overrides, resolved YAML out.

Every component owns a dataclass config whose fields carry help text (``metadata["help"]``) and whose
``__post_init__`` validates values, so an invalid override fails with a clear message whatever its source.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from clipadapt.errors import ConfigError
from clipadapt.io import atomic_write_text

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text; mutable defaults are wrapped in a factory."""
    metadata = {"help": help}
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def field_help(cls: type) -> dict[str, tuple[Any, str]]:
    """``{name: (default, help)}`` for a config class, for listings."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out[f.name] = (default, f.metadata.get("help", ""))
    return out


def require_positive(cfg: Any, names: tuple[str, ...], what: str) -> None:
    """``__post_init__`` helper: every named field must be > 0."""
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{what} {name} must be positive, got {getattr(cfg, name)}")


def section_name(name: str) -> str:
    """The config section of a registered method: ``full-ft`` -> ``full_ft`` (``--set full_ft.lp_ft=true``)."""
    return name.replace("-", "_")


def method_experiment_class(base: type, method: str, section: str, config_class: type,
                            section_defaults: dict[str, dict[str, Any]] | None = None) -> type:
    """A dataclass with ``base``'s common sections plus ``<section>: <config_class>`` (the method's own);
    ``section_defaults`` changes defaults of common sections for this method (``{"train": {"select": "last"}}``)."""
    fields: list[tuple] = [("method", str, option(method, help="adaptation method")),
                           (section, config_class, dataclasses.field(default_factory=config_class))]
    base_fields = {f.name: f for f in dataclasses.fields(base)}
    hints = typing.get_type_hints(base) if section_defaults else {}  # the classes, not the annotations' strings
    for name, values in (section_defaults or {}).items():
        kind = base_fields[name].default_factory

        def make(kind=kind, values=values):
            return dataclasses.replace(kind(), **values)

        fields.append((name, hints[name], dataclasses.field(default_factory=make)))
    return dataclasses.make_dataclass(f"{config_class.__name__}{base.__name__}", fields, bases=(base,))


def load_method_experiment(cls: type, method: str, config_file: str | Path | None, overrides: list[str] | None,
                           what: str = "method"):
    """Defaults, then a YAML file (e.g. a run's config.yaml), then ``section.key=value`` overrides; the file must
    be for ``method``."""
    experiment = load_config(cls, config_file, overrides)
    if experiment.method != method:
        raise ConfigError(f"config file is for {what} '{experiment.method}', not '{method}'")
    return experiment


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn a YAML-parsed value into the field's declared type, or say why not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=where)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item_tp, where) for v in value]
    if origin is dict or tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build ``cls`` from a (possibly nested) dict; unknown keys are an error that lists the valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in (data or {}).items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config key '{where}'; valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], where)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def override_section(item: str) -> str:
    """``"lora.r=4"`` -> ``"lora"``."""
    return item.split("=", 1)[0].split(".", 1)[0].strip()


def format_overrides(values: dict[str, Any]) -> list[str]:
    """``{"data.dataset": "imagefolder:x", "run.resume": True}`` -> ``["data.dataset='imagefolder:x'", ...]``.

    Strings are quoted so YAML keeps them strings (``'1e-3'``, ``'a:b'``); ``None`` values are left out.
    """
    items = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, str):
            items.append(f"{key}='" + value.replace("'", "''") + "'")
        else:
            items.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return items


def apply_overrides(cfg: C, overrides: list[str] | None) -> C:
    """Apply ``["section.key=value", ...]``; values are parsed as YAML scalars (``1e-3``, ``true``, ``[a, b]``)."""
    if not overrides:
        return cfg
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node, cls = data, type(cfg)
        for depth, key in enumerate(keys):
            names = [f.name for f in dataclasses.fields(cls)]
            if key not in names:
                where = ".".join(keys[:depth]) or "top level"
                raise ConfigError(f"unknown config key '{dotted}' ({where} has: {', '.join(names)})")
            if depth == len(keys) - 1:
                node[key] = yaml.safe_load(raw) if raw.strip() else ""
            else:
                sub = typing.get_type_hints(cls)[key]
                if not dataclasses.is_dataclass(sub):
                    raise ConfigError(f"'{'.'.join(keys[: depth + 1])}' is a value, not a section")
                node, cls = node[key], sub
    return from_dict(type(cfg), data)


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Defaults, then a YAML file, then dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping")
    base = from_dict(cls, data)
    return apply_overrides(base, overrides)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    atomic_write_text(path, dump_config(cfg))


# -- settings from Python: nested dicts or dotted keys, turned into --set items so both share one validation ------


def yaml_scalar(value: Any) -> str:
    """A Python value as the YAML text ``--set`` would parse back to it (``None`` -> ``null``, ``[4, 8]``)."""
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
        items.append(f"{name}={yaml_scalar(value)}")
    return items


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The explicit arguments of a call that were given (``None``: leave the config's value)."""
    return {name: value for name, value in values.items() if value is not None}
