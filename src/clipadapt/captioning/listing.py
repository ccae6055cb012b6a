"""Caption decoder methods and the sections every caption run shares, as data (``clipadapt caption methods``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from clipadapt.captioning.methods import CAPTION_METHODS
from clipadapt.captioning.runs import CaptionExperiment
from clipadapt.config import field_help, section_name


def listing(pattern: str | None = None) -> list[dict[str, Any]]:
    """Decoder methods as data: name, description, package, config section and its settings with their defaults
    (the sections every method shares, ``bridge.*`` first: ``shared_sections``)."""
    return CAPTION_METHODS.rows(pattern, section=section_name,
                                settings=lambda n: {k: d for k, (d, _) in
                                                    field_help(CAPTION_METHODS.get(n).config_cls).items()})


def shared_sections() -> dict[str, type]:
    """The config class of each section a caption run has besides its method's own, the bridge first (every method
    trains it), then in the order of a run's config.yaml: ``{"bridge": BridgeConfig, "model": ..., ...}``."""
    sections = {f.name: type(f.default_factory()) for f in dataclasses.fields(CaptionExperiment)
                if f.default_factory is not dataclasses.MISSING}
    return {"bridge": sections.pop("bridge"), **sections}
