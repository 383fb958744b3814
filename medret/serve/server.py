"""Run the app under uvicorn: own socket (so ``--port 0`` knows its port), address file, graceful SIGTERM."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import uvicorn

from medret.atomic import atomic_write_text
from medret.config import RetrieverConfig
from medret.errors import ConfigError
from medret.serve.app import ServeSettings, create_app

log = logging.getLogger(__name__)


def bind_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free port chosen by the OS)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port={port!r} is invalid: a number from 0 to 65535 (0 picks a free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"host={host!r} is invalid: {e}; use 127.0.0.1 (this machine only) or 0.0.0.0") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        with _suppress():
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --port, or --port 0 for a "
                          f"free one") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def advertised_address(sock: socket.socket, host: str) -> str:
    """host:port clients should use: the bound host, or this machine's name when bound to every interface."""
    port = sock.getsockname()[1]
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


def run_server(config: RetrieverConfig, settings: ServeSettings, host: str = "127.0.0.1", port: int = 0,
               address_file: str | os.PathLike[str] | None = None, log_level: str = "info",
               on_address: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT. Returns the exit code (0 after a clean stop, 1 if the engine failed to load).

    The address file gets ``host:port`` (atomically) only once the engine is loaded and uvicorn accepts
    connections; it is removed on shutdown.
    """
    sock = bind_socket(host, port)
    address = advertised_address(sock, host)
    if on_address is not None:
        on_address(address)
    addr_path = Path(address_file).expanduser().resolve() if address_file else None
    app = create_app(config, settings)
    service = app.state.service
    uconfig = uvicorn.Config(app, log_config=None, log_level=log_level.lower(), access_log=False,
                             lifespan="on", timeout_graceful_shutdown=30, server_header=False)
    server = _Server(uconfig, addr_path, address)
    failed = threading.Event()

    def when_loaded() -> None:  # on the engine's owner thread
        if service.batcher.status != "ready":
            failed.set()
            log.error("medret serve: the engine did not load, stopping: %s", service.batcher.error)
            server.should_exit = True
            return
        threading.Thread(target=_announce, args=(server, addr_path, address), daemon=True,
                         name="medret-announce").start()

    service.batcher.add_ready_callback(when_loaded)
    log.info("medret serve: listening on http://%s (loading %s / %s ...)", address, config.corpus_name,
             config.retriever_name)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it caught once it has stopped; with SIGTERM's default action that would
        # kill the process before the address file is removed and the engine closed. Make that re-raise a no-op.
        previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        server.remove_address_file()
        with _suppress():
            sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 1 if failed.is_set() else 0


def _announce(server: _Server, addr_path: Path | None, address: str) -> None:
    while not server.started and not server.should_exit:
        threading.Event().wait(0.01)
    if server.should_exit:
        return
    if addr_path is not None:
        atomic_write_text(addr_path, address + "\n")
        server.wrote_address = True
        log.info("medret serve: ready at http://%s (address written to %s)", address, addr_path)
    else:
        log.info("medret serve: ready at http://%s", address)


class _Server(uvicorn.Server):
    """uvicorn.Server that removes the address file as soon as a stop is requested."""

    def __init__(self, config: uvicorn.Config, addr_path: Path | None, address: str):
        super().__init__(config)
        self.addr_path = addr_path
        self.address = address
        self.wrote_address = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.remove_address_file()
        super().handle_exit(sig, frame)

    def remove_address_file(self) -> None:
        if self.addr_path is None or not self.wrote_address:
            return
        self.wrote_address = False
        try:
            if self.addr_path.read_text().strip() == self.address:  # never remove another server's file
                self.addr_path.unlink()
        except OSError:
            pass
