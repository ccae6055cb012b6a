"""Adaptation methods, one module each, registered by name (``clipadapt methods`` lists them).

Every module of this package is imported here, so a new method is one new file that registers itself with
``@register_method`` (docs/architecture.md).
"""

from typing import Any

from clipadapt.config import field_help
from clipadapt.methods.base import METHODS, Method, MethodConfig, MethodEntry, list_methods, register_method
from clipadapt.registry import callable_package, import_submodules

import_submodules(__name__, __path__)


def listing(pattern: str | None = None) -> list[dict[str, Any]]:
    """Methods as data: name, description, package, config section, what it chooses on validation ([]: val-free)
    and its settings with their defaults."""
    return METHODS.rows(pattern, section=lambda n: METHODS.get(n).section,
                        chooses_on_val=lambda n: list(METHODS.get(n).method_class.default_choices()),
                        settings=lambda n: {k: d for k, (d, _) in field_help(METHODS.get(n).config_class).items()})


callable_package(__name__, listing)  # clipadapt.methods() lists

__all__ = ["METHODS", "Method", "MethodConfig", "MethodEntry", "list_methods", "register_method"]
