"""ASGI middleware: a request-body size limit and HTTP basic authentication.

Both answer with a JSON error before the application reads anything: a body over the limit is
a 413 whether it announces its length (``Content-Length``) or streams past it (chunked). The
rest of an oversized body is read and dropped (up to ``DRAIN_LIMIT``) before the answer goes
out: a server that closes a socket with unread data makes the kernel send a reset, and the
client then sees "connection reset" instead of the 413 (what h11 and nginx users hit). A
missing or wrong ``Authorization`` header is a 401 with ``WWW-Authenticate: Basic`` (A1111's
``--api-auth``; the browser then asks for the credentials). Credentials are compared in
constant time. CORS preflight requests (``OPTIONS``, which browsers send without credentials)
pass to the application.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["DRAIN_LIMIT", "BasicAuth", "BodyLimit", "send_json"]

DRAIN_LIMIT = 256 * 2**20  # bytes of an oversized body read and dropped before the 413

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": data})


async def _drain(receive: Receive, received: int) -> None:
    """Read and drop the rest of a request body, at most up to ``DRAIN_LIMIT`` bytes in all."""
    while received <= DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimit:
    """413 for request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _error(self) -> dict:
        return {"error": "Payload Too Large",
                "detail": f"request body over the limit of {self.max_bytes} bytes "
                          "(genmodels serve --max-body-mb)"}  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            if length.isdigit() and int(length) <= DRAIN_LIMIT:
                await _drain(receive, 0)
            return await send_json(send, 413, self._error(), [(b"connection", b"close")])
        received, started, answered = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not answered:
                    if not started:  # answer 413 now; the application sees a disconnect
                        if message.get("more_body", False):
                            await _drain(receive, received)
                        await send_json(send, 413, self._error(), [(b"connection", b"close")])
                    answered = True
            return {"type": "http.disconnect"} if answered else message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the 413 went out: whatever the application answers is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


class BasicAuth:
    """401 unless the request carries one of ``credentials`` (HTTP basic)."""

    def __init__(self, app: ASGIApp, credentials: tuple[tuple[str, str], ...]) -> None:
        self.app, self.credentials = app, credentials

    def _allowed(self, header: bytes | None) -> bool:
        if not header or not header.lower().startswith(b"basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok = False
        for u, p in self.credentials:  # no early exit: constant time over the list
            same = secrets.compare_digest(user, u.encode()) & secrets.compare_digest(
                password, p.encode()
            )
            ok |= same
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.credentials or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)  # CORS preflights carry no credentials
        if self._allowed(dict(scope.get("headers") or []).get(b"authorization")):
            return await self.app(scope, receive, send)
        challenge = [(b"www-authenticate", b'Basic realm="genmodels", charset="UTF-8"')]
        await send_json(send, 401, {"error": "Unauthorized", "detail": "Not authenticated"},
                        challenge)  # fmt: skip
