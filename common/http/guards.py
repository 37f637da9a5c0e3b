"""Small ASGI guards that keep every error a JSON object of one shape.

- `JsonOnly`: JSON routes refuse other content types with 415 before BentoML parses the body
  (its multipart parser answers 500 to a `multipart/form-data` without a boundary), and bodies
  over their route's cap with 413 while they stream in.
- `ErrorShape`: every error response becomes `{"error", "code"}` like the services' own:
  BentoML's bodies (`{"error", "detail": [...]}` for validation errors, `[{"error"}]` for its
  exceptions), the router's plain-text 404 and 405, and a JSON 500 (the request logged) for an
  exception nothing else caught, instead of a dropped connection or a text body.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import ServiceError, error_response
from common.schemas import ErrorResponse

LOG = logging.getLogger(__name__)


def media_type(headers: Headers) -> str:
    """The request's media type, lower-cased, parameters dropped (RFC 9110: case-insensitive)."""
    value, _ = parse_options_header(headers.get("content-type", ""))
    return value.decode("latin-1").strip().lower()


class BodyTooLarge(ServiceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "body_too_large"


class UnsupportedMediaType(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "expected_json"


class JsonOnly:
    """JSON routes: the media type checked, and the body read here against its route's cap
    before BentoML sees it (BentoML reads a JSON body whole, however large)."""

    def __init__(self, app: ASGIApp, limits: dict[str, int]) -> None:
        self.app = app
        self.limits = limits  # path -> most body bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        if limit is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if "content-type" in headers and media_type(headers) != "application/json":
            refusal = UnsupportedMediaType("send the request body as application/json")
            await error_response(refusal)(scope, receive, send)
            return
        try:
            body = await _read_body(headers, receive, limit)
        except ServiceError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if body is None:
            return  # the client left before sending its body
        await self.app(scope, replay_body(body, receive), send)


async def _read_body(headers: Headers, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or BodyTooLarge as soon as it (or its declared length) passes `limit`."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body is over {limit:,} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is over {limit:,} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """The app's `receive` once a guard has read the body: the body in one message, then the
    client's own messages (a disconnect, when it comes), as ASGI has it."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ErrorShape:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        started = False
        body = bytearray()

        async def reshape_send(message: Message) -> None:
            nonlocal start, started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    start = message  # hold it: the body may be rewritten
                    return
            elif start is not None and message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                await _send_reshaped(send, start, bytes(body))
                return
            await send(message)

        try:
            await self.app(scope, receive, reshape_send)
        except Exception:
            where = (scope.get("method"), scope.get("path"))
            LOG.exception("unhandled error in %s %s", *where, extra={"code": "internal"})
            if started:
                raise  # the answer is under way: the server closes the connection
            failure = ErrorResponse(error="internal error; it has been logged", code="internal")
            await send_error(send, HTTPStatus.INTERNAL_SERVER_ERROR, failure)


async def send_error(send: Send, status: int, error: ErrorResponse) -> None:
    body = error.model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_reshaped(send: Send, start: Message, body: bytes) -> None:
    headers = Headers(raw=start["headers"])
    if headers.get("content-type", "").startswith("application/json"):
        new_body = _reshaped(body, start["status"])
    else:  # the router's "Method Not Allowed", uvicorn's "Internal Server Error" ...
        text = body.decode("utf-8", "replace").strip()[:500]
        new_body = _error_body(text or _phrase(start["status"]), start["status"])
    kept = [
        (name, value)
        for name, value in start["headers"]
        if name.lower() not in (b"content-length", b"content-type")
    ]
    kept += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(new_body)).encode()),
    ]
    await send({**start, "headers": kept})
    await send({"type": "http.response.body", "body": new_body})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _code(status: int) -> str:
    if status in (400, 422):
        return "invalid_request"
    return _phrase(status).lower().replace(" ", "_").replace("-", "_")


def _error_body(message: str, status: int) -> bytes:
    return ErrorResponse(error=message, code=_code(status)).model_dump_json().encode()


def _reshaped(body: bytes, status: int) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return _error_body(_phrase(status), status)
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict):
        payload = payload[0]  # BentoML's exception body
    if not isinstance(payload, dict) or "error" not in payload:
        detail = payload.get("detail") if isinstance(payload, dict) else None
        return _error_body(str(detail or _phrase(status)), status)
    if "code" in payload and "detail" not in payload:
        return body  # already ours
    message = str(payload["error"])
    if isinstance(payload.get("detail"), list):
        problems = [
            f"{'.'.join(str(part) for part in item.get('loc', ())) or 'body'}: {item.get('msg')}"
            for item in payload["detail"]
            if isinstance(item, dict)
        ]
        message = "invalid request: " + "; ".join(problems)
    return _error_body(message, status)
