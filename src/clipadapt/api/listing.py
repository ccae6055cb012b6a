"""What is registered, as data, and how a user's own method, dataset, model or template set registers from Python.

Each listing is one dict per name: ``name``, ``description`` and ``package`` (the plug-in package that registered
it; ``None`` for clipadapt's own and for names registered in this process). Registering a taken name raises
``NameTakenError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from clipadapt.registry import Registry


def _rows(registry: Registry, pattern: str | None, **extra: Callable[[str], Any]) -> list[dict[str, Any]]:
    return [{"name": name, "description": registry.help(name), "package": registry.origin(name),
             **{key: fn(name) for key, fn in extra.items()}} for name in registry.names(pattern)]


def methods(pattern: str | None = None) -> list[dict[str, Any]]:
    """Classification methods: name, description, package, config section and its fields with defaults."""
    from clipadapt.config import field_help
    from clipadapt.methods import METHODS

    return _rows(METHODS, pattern, section=lambda n: METHODS.get(n).section,
                 settings=lambda n: {k: d for k, (d, _) in field_help(METHODS.get(n).config_class).items()})


def models(pattern: str | None = None) -> list[dict[str, Any]]:
    """Named models (hub ids, local folders and ``open_clip:ARCH/TAG`` are accepted besides these)."""
    from clipadapt.models import MODELS

    return _rows(MODELS, pattern)


def datasets(pattern: str | None = None) -> list[dict[str, Any]]:
    """Registered datasets with their usage (``imagefolder:PATH``)."""
    from clipadapt.data import DATASETS

    return _rows(DATASETS, pattern, usage=lambda n: DATASETS.get(n).usage)


def template_sets(pattern: str | None = None) -> list[dict[str, Any]]:
    """Prompt template sets with their templates."""
    from clipadapt.data.prompts import TEMPLATE_SETS

    return _rows(TEMPLATE_SETS, pattern, templates=lambda n: TEMPLATE_SETS.get(n).as_strings())


def register_method(name: str, config_class: type, section: str | None = None):
    """Class decorator for a ``Method`` subclass (see docs/architecture.md, "Adding things")."""
    from clipadapt.methods.base import register_method as register

    return register(name, config_class, section)


def register_dataset(name: str, takes_argument: bool = False, usage: str = "", help: str = ""):
    """Decorator for ``factory(DataConfig, argument) -> ClassificationDataset``."""
    from clipadapt.data.registry import register_dataset as register

    return register(name, takes_argument, usage, help)


def register_model(name: str, loader: Callable[..., Any] | None = None, *, help: str = "") -> Any:
    """Register ``loader(spec, **kwargs) -> ClipBundle`` under ``name``; without ``loader``, a decorator."""
    from clipadapt.models import MODELS

    return MODELS.register(name, loader, help=help)


def register_template_set(name: str, templates: Sequence[str | Callable[[str], str]], description: str = "") -> None:
    """A named prompt template set (strings with ``{}``, or callables of the class name)."""
    from clipadapt.data.prompts import TEMPLATE_SETS, TemplateSet

    TEMPLATE_SETS.register(name, TemplateSet(name, list(templates), description), help=description)
