"""What is registered, as data (caption decoder methods too), and how a user's own method, dataset, model or
template set registers from Python.

Each listing is one dict per name: ``name``, ``description`` and ``package`` (the plug-in package that registered
it; ``None`` for clipadapt's own and for names registered in this process). Registering a taken name raises
``NameTakenError``. ``clipadapt.methods`` and ``clipadapt.models`` are also package names: those packages are
callable and list (``registry.callable_package``), so ``clipadapt.methods()`` works whichever is found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def methods(pattern: str | None = None) -> list[dict[str, Any]]:
    """Classification methods: name, description, package, config section and its settings with defaults."""
    from clipadapt.methods import listing

    return listing(pattern)


def recipe_card(method: str) -> dict[str, Any]:
    """A method's recipe card (``clipadapt methods --card NAME``): its paper, reference repository and commit, and
    per setting the reference's value with its file:line, our config key and value, and why they differ ("" where
    they do not). docs/methods.md renders every card."""
    from dataclasses import asdict

    from clipadapt.methods.recipe_cards import load_card

    card = load_card(method)
    return {**asdict(card), "settings": [asdict(s) for s in card.settings]}


def caption_methods(pattern: str | None = None) -> list[dict[str, Any]]:
    """Caption decoder methods (``clipadapt caption methods``): name, description, package, config section and its
    settings with defaults; the bridge's settings (``bridge.*``, trained by every method) are shared, not listed."""
    from clipadapt.captioning.listing import listing

    return listing(pattern)


def models(pattern: str | None = None) -> list[dict[str, Any]]:
    """Named models (hub ids, local folders and ``open_clip:ARCH/TAG`` are accepted besides these)."""
    from clipadapt.models import listing

    return listing(pattern)


def datasets(pattern: str | None = None) -> list[dict[str, Any]]:
    """Registered datasets with their usage (``imagefolder:PATH``)."""
    from clipadapt.data import DATASETS

    return DATASETS.rows(pattern, usage=lambda n: DATASETS.get(n).usage)


def template_sets(pattern: str | None = None) -> list[dict[str, Any]]:
    """Prompt template sets with their templates."""
    from clipadapt.data.prompts import TEMPLATE_SETS

    return TEMPLATE_SETS.rows(pattern, templates=lambda n: TEMPLATE_SETS.get(n).as_strings())


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
