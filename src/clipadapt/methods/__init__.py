"""Adaptation methods, one module each, registered by name (``clipadapt methods`` lists them)."""

from clipadapt.methods import (  # noqa: F401 (registration)
    baseline,
    bitfit,
    clip_adapter,
    coop,
    full_ft,
    linear_head,
    linear_probe,
    lora,
    tip_adapter,
    vision_prefix,
    visual_prompt,
    vpt,
)
from clipadapt.methods.base import METHODS, Method, MethodConfig, MethodEntry, list_methods, register_method

__all__ = ["METHODS", "Method", "MethodConfig", "MethodEntry", "list_methods", "register_method"]
