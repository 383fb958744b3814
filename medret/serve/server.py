"""Run the app under uvicorn: own socket (so ``--port 0`` knows its port), address file, graceful SIGTERM."""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import uvicorn

from medret.config import RetrieverConfig
from medret.errors import ConfigError, StorageError
from medret.serve.app import ServeSettings, create_app
from medret.storage.atomic import atomic_write_text
from medret.validate import check_whole

try:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _H11
except ImportError:  # pragma: no cover - every supported uvicorn has it
    _H11 = None  # type: ignore[assignment,misc]
H11Protocol: Any = _H11

log = logging.getLogger(__name__)


def bind_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free port chosen by the OS)."""
    check_whole.at_least(0).at_most(65535)("port", port, "0 picks a free port")
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


def head_timeout_protocol(header_timeout: float) -> Any:
    """uvicorn's h11 protocol, plus: a connection must send a whole request head within ``header_timeout``
    seconds of connecting (or of its previous answer), else it is closed. uvicorn alone keeps a connection that
    never finishes its headers open forever (its keep-alive timer stops at the first byte received). Falls back to
    plain ``"h11"`` (with a warning) if this uvicorn's protocol class lacks the hooks used here."""
    if H11Protocol is None:  # pragma: no cover - every supported uvicorn has it
        log.warning("uvicorn's h11 protocol not found: connections that never finish their headers are not timed out")
        return "h11"
    if not all(hasattr(H11Protocol, m) for m in ("connection_made", "data_received", "on_response_complete",
                                                   "connection_lost")):
        log.warning("this uvicorn's h11 protocol has other hooks: request heads are not timed out")
        return "h11"

    class HeadTimeoutH11(H11Protocol):
        _head_timer: Any = None
        _head_cycle: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._head_cycle:
                self._disarm_head_timer()  # a new request's head arrived whole

        def on_response_complete(self) -> None:
            super().on_response_complete()
            cycle = self.cycle
            if not self.transport.is_closing() and (cycle is None or cycle.response_complete):
                self._arm_head_timer()  # waiting for the next request's head

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.cycle is self._head_cycle and not self.transport.is_closing():
                log.info("closing a connection from %s that sent no whole request head within %gs",
                         self.client, header_timeout)
                self.transport.close()

    return HeadTimeoutH11


def uvicorn_config(app: Any, settings: ServeSettings, log_level: str = "info", **kwargs: Any) -> uvicorn.Config:
    """The uvicorn settings of ``medret serve`` (also used by the tests' in-thread servers)."""
    return uvicorn.Config(app, log_config=None, log_level=log_level.lower(), access_log=False, lifespan="on",
                          server_header=False, http=head_timeout_protocol(settings.header_timeout_s),
                          # seconds as a float (asyncio's call_later), whatever uvicorn's annotation says
                          timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
                          **kwargs)


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def run_server(config: RetrieverConfig, settings: ServeSettings, host: str = "127.0.0.1", port: int = 0,
               address_file: str | os.PathLike[str] | None = None, log_level: str = "info",
               on_address: Callable[[str], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT. Returns the exit code (0 after a clean stop, 1 if the engine failed to load).

    The address file gets ``host:port`` (atomically) only once the engine is loaded and uvicorn accepts
    connections; it is removed on shutdown.
    """
    addr_path = Path(address_file).expanduser().resolve() if address_file else None
    if addr_path is not None:  # before the index loads (minutes): a folder that cannot take the file fails now
        _write_address(addr_path, "probe " * 40 + "\n", probe=True)  # longer than any host:port
    sock = bind_socket(host, port)
    address = advertised_address(sock, host)
    if on_address is not None:
        on_address(address)
    app = create_app(config, settings)
    service = app.state.service
    if settings.token is None and not is_loopback(host):
        log.warning("medret serve: listening on %s without a token: anyone who can reach this port can search "
                    "(and load the server); set MEDRET_TOKEN or --token-file, or bind --host 127.0.0.1", address)
    uconfig = uvicorn_config(app, settings, log_level, timeout_graceful_shutdown=30)
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
    if server.announce_error is not None:  # stopped: a job waiting for the file must not wait for its timeout
        raise server.announce_error
    return 1 if failed.is_set() else 0


def _write_address(path: Path, text: str, probe: bool = False) -> None:
    """Write the address file (atomically; ``probe``: a temporary file in its folder, removed again), or
    StorageError naming the file, the system's reason and the fix."""
    target = path.with_name(f".{path.name}.probe-{os.getpid()}") if probe else path
    try:
        atomic_write_text(target, text)
        if probe:
            target.unlink()
    except OSError as e:
        raise StorageError(f"--address-file {str(path)!r} cannot be written ({e.strerror or e}): free space on that "
                           "file system, or give --address-file in a writable folder with room; the server "
                           + ("did not start" if probe else "stopped")) from None


def _announce(server: _Server, addr_path: Path | None, address: str) -> None:
    while not server.started and not server.should_exit:
        threading.Event().wait(0.01)
    if server.should_exit:
        return
    if addr_path is not None:
        try:
            _write_address(addr_path, address + "\n")
        except StorageError as e:
            log.error("medret serve: %s", e)
            server.announce_error = e
            server.should_exit = True
            return
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
        self.announce_error: StorageError | None = None

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
