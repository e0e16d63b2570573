"""Running the application with uvicorn: in the foreground (``genmodels serve``) or in a
background thread (tests, ``benchmarks/serve_load.py``).

The socket is bound before uvicorn starts, so a port in use is a clear error and the startup
line ("listening on ...; loopback only") is printed only once the address is really held.
Stopping (Ctrl-C, SIGTERM, ``ServerThread.stop``) first shuts the worker down (the running
generation is interrupted, queued requests get 503) so that uvicorn's wait for open
connections is short, then closes the socket: nothing listens afterwards.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

import uvicorn

__all__ = ["ServerThread", "bind", "is_loopback", "serve_forever", "startup_line"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket bound to (host, port); OSError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    sock.set_inheritable(True)
    return sock


def startup_line(host: str, port: int, auth: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    line = f"genmodels serve: listening on http://{shown}:{port}/ "
    if is_loopback(host):
        return line + "(loopback only: other machines cannot connect; --host 0.0.0.0 to allow)"
    line += "(reachable from other machines"
    return line + (", HTTP basic auth required)" if auth else "; no --api-auth: anyone can use it)")


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, shutting the worker down first when a signal stops it."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        threading.Thread(target=self._app.server.worker.shutdown, daemon=True).start()
        super().handle_exit(sig, frame)


def _config(app: Any, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=10,
                          access_log=False)  # fmt: skip


def serve_forever(app: Any, host: str, port: int, log_level: str = "warning") -> None:
    """Bind, print the startup line, serve until Ctrl-C / SIGTERM."""
    sock = bind(host, port)
    server = _Uvicorn(_config(app, log_level), app)
    print(startup_line(host, sock.getsockname()[1], bool(app.server.config.auth)), flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class ServerThread:
    """The server in a background thread on a free loopback port (``port=0``)::

    with ServerThread(create_app(config)) as s:
        webuiapi.WebUIApi(host=s.host, port=s.port).txt2img(...)
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host = app, host
        self._sock = bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(_config(app, "warning"))
        self._thread = threading.Thread(target=self._run, name="genmodels-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._sock.close()
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.app.server.worker.shutdown()
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
