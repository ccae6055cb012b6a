"""Listings: registered models, datasets, template sets and methods."""

from __future__ import annotations

from typing import Annotated

import typer

from clipadapt.cli.common import out, result_table, user_errors


def package_note(row: dict) -> str:
    return f" [{row['package']}]" if row["package"] else ""


@user_errors
def models_command(pattern: Annotated[str | None, typer.Argument(help="shell pattern, e.g. 'ViT-*'")] = None):
    """List named models and the other accepted model specs."""
    from clipadapt.api import models
    from clipadapt.models import SCHEMES

    rows = [[row["name"], row["description"] + package_note(row)] for row in models(pattern)]
    out.print(result_table(["model", "what it is"], rows, title="named models", text=[1]))
    out.print("Also accepted: any transformers CLIP/SigLIP hub id (org/name), a local model folder, "
              + ", ".join(f"{s}:..." for s in SCHEMES.names()) + " (optional extra).")


@user_errors
def datasets_command():
    """List registered datasets."""
    from clipadapt.api import datasets

    rows = [[row["usage"], row["description"] + package_note(row)] for row in datasets()]
    out.print(result_table(["dataset", "what it is"], rows, text=[1]))


@user_errors
def templates_command(name: Annotated[str | None, typer.Argument(help="show the templates of one set")] = None):
    """List prompt template sets, or the templates of one set."""
    from clipadapt.api import template_sets
    from clipadapt.data.prompts import TEMPLATE_SETS

    if name:
        TEMPLATE_SETS.get(name)  # the unknown-name message lists the sets
        for template in template_sets(name)[0]["templates"]:
            out.print(template, highlight=False)
        return
    rows = [[row["name"], len(row["templates"]), row["description"] + package_note(row)] for row in template_sets()]
    out.print(result_table(["template set", "templates", "description"], rows, text=[2]))


def settings_table(title: str, section: str, config_class: type):
    """One section's settings (``SECTION.KEY``, default, help) under a title: `clipadapt methods` and
    `clipadapt caption methods`."""
    from clipadapt.config import field_help

    rows = [[f"{section}.{key}", default, text] for key, (default, text) in field_help(config_class).items()]
    table = result_table(["field", "default", "help"], rows, title=title, text=[2])
    table.title_justify = "left"
    return table


@user_errors
def methods_command(pattern: Annotated[str | None, typer.Argument(help="shell pattern, e.g. 'lin*'")] = None,
                    card: Annotated[str | None, typer.Option(help="print this method's recipe card: each setting "
                                                                  "against its paper's reference code")] = None):
    """List adaptation methods with their config fields and defaults (set them with --set SECTION.KEY=VALUE)."""
    from clipadapt.api import methods
    from clipadapt.methods import METHODS

    if card is not None:
        print_card(card)
        return
    for row in methods(pattern):
        chooses = ", ".join(row["chooses_on_val"]) or "nothing (val-free)"
        out.print(settings_table(f"{row['name']}: {row['description']}{package_note(row)}\n  chooses on validation: "
                                 f"{chooses}", row["section"], METHODS.get(row["name"]).config_class))
    out.print("Shared sections: train.* (see `clipadapt train --help`), data.*, model.*, run.*, eval.* (eval.control: "
              "forgetting, docs/methods.md)", highlight=False)


def print_card(method: str) -> None:
    """``clipadapt methods --card NAME``: the card as a table."""
    from clipadapt.api import recipe_card

    card = recipe_card(method)
    title = f"{card['method']}: {card['paper']}"
    if card["repository"]:
        title += f"\n  reference: github.com/{card['repository']} at {card['commit']}"
    rows = [[s["setting"], s["reference"], s["source"] or "paper",
             f"{s['ours']}" + (f" ({s['key']})" if s["key"] else ""), s["why"] or "="] for s in card["settings"]]
    table = result_table(["setting", "reference", "source", "ours", "why they differ"], rows, title=title,
                         text=[1, 2, 3, 4])
    table.title_justify = "left"
    out.print(table)
    if card["note"]:
        out.print(card["note"], highlight=False)
