"""Image captioning: a frozen CLIP image tower feeding a causal language model through a trained bridge.

A task beside classification (neither imports the other): it shares the engine, run directories, configs and the
generic report writers below it. Importing the package registers the caption datasets of ``caption_files`` and
``hub_captions``.
"""

from typing import Any

from clipadapt.captioning import caption_files, hub_captions  # noqa: F401  (registration)

_API = ("CaptionRun", "caption", "evaluate", "train")  # clipadapt.captioning.train(...): captioning/api.py


def __getattr__(name: str) -> Any:
    if name in _API:
        from clipadapt.captioning import api

        return getattr(api, name)
    raise AttributeError(f"module 'clipadapt.captioning' has no attribute '{name}'")
