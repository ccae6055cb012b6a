"""``clipadapt cache``: what the feature caches hold, and pruning them."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from clipadapt.cli.common import out, result_table, setup_logging, user_errors
from clipadapt.errors import ConfigError

SHOWN = 12  # models listed, the largest first


def human(size: int) -> str:
    """Bytes in binary units, as ``--max-size`` reads them."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def ago(seconds_since_epoch: float) -> str:
    days = (time.time() - seconds_since_epoch) / 86400
    return "today" if days < 1 else f"{days:.0f} days ago"


@user_errors
def cache_command(
    older_than: Annotated[float | None, typer.Option(help="remove entries not used for this many days")] = None,
    max_size: Annotated[str | None, typer.Option(help="then remove the least recently used until the rest fit, "
                                                      "e.g. 5GB")] = None,
    clear: Annotated[bool, typer.Option(help="remove every entry (of --kind)")] = False,
    kind: Annotated[str | None, typer.Option(help="comma-separated: features, views, captions (default: all)")]
    = None,
    dry_run: Annotated[bool, typer.Option(help="say what would be removed; remove nothing")] = False,
):
    """List the feature caches (encoded splits, augmented views, caption features) by model and split, or prune
    them: --older-than DAYS, --max-size SIZE (least recently used first), --clear."""
    setup_logging()
    from clipadapt.api.cache import cache, prune_cache

    kinds = [k.strip() for k in kind.split(",") if k.strip()] if kind else None
    if older_than is None and max_size is None and not clear:
        if dry_run:
            raise ConfigError("--dry-run goes with --older-than, --max-size or --clear")
        info = cache(kinds)
        models: dict[str, list] = {}
        for entry in info["entries"]:  # most recently used first
            models.setdefault(entry["model"], []).append(entry)
        ranked = sorted(models.items(), key=lambda item: -sum(e["bytes"] for e in item[1]))
        rows = [(model, ", ".join(f"{sum(e['kind'] == k for e in items)} {k}" for k in info["kinds"]
                                  if any(e["kind"] == k for e in items)),
                 human(sum(e["bytes"] for e in items)), ago(items[0]["last_used"])) for model, items in ranked[:SHOWN]]
        kinds_line = ", ".join(f"{k} {v['entries']} ({human(v['bytes'])})" for k, v in info["kinds"].items())
        out.print(f"feature caches in {info['root']}: {human(info['bytes'])}; {kinds_line}", highlight=False)
        if rows:
            out.print(result_table(["model", "entries", "size", "last used"], rows, text=(1,)))
        if len(ranked) > SHOWN:
            rest = [e for _, items in ranked[SHOWN:] for e in items]
            out.print(f"... and {len(ranked) - SHOWN} more models ({human(sum(e['bytes'] for e in rest))})",
                      highlight=False)
        return
    result = prune_cache(older_than_days=older_than, max_size=max_size, clear=clear, kinds=kinds, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(result['removed'])} entries ({human(result['freed_bytes'])}); kept {result['kept']} "
              f"({human(result['kept_bytes'])})", highlight=False)
    if result["in_use"]:
        out.print(f"kept {len(result['in_use'])} entries in use by another process: "
                  f"{', '.join(e['path'] for e in result['in_use'][:3])}", highlight=False)
