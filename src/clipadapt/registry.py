"""One small registry used for models, datasets, methods and template sets.

Usage::

    DATASETS = Registry("dataset")

    @DATASETS.register("digits")
    def build_digits(...): ...

    DATASETS.get("digits")     # -> the registered object
    DATASETS.names()           # -> ["digits", ...]

Plug-ins (the built-in world, a user's package) register from their own side: ``add_plugin("pkg.module:function")``
names a function that registers names into any registries; every registry calls the functions not yet called on
its first lookup (``get``, ``names``, ``in``...), so a plug-in is never imported by the layers it extends, and
nothing is imported before a name is looked up.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from clipadapt.errors import UnknownNameError

T = TypeVar("T")

_PLUGINS: list[str] = []  # "module:function", in the order they were added
_LOADED: set[str] = set()  # called, or being called (a lookup from inside a plug-in does not call it again)


def add_plugin(target: str) -> None:
    """Name a plug-in's registration function, ``"package.module:function"``; it is called on the next lookup."""
    module, sep, function = target.partition(":")
    if not (module and sep and function):
        raise ValueError(f"plug-in '{target}' must be 'package.module:function'")
    if target not in _PLUGINS:
        _PLUGINS.append(target)


def load_plugins() -> None:
    """Call every plug-in's registration function not called yet."""
    for target in [t for t in _PLUGINS if t not in _LOADED]:
        _LOADED.add(target)
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function)()


class Registry(Generic[T]):
    """A name -> object mapping with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, help: str = "") -> Any:
        """Register ``obj`` under ``name``; without ``obj`` this is a decorator."""

        def add(item: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = item
            doc = help or (getattr(item, "__doc__", None) or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return item

        if obj is not None:
            return add(obj)
        return add

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; valid choices: {', '.join(self.names())}"
            ) from None

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted; ``pattern`` filters with shell wildcards (``"cifar*"``)."""
        load_plugins()
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def help(self, name: str) -> str:
        self.get(name)
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]


def import_submodules(package: str, path: list[str]) -> None:
    """Import every module of a package, so each registers what it defines: adding a method or a dataset loader is
    adding one file (``methods/__init__.py``, ``data/__init__.py``)."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def call_with_defaults(factory: Callable[..., T], **kwargs: Any) -> T:
    """Call ``factory`` with only the options that are set, so its own defaults apply (timm style)."""
    return factory(**{k: v for k, v in kwargs.items() if v is not None})
