"""ASGI guard in front of `/preprocess`: size cap while streaming, strict multipart fields.

BentoML's multipart parsing fetches URLs given in place of files and fails with a 500 on
unexpected binary fields; this guard answers such requests with a clear 4xx before BentoML
sees them, and never holds more than the upload cap in memory.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import ServiceError, UploadTooLarge, error_response

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # part headers and boundaries around the file


class UnexpectedForm(ServiceError):
    code = "invalid_form"


class NotMultipart(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "expected_multipart"


class UploadGuard:
    """Check the request body of `POST path` before the wrapped app parses it."""

    def __init__(
        self, app: ASGIApp, *, path: str, max_upload_bytes: int, file_field: str, fields: set[str]
    ) -> None:
        self.app = app
        self.path = path
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.file_field = file_field
        self.fields = fields

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
            await self._check_form(scope, body)
        except ServiceError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, _replay(body), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        content_type = Request(scope).headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise NotMultipart(
                f"send the image as multipart/form-data in field {self.file_field!r}"
            )
        too_large = UploadTooLarge(
            f"the upload exceeds the limit of {self.max_upload_bytes:,} bytes"
        )
        declared = Request(scope).headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_large
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise UnexpectedForm("the client disconnected during the upload")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _check_form(self, scope: Scope, body: bytes) -> None:
        try:
            form = await Request(scope, _replay(body)).form()
        except Exception as exc:  # starlette raises several types for malformed multipart
            raise UnexpectedForm(f"the multipart body is malformed: {exc}") from exc
        try:
            unexpected = sorted(set(form.keys()) - self.fields)
            if unexpected:
                raise UnexpectedForm(
                    f"unexpected form field(s) {unexpected}; expected {sorted(self.fields)}"
                )
            files = form.getlist(self.file_field)
            if not files:
                raise UnexpectedForm(f"missing file field {self.file_field!r}")
            if len(files) > 1 or not isinstance(files[0], UploadFile):
                raise UnexpectedForm(
                    f"field {self.file_field!r} must be one file upload (URLs are not fetched)"
                )
            for name in self.fields - {self.file_field}:
                if any(isinstance(value, UploadFile) for value in form.getlist(name)):
                    raise UnexpectedForm(f"field {name!r} must be text, not a file")
        finally:
            await form.close()


def _replay(body: bytes) -> Receive:
    """A `receive` that hands the already-read body to the next app in one message."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
