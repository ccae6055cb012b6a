"""``clipadapt app``: the web page to try runs on your own photos, or with ``--space`` a Hugging Face Space folder."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import DeviceOpt, out, setup_logging, user_errors
from clipadapt.errors import ConfigError


def check_port(host: str, port: int) -> None:
    """A one-line refusal when ``port`` cannot be served on ``host`` (taken, or not a port)."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a port number; valid: 1 to 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closing port is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(f"--port {port} on {host} is in use ({error.strerror}); give another --port, or none "
                              f"to take the first free one from 7860") from None


@user_errors
def app_command(
    runs: Annotated[list[Path], typer.Argument(help="run directories, or folders of runs (a compare or benchmark "
                                                    "output)")],
    port: Annotated[int | None, typer.Option(help="port to serve on (default: the first free one from 7860)")] = None,
    host: Annotated[str, typer.Option(help="address to serve on (0.0.0.0: reachable from other machines)")
                    ] = "127.0.0.1",
    share_folder: Annotated[Path | None, typer.Option(help="a folder of your photos, offered on the page as "
                                                           "examples")] = None,
    space: Annotated[Path | None, typer.Option(help="write a Hugging Face Space folder here instead of serving")
                     ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --space folder")] = False,
    device: DeviceOpt = None,
):
    """A web page with your photo and every run's answer side by side: top-5 classes and saliency, or a caption and
    its per-word attention; zero-shot runs take your own class names. Needs `pip install 'clipadapt[app]'`."""
    setup_logging()
    import clipadapt

    if space is not None:
        written = clipadapt.space(runs, space, overwrite=overwrite, device=device)
        for model in written["models"]:
            out.print(f"{model['folder']}: {model['method']} on {model['dataset']} ({model['kind']} classifier)",
                      highlight=False)
        out.print(f"Space folder: {written['out']} ({len(written['files'])} files); try it with `cd {written['out']} "
                  f"&& python app.py`", highlight=False)
        return
    if port is not None:
        check_port(host, port)
    page = clipadapt.app(runs, device=device, share_folder=share_folder)
    from clipadapt.webapp.page import launch

    url = launch(page, port, host, share_folder, block=False, quiet=True)
    names = [panel.title for panel in page.clipadapt_panels]
    out.print(f"serving {len(names)} run{'s' * (len(names) != 1)} at {url} (Ctrl-C to stop)", highlight=False)
    page.block_thread()
