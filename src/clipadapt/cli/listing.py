"""Listings: registered models, datasets, template sets and methods."""

from __future__ import annotations

from typing import Annotated

import typer

from clipadapt.cli.common import out, result_table, user_errors


@user_errors
def models_command(pattern: Annotated[str | None, typer.Argument(help="shell pattern, e.g. 'ViT-*'")] = None):
    """List named models and the other accepted model specs."""
    from clipadapt.models import MODELS, SCHEMES

    rows = [[name, MODELS.help(name)] for name in MODELS.names(pattern)]
    out.print(result_table(["model", "what it is"], rows, title="named models", text=[1]))
    out.print("Also accepted: any transformers CLIP/SigLIP hub id (org/name), a local model folder, "
              + ", ".join(f"{s}:..." for s in SCHEMES.names()) + " (optional extra).")


@user_errors
def datasets_command():
    """List registered datasets."""
    from clipadapt.data import DATASETS

    rows = [[entry.usage, DATASETS.help(name)] for name, entry in DATASETS.items()]
    out.print(result_table(["dataset", "what it is"], rows, text=[1]))


@user_errors
def templates_command(name: Annotated[str | None, typer.Argument(help="show the templates of one set")] = None):
    """List prompt template sets, or the templates of one set."""
    from clipadapt.data.prompts import TEMPLATE_SETS

    if name:
        template_set = TEMPLATE_SETS.get(name)
        for template in template_set.as_strings():
            out.print(template, highlight=False)
        return
    rows = [[set_name, len(template_set.templates), template_set.description]
            for set_name, template_set in TEMPLATE_SETS.items()]
    out.print(result_table(["template set", "templates", "description"], rows, text=[2]))


@user_errors
def methods_command(pattern: Annotated[str | None, typer.Argument(help="shell pattern, e.g. 'lin*'")] = None):
    """List adaptation methods with their config fields and defaults (set them with --set SECTION.KEY=VALUE)."""
    from clipadapt.config import field_help
    from clipadapt.methods import METHODS

    for name in METHODS.names(pattern):
        entry = METHODS.get(name)
        rows = [[f"{entry.section}.{key}", default, text]
                for key, (default, text) in field_help(entry.config_class).items()]
        table = result_table(["field", "default", "help"], rows, title=f"{name}: {METHODS.help(name)}",
                             text=[2])
        table.title_justify = "left"
        out.print(table)
    out.print("Shared sections: train.* (see `clipadapt train --help`), data.*, model.*, run.*", highlight=False)
