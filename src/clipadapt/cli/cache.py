"""``clipadapt cache``: what the feature caches hold, and pruning them."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from clipadapt.cli.common import out, result_table, setup_logging, user_errors
from clipadapt.errors import ConfigError, format_bytes

SHOWN = 12  # models listed, the largest first


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
        kinds_line = ", ".join(f"{k} {v['entries']} ({format_bytes(v['bytes'])})" for k, v in info["kinds"].items())
        out.print(f"feature caches in {info['root']}: {format_bytes(info['bytes'])}; {kinds_line}", highlight=False)
        rows = [(m["model"], ", ".join(f"{n} {k}" for k, n in m["entries"].items()), format_bytes(m["bytes"]),
                 ago(m["last_used"])) for m in info["models"][:SHOWN]]
        if rows:
            out.print(result_table(["model", "entries", "size", "last used"], rows, text=(1,)))
        rest = info["models"][SHOWN:]
        if rest:
            out.print(f"... and {len(rest)} more models ({format_bytes(sum(m['bytes'] for m in rest))})",
                      highlight=False)
        return
    result = prune_cache(older_than_days=older_than, max_size=max_size, clear=clear, kinds=kinds, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(result['removed'])} entries ({format_bytes(result['freed_bytes'])}); kept {result['kept']} "
              f"({format_bytes(result['kept_bytes'])})", highlight=False)
    if result["in_use"]:
        out.print(f"kept {len(result['in_use'])} entries in use by another process: "
                  f"{', '.join(e['path'] for e in result['in_use'][:3])}", highlight=False)
