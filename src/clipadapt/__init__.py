"""clipadapt: zero-shot evaluation, adaptation methods and honest comparisons for CLIP-style models.

This module is the composition point: it names the built-in world as a plug-in (registered on the first registry
lookup, see ``clipadapt.registry``) and re-exports the public API (``clipadapt.api``) lazily, so ``import clipadapt``
imports nothing heavy: ``clipadapt.train(...)`` loads what it needs on the call.
"""

from typing import TYPE_CHECKING, Any

from clipadapt.errors import ClipAdaptError, ConfigError, DataError, NameTakenError, UnknownNameError
from clipadapt.registry import add_plugin
from clipadapt.version import __version__

add_plugin("clipadapt.world.plugin:register")

_API = (
    "Run", "advise", "advise_table", "app", "bench", "benchmark", "cache", "caption_methods", "compare",
    "compare_captions", "coop_words", "datasets", "demo", "ensemble", "evaluate", "export", "load_run", "methods",
    "models", "predict", "prune_cache", "recipe_card", "register_dataset", "register_method", "register_model",
    "register_template_set", "report", "robustness", "space", "sweep", "template_sets", "testtime", "train", "wise",
    "zeroshot",
)

if TYPE_CHECKING:
    from clipadapt.api import (  # noqa: F401
        Run,
        advise,
        advise_table,
        app,
        bench,
        cache,
        caption_methods,
        compare,
        compare_captions,
        coop_words,
        datasets,
        demo,
        ensemble,
        evaluate,
        export,
        load_run,
        methods,
        models,
        predict,
        prune_cache,
        recipe_card,
        register_dataset,
        register_method,
        register_model,
        register_template_set,
        report,
        robustness,
        space,
        sweep,
        template_sets,
        testtime,
        train,
        wise,
        zeroshot,
    )


def __getattr__(name: str) -> Any:
    if name in ("methods", "models", "captioning"):  # methods(), models() list; captioning.train() and its twins
        import importlib

        return importlib.import_module(f"clipadapt.{name}")
    if name in _API:
        import clipadapt.api

        return getattr(clipadapt.api, name)
    raise AttributeError(f"module 'clipadapt' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["ClipAdaptError", "ConfigError", "DataError", "NameTakenError", "UnknownNameError", "__version__", *_API]
