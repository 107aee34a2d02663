"""Run the web app with uvicorn on one host and port."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from histstore.store import Store

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> list[str]:
    """Host headers to answer: loopback names, plus the bound name when it is not loopback
    (any name when bound to every interface, which has no single name)."""
    from histstore.web.app import LOOPBACK_HOSTS

    if host in ("0.0.0.0", "::", "[::]"):
        return ["*"]
    return list(dict.fromkeys([*LOOPBACK_HOSTS, host]))


def serve(store: Store, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          echo: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C. Raises MissingStep (one line) when OpenSeadragon is not installed."""
    import uvicorn

    from histstore.web.app import create_app

    app = create_app(store, allowed_hosts=allowed_hosts(host))
    if not is_loopback(host):
        warn(f"warning: serving on {host}, not only this machine: there is no authentication, so anyone "
             f"who can reach port {port} can read the whole catalog and its slides")
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    echo(f"histstore serve: http://{shown}:{port}/  (store {store.root}, read-only; Ctrl-C stops)")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning", access_log=False)


@contextmanager
def serve_in_thread(app, host: str = DEFAULT_HOST, start_timeout: float = 20.0) -> Iterator[str]:
    """Run an app with uvicorn on a free port of `host` in a background thread, for tests and
    benchmarks; yields its base URL and stops it on exit."""
    import socket
    import threading
    import time

    import uvicorn

    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; without it Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every response
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="histstore-serve")
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not start on {host}:{port}")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
