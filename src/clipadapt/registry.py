"""One small registry used for models, datasets, methods and template sets.

Usage::

    DATASETS = Registry("dataset")

    @DATASETS.register("digits")
    def build_digits(...): ...

    DATASETS.get("digits")     # -> the registered object
    DATASETS.names()           # -> ["digits", ...]

Plug-ins (the built-in world, a user's package) register from their own side: ``add_plugin("pkg.module:function")``
names a function that registers names into any registries, and a pip-installed package declares entry points in the
groups ``clipadapt.methods``, ``clipadapt.datasets``, ``clipadapt.models`` (or ``clipadapt.plugins``): a module whose
import registers its names, or ``module:function``. Every registry loads the plug-ins not loaded yet on its first
lookup (``get``, ``names``, ``in``...): a plug-in is never imported by the layers it extends, nothing is imported
before a name is looked up, and each name remembers the package that registered it (``Registry.origin``).
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import pkgutil
import types
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from clipadapt.errors import NameTakenError, UnknownNameError

T = TypeVar("T")

log = logging.getLogger(__name__)
ENTRY_POINT_GROUPS = ("clipadapt.plugins", "clipadapt.models", "clipadapt.datasets", "clipadapt.methods")
_PLUGINS: list[str] = []  # "module:function", in the order they were added
_LOADED: set[str] = set()  # called, or being called (a lookup from inside a plug-in does not call it again)
_ORIGIN: list[str | None] = [None]  # the package whose plug-in is registering now (None: clipadapt itself)


def add_plugin(target: str) -> None:
    """Name a plug-in's registration function, ``"package.module:function"``; it is called on the next lookup."""
    module, sep, function = target.partition(":")
    if not (module and sep and function):
        raise ValueError(f"plug-in '{target}' must be 'package.module:function'")
    if target not in _PLUGINS:
        _PLUGINS.append(target)


def _entry_points() -> list[tuple[str, str]]:
    """``(target, package)`` of every installed package's clipadapt entry points."""
    import importlib.metadata  # only here: it costs more than the rest of `import clipadapt`

    found = []
    for group in ENTRY_POINT_GROUPS:
        for entry in importlib.metadata.entry_points(group=group):
            package = entry.dist.name if entry.dist is not None else entry.module.split(".")[0]
            found.append((entry.value.replace(" ", ""), package))
    return found


def load_plugins() -> None:
    """Load every plug-in not loaded yet: those named by ``add_plugin`` (clipadapt's own world), then installed
    packages' entry points. A plug-in that fails to load is reported and skipped: its names are missing."""
    pending = [(t, None) for t in _PLUGINS if t not in _LOADED]
    if not _LOADED or pending:
        pending += [(t, p) for t, p in _entry_points() if t not in _LOADED and t not in _PLUGINS]
    for target, package in pending:
        _LOADED.add(target)
        module, _, function = target.partition(":")
        _ORIGIN[0] = package
        try:
            loaded = importlib.import_module(module)
            if function:
                getattr(loaded, function)()
        except Exception as e:  # a broken plug-in must not take clipadapt down with it
            if package is None:  # clipadapt's own (the world): a bug to see, and to retry on the next lookup
                _LOADED.discard(target)
                raise
            log.warning("plug-in %s (%s) could not be loaded, its names are missing: %s", target, package,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
        finally:
            _ORIGIN[0] = None


class Registry(Generic[T]):
    """A name -> object mapping with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._origin: dict[str, str | None] = {}

    def register(self, name: str, obj: T | None = None, *, help: str = "") -> Any:
        """Register ``obj`` under ``name``; without ``obj`` this is a decorator."""

        def add(item: T) -> T:
            if name in self._entries:
                by = self._origin.get(name) or "clipadapt"
                raise NameTakenError(f"{self.kind} '{name}' is already registered (by {by}); choose another name")
            self._entries[name] = item
            self._origin[name] = _ORIGIN[0]
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

    def origin(self, name: str) -> str | None:
        """The package of the plug-in that registered ``name`` (None: clipadapt or code run in this process)."""
        self.get(name)
        return self._origin.get(name)

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

    def rows(self, pattern: str | None = None, **extra: Callable[[str], Any]) -> list[dict[str, Any]]:
        """A listing as data: ``name``, ``description``, ``package`` (None: clipadapt's own) and ``extra`` columns."""
        return [{"name": name, "description": self.help(name), "package": self.origin(name),
                 **{key: column(name) for key, column in extra.items()}} for name in self.names(pattern)]


class _ListingModule(types.ModuleType):
    """A package that is also its listing: ``clipadapt.methods()`` (the package ``clipadapt.methods`` called)."""

    listing: Callable[..., list[dict[str, Any]]]

    def __call__(self, pattern: str | None = None) -> list[dict[str, Any]]:
        return type(self).listing(pattern)


def callable_package(name: str, listing: Callable[..., list[dict[str, Any]]]) -> None:
    """Make the package ``name`` callable as ``listing``: ``clipadapt.methods`` names both the package and the
    public listing function, and an attribute cannot be both, so the package itself lists."""
    import sys

    module_class = type("ListingModule", (_ListingModule,), {"listing": staticmethod(listing)})
    sys.modules[name].__class__ = module_class


def import_submodules(package: str, path: list[str]) -> None:
    """Import every module of a package, so each registers what it defines: adding a method or a dataset loader is
    adding one file (``methods/__init__.py``, ``data/__init__.py``)."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def call_with_defaults(factory: Callable[..., T], **kwargs: Any) -> T:
    """Call ``factory`` with only the options that are set, so its own defaults apply (timm style)."""
    return factory(**{k: v for k, v in kwargs.items() if v is not None})
