"""Adaptation methods, one module each, registered by name (``clipadapt methods`` lists them).

Every module of this package is imported here, so a new method is one new file that registers itself with
``@register_method`` (docs/architecture.md).
"""

from clipadapt.methods.base import METHODS, Method, MethodConfig, MethodEntry, list_methods, register_method
from clipadapt.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["METHODS", "Method", "MethodConfig", "MethodEntry", "list_methods", "register_method"]
