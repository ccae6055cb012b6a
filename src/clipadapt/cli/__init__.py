"""The command-line interface: a thin typer app over the library (``clipadapt --help``)."""

from clipadapt.cli.app import app, main

__all__ = ["app", "main"]
