"""Load shedding: beyond a fixed number of requests in flight, answer 503 + Retry-After at once.

Queueing without bound only turns overload into timeouts for everyone (and Cloud Run replaces
instances that keep failing); refusing early keeps the admitted requests fast and tells
clients when to come back. Every 503 leaving the service (the batcher's too) gets Retry-After.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import Overloaded, error_response
from common.http.auth import is_open
from common.http.deadline import request_deadline

RETRY_AFTER_S = 1


class LoadShedder:
    """Admit at most `max_in_flight` working requests; refuse the rest with 503."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope) or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            refusal = Overloaded(
                f"over capacity ({self.max_in_flight} requests in flight); retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
            await error_response(refusal)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            with request_deadline():  # work still queued past it is never started
                await self.app(scope, receive, _with_retry_after(send))
        finally:
            self.in_flight -= 1


def _with_retry_after(send: Send) -> Send:
    async def send_with_retry_after(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 503:
            headers = MutableHeaders(scope=message)
            headers.setdefault("retry-after", str(RETRY_AFTER_S))
        await send(message)

    return send_with_retry_after
