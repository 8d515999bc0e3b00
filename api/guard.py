"""What happens before a request reaches a route: the bearer token checked before the body is read, and the body
read only up to its cap (a pure ASGI middleware: nothing is parsed before both pass)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from api.body import NOT_JSON

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class RequestGuard:
    def __init__(
        self, app: ASGIApp, *, tokens: tuple[str, ...], max_body: int, protected: tuple[str, ...] = ("/v1",)
    ) -> None:
        self.app, self.tokens, self.max_body, self.prefixes = app, tokens, max_body, protected

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if sum(k.lower() == b"authorization" for k, _ in scope["headers"]) > 1:  # which one counts is ambiguous
            return await _answer(send, 400, "bad_request", "more than one Authorization header")
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"").lower():
            return await _answer(send, 400, "bad_request", "a NUL byte in the path or query")
        scope.setdefault("state", {})["authorized"] = self._authorized(headers)  # /readyz shows detail only then
        if scope["path"].startswith(self.prefixes) and not scope["state"]["authorized"]:
            return await _answer(send, 401, "unauthorized", "a bearer token is required: Authorization: Bearer <token>",
                                 {"www-authenticate": "Bearer"})  # fmt: skip
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _answer(send, 413, "too_large", f"request bodies are limited to {self.max_body:,} bytes")
        body, more = bytearray(), True
        while more:  # read it all here, up to the cap, whatever the sender claimed
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _answer(send, 413, "too_large", f"request bodies are limited to {self.max_body:,} bytes")
        if body:  # parsed once, here, off the event loop; validated by the route's dependency (api/body.py)
            refused, scope["state"]["json"] = await anyio.to_thread.run_sync(_parsed, bytes(body))
            if refused:
                return await _answer(send, *refused)
        scope["state"]["body"] = bytes(body)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        """No tokens set: everyone. Else a bearer token equal to one of them (compared in constant time, each)."""
        if not self.tokens:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        matches = [secrets.compare_digest(token.strip().encode(), t.encode()) for t in self.tokens]
        return scheme.lower() == "bearer" and any(matches)


MAX_JSON_VALUES = 10_000  # a sweep request has about a hundred; each value costs validation and error reporting


def _parsed(body: bytes) -> tuple[tuple[int, str, str] | None, Any]:
    """The body's JSON (NOT_JSON where it is not JSON: the route names that), and (status, kind, why) where it is
    refused by its shape, else None. Run off the event loop: a 1-MB body takes milliseconds."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None, NOT_JSON
    return _refused_shape(parsed), parsed


def _refused_shape(parsed: Any) -> tuple[int, str, str] | None:
    """More values than any request has (413), or a NUL character in a string (400: no path, name or database
    takes one)."""
    stack = [parsed]
    seen = 0
    while stack:
        value = stack.pop()
        if isinstance(value, str) and "\x00" in value:
            return 400, "bad_request", "a NUL character in a string of the body"
        if isinstance(value, dict | list):
            seen += len(value)
            if seen > MAX_JSON_VALUES:
                return 413, "too_large", f"request bodies hold at most {MAX_JSON_VALUES:,} JSON values (keys and items)"
            stack.extend([*value, *value.values()] if isinstance(value, dict) else value)
    return None


async def _answer(send: Callable, code: int, kind: str, message: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": kind, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
