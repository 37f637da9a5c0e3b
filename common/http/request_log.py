"""Each request's trace for its log lines, and (`ACCESS_LOG`) one access line per request with
Cloud Logging's `httpRequest` and, for an error answer, its `code`. BentoML's own access line
is preformatted text, so it stays off and this one takes its place."""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.logs import CURRENT_TRACE, Trace

LOG = logging.getLogger("access")
MAX_ERROR_BODY = 4096  # error answers are `{"error", "code"}`: small
LOGGED_HEADERS = frozenset({b"traceparent", b"x-cloud-trace-context", b"user-agent"})


class RequestLog:
    """The outermost middleware: the request's trace for every line logged while it runs, and
    its access line when `access_log` is on."""

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # only the headers a log line uses (ASGI gives names in lower case), on every request
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in LOGGED_HEADERS
        }
        token = CURRENT_TRACE.set(Trace.from_headers(headers))
        answer: dict = {"status": 500, "body": b""}
        started = time.perf_counter()

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body" and answer["status"] >= 400:
                answer["body"] = (answer["body"] + message.get("body", b""))[:MAX_ERROR_BODY]
            await send(message)

        try:
            await self.app(scope, receive, watch if self.access_log else send)
        finally:
            if self.access_log:
                _access_line(scope, headers, answer, time.perf_counter() - started)
            CURRENT_TRACE.reset(token)


def _access_line(scope: Scope, headers: dict[str, str], answer: dict, seconds: float) -> None:
    status = answer["status"]
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    path = scope.get("path", "")
    http_request = {
        "requestMethod": scope.get("method"),
        "requestUrl": path,
        "status": status,
        "latency": f"{seconds:.6f}s",
        "userAgent": headers.get("user-agent"),
        "remoteIp": (scope.get("client") or (None,))[0],
        "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
    }
    extra: dict = {"httpRequest": http_request}
    code = _error_code(answer["body"]) if status >= 400 else None
    if code:
        extra["code"] = code
    LOG.log(level, "%s %s %s", scope.get("method"), path, status, extra=extra)


def _error_code(body: bytes) -> str | None:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None
