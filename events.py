"""Storage events for classify: `POST /events/storage`, where Eventarc delivers Cloud Storage's
`google.cloud.storage.object.v1.finalized` CloudEvent (binary or structured content mode, parsed
by the CNCF `cloudevents` SDK) and where a Pub/Sub push subscription of a Cloud Storage
notification (`OBJECT_FINALIZE`) delivers its envelope.

Delivery is at least once, so every answer says whether a retry can help: 2xx for what a retry
cannot change (classified, an error result written, skipped: another bucket or prefix, another
event type, a replay, an older generation, an object already gone), 503 + Retry-After when
storage or the service is busy, 400 for a malformed event. The route is a Starlette app mounted
on the service (`bentoml.asgi_app`), behind the same auth, load shedding and error shape.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.bucket_objects import BucketObjects, ObjectInfo, Version
from common.config import Settings
from common.errors import ObjectNotFound, ServiceError, error_response
from common.results import (
    ClassificationResult,
    Outcome,
    has_storable_result,
    is_permanent,
    new_result,
    result_key,
    result_version,
    store_result,
)
from common.schemas import ClassifyResponse

FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_FINALIZE = "OBJECT_FINALIZE"
MAX_EVENT_BYTES = 64 * 1024  # an object's metadata is ~1-2 KB
MOUNT_PATH = "/events"


class MalformedEvent(ServiceError):
    code = "malformed_event"


class StorageObjectData(BaseModel):
    """The part of Cloud Storage's object resource an event needs (the JSON API sends the
    numbers as strings; pydantic reads them as integers)."""

    model_config = ConfigDict(extra="ignore")

    bucket: str = Field(min_length=1)
    name: str = Field(min_length=1)
    generation: int = Field(ge=0)
    size: int | None = Field(None, ge=0)


class StorageEvent(BaseModel):
    """A finalized object, from either delivery; `kind` None for an event of another type."""

    id: str
    kind: Literal["finalized"] | None
    object: StorageObjectData | None


class EventAnswer(BaseModel):
    status: Literal["classified", "error_recorded", "skipped"]
    reason: str | None = Field(None, description="Why it was skipped.")
    result: str | None = Field(None, description="Where its result is.")


def parse_event(headers: dict[str, str], body: bytes) -> StorageEvent:
    """A CloudEvent (binary or structured mode) or a Pub/Sub push envelope, or MalformedEvent."""
    lowered = {key.lower(): value for key, value in headers.items()}
    if not any(key.startswith("ce-") for key in lowered) and _is_pubsub_envelope(body):
        return _from_pubsub(body)
    try:
        event = from_http_event(HTTPMessage(headers=lowered, body=body))
    except Exception as exc:  # the SDK's one boundary: whatever it raises on input is a 400
        raise MalformedEvent(f"not a CloudEvent: {exc}") from exc
    if event.get_type() != FINALIZED:
        return StorageEvent(id=str(event.get_id()), kind=None, object=None)
    data = event.get_data()
    if isinstance(data, bytes | str):
        data = _json(data)
    return StorageEvent(id=str(event.get_id()), kind="finalized", object=_object(data))


def _is_pubsub_envelope(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("message"), dict)


def _from_pubsub(body: bytes) -> StorageEvent:
    message = json.loads(body)["message"]
    attributes = message.get("attributes") or {}
    event_id = str(message.get("messageId") or message.get("message_id") or "")
    if attributes.get("eventType") != PUBSUB_FINALIZE:
        return StorageEvent(id=event_id, kind=None, object=None)
    try:
        data = _json(base64.b64decode(message.get("data") or "", validate=True))
    except (binascii.Error, ValueError) as exc:
        raise MalformedEvent(f"the Pub/Sub message's data is not base64 JSON: {exc}") from exc
    return StorageEvent(id=event_id, kind="finalized", object=_object(data))


def _json(data: bytes | str) -> object:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise MalformedEvent(f"the event's data is not JSON: {exc}") from exc


def _object(data: object) -> StorageObjectData:
    try:
        return StorageObjectData.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "data"
        raise MalformedEvent(
            f"the event's object data is invalid: {where}: {problem['msg']}"
        ) from exc


async def _storage_event(request: Request) -> Response:
    import bentoml

    try:
        body = await _body(request)
        event = parse_event(dict(request.headers), body)
        answer = await bentoml.get_current_service().on_storage_event(event)
    except ServiceError as exc:
        return error_response(exc)
    return JSONResponse(answer.model_dump(exclude_none=True))


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVENT_BYTES:
            raise MalformedEvent(f"an event body is at most {MAX_EVENT_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


app = Starlette(routes=[Route("/storage", _storage_event, methods=["POST"])])


class EventClassifier:
    """What classify does with a storage event: decide, read that generation, decode, classify
    through the service's own model path, and store the result (compare-and-swap)."""

    def __init__(
        self,
        objects: BucketObjects | None,
        bucket: str | None,
        settings: Settings,
        in_pool: Callable[..., Awaitable[Any]],
        decode: Callable[[bytes], np.ndarray],
        classify: Callable[[np.ndarray], Awaitable[ClassifyResponse]],
    ) -> None:
        self.objects, self.bucket, self.settings = objects, bucket, settings
        self.in_pool, self.decode, self.classify = in_pool, decode, classify
        self.excluded = (settings.results_prefix, settings.storage_prefix)
        watch = settings.watch_prefix
        self.watched = "" if watch == "/" else watch

    async def handle(self, event: StorageEvent) -> EventAnswer:
        if event.kind is None or event.object is None:
            return EventAnswer(status="skipped", reason="not an object-finalized event")
        found = event.object
        if self.objects is None or found.bucket != self.bucket:
            return EventAnswer(status="skipped", reason="another bucket")
        if not found.name.startswith(self.watched) or found.name.startswith(self.excluded):
            return EventAnswer(status="skipped", reason="outside the watched prefix")
        if not has_storable_result(self.settings.results_prefix, found.name):
            return EventAnswer(status="skipped", reason="unsupported object name")
        key = result_key(self.settings.results_prefix, found.name)
        info = ObjectInfo(found.name, Version(found.generation, found.size or 0))
        if await self._up_to_date(key, info.version):
            return EventAnswer(status="skipped", reason="up to date", result=key)
        try:
            data, version = await self.in_pool(
                self.objects.read, found.name, info.version, self.settings.max_upload_bytes
            )
            answer = await self.classify(await self.in_pool(self.decode, data))
        except ObjectNotFound:  # deleted, or replaced by a newer generation with its own event
            return EventAnswer(status="skipped", reason="object gone")
        except ServiceError as exc:
            if not is_permanent(exc):
                raise  # 503 + Retry-After: Eventarc delivers it again later
            result = new_result(
                self._uri(found), info, True, self.settings.resize_mode, "event", error=exc
            )
            return await self._store(key, result, "error_recorded")
        result = new_result(
            self._uri(found),
            ObjectInfo(found.name, version),
            True,
            self.settings.resize_mode,
            "event",
            answer=answer,
        )
        return await self._store(key, result, "classified")

    async def _up_to_date(self, key: str, version: Version) -> bool:
        existing = await self.in_pool(self.objects.head, key)
        if existing is None:
            return False
        stored = await self.in_pool(result_version, self.objects, existing)
        return stored is not None and stored >= version

    async def _store(
        self,
        key: str,
        result: ClassificationResult,
        status: Literal["classified", "error_recorded"],
    ) -> EventAnswer:
        outcome = await self.in_pool(store_result, self.objects, key, result)
        if outcome is Outcome.up_to_date:
            return EventAnswer(status="skipped", reason="up to date", result=key)
        return EventAnswer(status=status, result=key)

    def _uri(self, found: StorageObjectData) -> str:
        return f"gs://{found.bucket}/{found.name}"
