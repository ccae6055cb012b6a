"""The public Python API: the runs and workflows of the command line, listings, plug-in registration and
``load_run``. ``import clipadapt`` re-exports every name here lazily (nothing heavy is imported before a call).

    import clipadapt
    run = clipadapt.train("lora", "world:tiny", "world:shapes-novel", shots=8, lora={"r": 4})
    run.metrics["acc1"], run.history, run.predict("my_photo.jpg")

docs/python.md has an example for every function.
"""

from clipadapt.api.advise import advise, advise_table
from clipadapt.api.cache import cache, prune_cache
from clipadapt.api.listing import (
    caption_methods,
    datasets,
    methods,
    models,
    recipe_card,
    register_dataset,
    register_method,
    register_model,
    register_template_set,
    template_sets,
)
from clipadapt.api.runs import Run, load_run
from clipadapt.api.testtime import testtime
from clipadapt.api.web import app, space
from clipadapt.api.workflows import (
    bench,
    benchmark,
    compare,
    compare_captions,
    coop_words,
    demo,
    ensemble,
    evaluate,
    export,
    predict,
    report,
    robustness,
    sweep,
    train,
    wise,
    zeroshot,
)
from clipadapt.errors import ClipAdaptError, ConfigError, DataError, NameTakenError, UnknownNameError

__all__ = [
    "ClipAdaptError", "ConfigError", "DataError", "NameTakenError", "Run", "UnknownNameError", "advise",
    "advise_table", "app", "bench", "benchmark", "cache", "caption_methods", "compare", "compare_captions",
    "coop_words", "datasets", "demo", "ensemble", "evaluate", "export", "load_run", "methods", "models", "predict",
    "prune_cache", "recipe_card", "register_dataset", "register_method", "register_model", "register_template_set",
    "report", "robustness", "space", "sweep", "template_sets", "testtime", "train", "wise", "zeroshot",
]
