"""`histstore serve`: the store in the browser."""
from __future__ import annotations

import click

from histstore.cli.common import pass_store


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes the store without authentication "
                   "(a warning is printed).")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True, help="Port to listen on.")
@pass_store
def serve(store, host, port):
    """Browse the store in a web browser, read-only, while jobs run: cohorts, slides in deep
    zoom with attention and tile overlays, runs and their reports side by side, and SQL.

    Needs OpenSeadragon from npm (`bash scripts/setup.sh` in a checkout, else
    `npm install openseadragon@6.1.1` where you start it)."""
    from histstore.web.server import serve as run_server

    run_server(store, host=host, port=port, echo=click.echo, warn=lambda m: click.echo(m, err=True))
