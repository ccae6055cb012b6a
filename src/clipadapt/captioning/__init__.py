"""Image captioning: a frozen CLIP image tower feeding a causal language model through a trained bridge.

A task beside classification (neither imports the other): it shares the engine, run directories, configs and the
generic report writers below it. Importing the package registers the caption datasets of ``caption_files`` and
``hub_captions``.
"""

from clipadapt.captioning import caption_files, hub_captions  # noqa: F401  (registration)
