"""Small ASGI guards that keep every error a JSON object of one shape.

- `JsonOnly`: JSON routes refuse other content types with 415 before BentoML parses the body
  (its multipart parser answers 500 to a `multipart/form-data` without a boundary).
- `ErrorShape`: BentoML's own 4xx bodies (`{"error", "detail": [...]}` for validation errors,
  `[{"error"}]` for its exceptions) become `{"error", "code"}` like the services' own errors,
  which also matches the 400 schema BentoML documents in OpenAPI.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import ServiceError, error_response
from common.schemas import ErrorResponse


class UnsupportedMediaType(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "expected_json"


class JsonOnly:
    def __init__(self, app: ASGIApp, paths: set[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            content_type = Headers(scope=scope).get("content-type", "application/json")
            if content_type.split(";")[0].strip().lower() != "application/json":
                refusal = UnsupportedMediaType("send the request body as application/json")
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ErrorShape:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body = bytearray()

        async def reshape_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = Headers(raw=message["headers"])
                status = message["status"]
                if 400 <= status < 500 and headers.get("content-type", "").startswith(
                    "application/json"
                ):
                    start = message  # hold it: the body may be rewritten
                    return
            elif start is not None and message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                new_body = _reshaped(bytes(body), start["status"])
                headers = [
                    (name, value)
                    for name, value in start["headers"]
                    if name.lower() != b"content-length"
                ]
                headers.append((b"content-length", str(len(new_body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": new_body})
                return
            await send(message)

        await self.app(scope, receive, reshape_send)


def _reshaped(body: bytes, status: int) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict):
        payload = payload[0]  # BentoML's exception body
    if not isinstance(payload, dict) or "error" not in payload:
        return body
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
    code = (
        "invalid_request"
        if status in (400, 422)
        else HTTPStatus(status).phrase.lower().replace(" ", "_")
    )
    return ErrorResponse(error=message, code=code).model_dump_json().encode()
