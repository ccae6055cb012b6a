"""clipadapt: zero-shot evaluation, adaptation methods and honest comparisons for CLIP-style models.

This module is the composition point: it names the built-in world as a plug-in (registered on the first registry
lookup, see ``clipadapt.registry``) and imports nothing heavy.
"""

from clipadapt.registry import add_plugin
from clipadapt.version import __version__

add_plugin("clipadapt.world.plugin:register")

__all__ = ["__version__"]
