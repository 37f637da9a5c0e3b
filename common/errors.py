"""Domain errors that map to one HTTP status and a JSON body.

BentoML renders its own exceptions as a JSON *list*; services catch `ServiceError` and answer
`error_response(exc)` so every error a client sees has the same `{"error", "code"}` shape.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.responses import JSONResponse

from common import tracing
from common.schemas import ErrorResponse


class ServiceError(Exception):
    """A request the service refuses, with the status and a machine-readable code."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    code: str = "bad_request"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class EmptyUpload(ServiceError):
    code = "empty_upload"


class UploadTooLarge(ServiceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "upload_too_large"


class TooManyPixels(ServiceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_many_pixels"


class TooComplex(ServiceError):
    """The image would cost far more to decode than its pixels: refused before decoding."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_complex"


class NotAnImage(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "not_an_image"


class UnsupportedFormat(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_format"


class CorruptImage(ServiceError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "corrupt_image"


class InvalidPath(ServiceError):
    code = "invalid_path"


class ForbiddenLocation(ServiceError):
    status = HTTPStatus.FORBIDDEN
    code = "outside_storage"


class AccessDenied(ForbiddenLocation):
    """Storage refuses this service access (file modes, IAM): an operator can fix it, so the
    bucket paths retry it instead of recording an error."""

    code = "access_denied"


class ObjectNotFound(ServiceError):
    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class StorageUnavailable(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "storage_unavailable"


class Overloaded(ServiceError):
    """More work than the service takes on at once: come back after Retry-After."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "overloaded"


def error_response(exc: ServiceError) -> JSONResponse:
    """Render `exc` as the JSON error body every endpoint uses (its code on the request's span)."""
    tracing.mark_answer(exc, exc.status)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    body = ErrorResponse(error=exc.message, code=exc.code)
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=headers)
