"""Prompt template sets: named sets shipped as data, files of templates, or templates typed on the command line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from clipadapt.errors import ConfigError, UnknownNameError
from clipadapt.registry import Registry

Template = str | Callable[[str], str]


@dataclass
class TemplateSet:
    """One or more templates; several templates form a prompt ensemble."""

    name: str
    templates: list[Template]
    description: str = ""
    source: str = field(default="builtin")

    def __post_init__(self) -> None:
        if not self.templates:
            raise ConfigError(f"template set '{self.name}' has no templates")
        for template in self.templates:
            if isinstance(template, str) and "{}" not in template:
                raise ConfigError(f"template '{template}' has no '{{}}' placeholder for the class name")

    def fill(self, classname: str) -> list[str]:
        return [t.replace("{}", classname) if isinstance(t, str) else t(classname) for t in self.templates]

    def as_strings(self) -> list[str]:
        return [t if isinstance(t, str) else getattr(t, "__name__", "<callable>") for t in self.templates]


TEMPLATE_SETS: Registry[TemplateSet] = Registry("template set")


def _register_builtin() -> None:
    data = yaml.safe_load(resources.files(__name__).joinpath("templates.yaml").read_text())
    for name, entry in data.items():
        TEMPLATE_SETS.register(name, TemplateSet(name, list(entry["templates"]), entry.get("description", "")),
                               help=entry.get("description", ""))


_register_builtin()


def read_template_file(path: str | Path) -> TemplateSet:
    """One template per line; blank lines and lines starting with '#' are ignored."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text().splitlines()]
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates:
        raise ConfigError(f"template file '{path}' holds no templates")
    return TemplateSet(path.stem, templates, f"from {path}", source=str(path))


def resolve_template_set(item: str | TemplateSet) -> TemplateSet:
    """A registered name, a file of templates, or one template containing '{}'."""
    if isinstance(item, TemplateSet):
        return item
    if item in TEMPLATE_SETS:
        return TEMPLATE_SETS.get(item)
    path = Path(item).expanduser()
    if path.is_file():
        return read_template_file(path)
    if "{}" in item:
        return TemplateSet(item, [item], "custom template", source="command line")
    if " " in item.strip():
        raise ConfigError(f"template '{item}' has no '{{}}' placeholder for the class name")
    raise UnknownNameError(
        f"unknown template set '{item}'; valid choices: {', '.join(TEMPLATE_SETS.names())}, "
        f"a file with one template per line, or a template containing '{{}}'"
    )


def resolve_template_sets(items: Sequence[str | TemplateSet]) -> list[TemplateSet]:
    sets = [resolve_template_set(i) for i in items]
    names = [s.name for s in sets]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigError(f"template set given twice: {', '.join(sorted(duplicates))}")
    return sets


__all__ = ["TEMPLATE_SETS", "TemplateSet", "read_template_file", "resolve_template_set", "resolve_template_sets"]
