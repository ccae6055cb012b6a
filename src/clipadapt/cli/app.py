"""The ``clipadapt`` command, assembled from one module per command group."""

from __future__ import annotations

import sys

import typer

from clipadapt.cli import (
    advise,
    bench,
    benchmark,
    cache,
    combine,
    compare,
    demo,
    export,
    listing,
    predict,
    testtime,
    training,
    web,
    world,
    zeroshot,
)
from clipadapt.cli.caption import caption_app

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Zero-shot evaluation and adaptation of CLIP-style models, with honest comparisons.",
)
for name, command in [
    ("models", listing.models_command),
    ("datasets", listing.datasets_command),
    ("templates", listing.templates_command),
    ("methods", listing.methods_command),
    ("zeroshot", zeroshot.zeroshot_command),
    ("testtime", testtime.testtime_command),
    ("train", training.train_command),
    ("eval", training.eval_command),
    ("coop-words", training.coop_words_command),
    ("compare", compare.compare_command),
    ("report", compare.report_command),
    ("wise", combine.wise_command),
    ("ensemble", combine.ensemble_command),
    ("export", export.export_command),
    ("predict", predict.predict_command),
    ("robustness", predict.robustness_command),
    ("bench", bench.bench_command),
    ("benchmark", benchmark.benchmark_command),
    ("advise", advise.advise_command),
    ("demo", demo.demo_command),
    ("app", web.app_command),
    ("cache", cache.cache_command),
]:
    app.command(name)(command)

world_app = typer.Typer(no_args_is_help=True, help="The built-in offline world: generated scenes and a tiny CLIP.")
for name, command in [
    ("pretrain", world.world_pretrain_command),
    ("lm", world.world_lm_command),
    ("captions", world.world_captions_command),
    ("show", world.world_show_command),
]:
    world_app.command(name)(command)
app.add_typer(world_app, name="world")
app.add_typer(caption_app, name="caption")


def main() -> None:
    try:
        app()
    except SystemExit as e:
        sys.exit(e.code)
