"""`/preprocess`'s multipart form, parsed once, in memory, with the size cap enforced as it streams.

`UploadGuard` (ASGI, in front of BentoML) is the only parser of the body
(`preprocess.form_parser`): it refuses what BentoML's own multipart handling gets wrong (it
fetches URLs given in place of files, answers 500 to unexpected binary fields, and spools every
upload to a temporary file, then copies it into another) with a clear 4xx, and hands the parsed
form to the API through the request's state, where `PreprocessForm.from_http_request` picks it
up.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import Field
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import ServiceError, UploadTooLarge, error_response
from common.http.guards import media_type, replay_body
from common.schemas import ResizeMode
from preprocess.form_parser import FormPart, MalformedForm, StreamingForm

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # part headers and boundaries around the file
MAX_PARTS = 8  # the form has two fields; a few repeats still get a precise answer
MAX_FIELD_BYTES = 64 * 1024  # a text field (`mode`)
FORM_STATE_KEY = "preprocess_form"
FILE_FIELD = "image"
FIELDS = frozenset({FILE_FIELD, "mode"})


class UnexpectedForm(ServiceError):
    code = "invalid_form"


class InvalidMode(ServiceError):
    code = "invalid_request"


class NotMultipart(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "expected_multipart"


class PreprocessForm(bentoml.IODescriptor):
    """The multipart form of `/preprocess`; `UploadGuard` parses it.

    `image` is declared as BentoML declares a file (a `Path` with its content types), so that
    the schema says `type: file` and BentoML's clients (`SyncHTTPClient`, `AsyncHTTPClient`,
    `bentoml.depends`) send multipart. The guard hands the API the file's bytes, which it
    received in memory: never a temporary file (`model_construct`, see `_checked`).
    """

    image: Annotated[
        Path,
        ContentType("image/*"),
        Field(description="The image file: JPEG, PNG, WebP, BMP, GIF, HEIC/HEIF or AVIF."),
    ]
    mode: Annotated[
        ResizeMode | None,
        Field(description="`resize` (whole image) or `center-crop`; default from config."),
    ] = None

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> PreprocessForm:
        try:
            return request.scope["state"][FORM_STATE_KEY]
        except KeyError:  # the guard is not installed: refuse rather than parse again
            raise UnexpectedForm("the upload was not parsed (UploadGuard missing)") from None


def form_value(text: str) -> object:
    """A text field as BentoML reads one: JSON if it parses (its clients send each value
    JSON-encoded: `"resize"`, `null`), else the text itself (`resize` from curl)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class UploadGuard:
    """Parse and check the body of `POST path` before the wrapped app runs."""

    def __init__(self, app: ASGIApp, *, path: str, max_upload_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        try:
            form = await self._parse(scope, receive)
        except ServiceError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[FORM_STATE_KEY] = form
        await self.app(scope, replay_body(b"", receive), send)  # the form holds the body

    async def _parse(self, scope: Scope, receive: Receive) -> PreprocessForm:
        headers = Headers(scope=scope)
        if media_type(headers) != "multipart/form-data":
            raise NotMultipart(f"send the image as multipart/form-data in field {FILE_FIELD!r}")
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        try:
            form = StreamingForm(
                headers["content-type"], max_parts=MAX_PARTS, max_field_bytes=MAX_FIELD_BYTES
            )
            async for chunk in self._body(receive):
                form.feed(chunk)
            parts = form.finish()
        except MalformedForm as exc:
            raise UnexpectedForm(f"the multipart body is malformed: {exc}") from exc
        return self._checked(parts)

    async def _body(self, receive: Receive):
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise UnexpectedForm("the client disconnected during the upload")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                raise self._too_large()
            yield chunk
            if not message.get("more_body", False):
                return

    def _too_large(self) -> UploadTooLarge:
        return UploadTooLarge(f"the upload exceeds the limit of {self.max_upload_bytes:,} bytes")

    def _checked(self, parts: list[FormPart]) -> PreprocessForm:
        unexpected = sorted({part.name for part in parts} - FIELDS)
        if unexpected:
            raise UnexpectedForm(
                f"unexpected form field(s) {unexpected}; expected {sorted(FIELDS)}"
            )
        files = [part for part in parts if part.name == FILE_FIELD]
        if not files:
            raise UnexpectedForm(f"missing file field {FILE_FIELD!r}")
        if len(files) > 1 or not files[0].is_file:
            raise UnexpectedForm(
                f"field {FILE_FIELD!r} must be one file upload (URLs are not fetched)"
            )
        modes = [part for part in parts if part.name == "mode"]
        if len(modes) > 1 or any(part.is_file for part in modes):
            raise UnexpectedForm("field 'mode' must be one text value, not a file")
        value = form_value(modes[0].text()) if modes else None
        try:
            mode = None if value is None else ResizeMode(value)
        except ValueError:
            raise InvalidMode(
                f"mode must be one of {[m.value for m in ResizeMode]}, not {modes[0].text()!r}"
            ) from None
        # the only copy of the upload the service holds: the received chunks go with `parts`
        return PreprocessForm.model_construct(image=files[0].content(), mode=mode)
