"""Storage events for classify: `POST /events/storage`, where Eventarc delivers Cloud Storage's
`google.cloud.storage.object.v1.finalized` CloudEvent (binary or structured content mode, parsed
by the CNCF `cloudevents` SDK) and where a Pub/Sub push subscription of a Cloud Storage
notification (`OBJECT_FINALIZE`, payload format JSON or none) delivers its envelope.

Delivery is at least once, so every answer says whether a retry can help: 2xx for what a retry
cannot change (classified, an error result written, skipped: another bucket or prefix, another
event type, a replay, an older generation, an object already gone), 503 + Retry-After when
storage or the service is busy (or handling failed: never a 500), 400 for a malformed event,
whatever its body holds. The route is a Starlette app mounted
on the service (`bentoml.asgi_app`), behind the same auth, load shedding and error shape.
"""

from __future__ import annotations

import base64
import binascii
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http import HTTPStatus
from typing import Literal

import bentoml
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from classify.inference import Inference
from classify.model import Classifier
from classify.photos import Photos
from classify.results import (
    ClassificationResult,
    Outcome,
    has_storable_result,
    is_permanent,
    new_result,
    result_key,
    result_version,
    store_result,
)
from classify.settings import ClassifySettings
from common import tracing
from common.errors import ObjectNotFound, ServiceError, error_response
from common.stage_metrics import timed
from common.storage import ObjectInfo, Version
from common.threads import run_in

FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_FINALIZE = "OBJECT_FINALIZE"
MAX_EVENT_BYTES = 64 * 1024  # an object's metadata is ~1-2 KB
MOUNT_PATH = "/events"
STORAGE_THREADS = 8  # result lookups and writes waiting on storage at once
LOG = logging.getLogger(__name__)


class MalformedEvent(ServiceError):
    code = "malformed_event"


class EventFailed(ServiceError):
    """Handling failed in a way no input should cause: logged, and left to the redelivery."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "event_failed"


class StorageObjectData(BaseModel):
    """The part of Cloud Storage's object resource an event needs (the JSON API sends the
    numbers as strings; pydantic reads them as integers)."""

    model_config = ConfigDict(extra="ignore")

    bucket: str = Field(min_length=1)
    name: str = Field(min_length=1)
    generation: int = Field(ge=0)
    size: int | None = Field(None, ge=0)
    # the object's custom metadata: a `traceparent` there (set by whoever uploaded the photo)
    # continues that trace through the event; values of other types are ignored, never refused
    metadata: dict[str, object] | None = None

    def trace_carrier(self) -> dict[str, str]:
        value = (self.metadata or {}).get("traceparent")
        return {"traceparent": value} if isinstance(value, str) else {}


class StorageEvent(BaseModel):
    """A finalized object, from either delivery; `kind` None for an event of another type."""

    id: str
    kind: Literal["finalized"] | None
    object: StorageObjectData | None


class EventAnswer(BaseModel):
    status: Literal["classified", "error_recorded", "skipped"]
    reason: str | None = Field(None, description="Why it was skipped.")
    result: str | None = Field(None, description="Where its result is.")


class PubSubMessage(BaseModel):
    """A Pub/Sub push message. Cloud Storage's notification puts everything an event needs in
    the attributes; with `--payload-format=json` (JSON_API_V1) `data` is also the object
    resource, base64-encoded, and with `none` there is no data at all."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    attributes: dict[str, str] = Field(default_factory=dict)
    data: str | None = None
    message_id: str = Field("", alias="messageId")


class PubSubEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: PubSubMessage
    subscription: str | None = None


def parse_event(headers: dict[str, str], body: bytes) -> StorageEvent:
    """A CloudEvent (binary or structured mode) or a Pub/Sub push envelope, or MalformedEvent:
    whatever the body holds (any JSON type, any depth), nothing else is raised."""
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        if _is_cloudevent(lowered):
            return _from_cloudevent(lowered, body)
        return _from_pubsub(body)
    except MalformedEvent:
        raise
    except Exception as exc:  # the parsers' one boundary: whatever input makes them raise
        raise MalformedEvent(f"not a storage event: {type(exc).__name__}") from exc


def _is_cloudevent(headers: dict[str, str]) -> bool:
    content_type = headers.get("content-type", "").lower()
    return any(key.startswith("ce-") for key in headers) or content_type.startswith(
        "application/cloudevents"
    )


def _from_cloudevent(headers: dict[str, str], body: bytes) -> StorageEvent:
    try:
        event = from_http_event(HTTPMessage(headers=headers, body=body))
    except Exception as exc:  # the SDK's one boundary: whatever it raises on input is a 400
        raise MalformedEvent(f"not a CloudEvent: {str(exc)[:200]}") from exc
    if event.get_type() != FINALIZED:
        return StorageEvent(id=str(event.get_id()), kind=None, object=None)
    data = event.get_data()
    if isinstance(data, bytes | str):
        return StorageEvent(id=str(event.get_id()), kind="finalized", object=_object_json(data))
    return StorageEvent(id=str(event.get_id()), kind="finalized", object=_object(data))


def _from_pubsub(body: bytes) -> StorageEvent:
    try:
        message = PubSubEnvelope.model_validate_json(body).message
    except ValidationError as exc:
        raise MalformedEvent(
            f"neither a CloudEvent nor a Pub/Sub push envelope: {_first_problem(exc)}"
        ) from exc
    attributes = message.attributes
    if attributes.get("eventType") != PUBSUB_FINALIZE:
        return StorageEvent(id=message.message_id, kind=None, object=None)
    if not message.data:  # `--payload-format=none`: the attributes say which object
        found = {
            "bucket": attributes.get("bucketId"),
            "name": attributes.get("objectId"),
            "generation": attributes.get("objectGeneration"),
        }
        return StorageEvent(id=message.message_id, kind="finalized", object=_object(found))
    try:
        data = base64.b64decode(message.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEvent(f"the Pub/Sub message's data is not base64: {exc}") from exc
    return StorageEvent(id=message.message_id, kind="finalized", object=_object_json(data))


def _object_json(data: bytes | str) -> StorageObjectData:
    """Parsed and validated in one step by pydantic's JSON parser (depth-limited)."""
    try:
        return StorageObjectData.model_validate_json(data)
    except ValidationError as exc:
        raise MalformedEvent(f"the event's object data is invalid: {_first_problem(exc)}") from exc


def _object(data: object) -> StorageObjectData:
    try:
        return StorageObjectData.model_validate(data)
    except ValidationError as exc:
        raise MalformedEvent(f"the event's object data is invalid: {_first_problem(exc)}") from exc


def _first_problem(exc: ValidationError) -> str:
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    return f"{where}: {problem['msg']}"


async def _storage_event(request: Request) -> Response:
    """The events path's one error boundary: a malformed event is a 400 (nothing to retry), an
    event handled a 200, and anything a retry can help (storage, load, a failure of ours) a
    503 + Retry-After; never a 500, which Eventarc would redeliver as the same failure."""
    try:
        event = parse_event(dict(request.headers), await _body(request))
        answer = await request.app.state.handler.handle(event)
    except ServiceError as exc:
        EVENTS.labels(outcome=_refused(exc.status)).inc()
        return error_response(exc)
    except Exception as exc:
        LOG.exception("storage event failed", extra={"code": EventFailed.code})
        EVENTS.labels(outcome="retried").inc()
        return error_response(
            EventFailed(f"the event could not be handled: {type(exc).__name__}", retry_after_s=30)
        )
    EVENTS.labels(outcome=answer.status).inc()
    return JSONResponse(answer.model_dump(exclude_none=True))


def _refused(status: int) -> str:
    """An event answered with an error: delivered again (5xx), or never (malformed, 4xx)."""
    return "retried" if status >= 500 else "malformed" if status == 400 else "refused"


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVENT_BYTES:
            raise MalformedEvent(f"an event body is at most {MAX_EVENT_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# What operators chart and alert on (deploy/monitoring/): events by what became of them.
EVENTS = bentoml.metrics.Counter(
    name="classify_events",
    documentation="Storage events by outcome: classified, error_recorded (the photo's fault, "
    "recorded), skipped, retried (answered 503: delivered again), malformed, refused",
    labelnames=["outcome"],
)

# The service gives the app its handler when it starts (`app.state.handler`).
app = Starlette(routes=[Route("/storage", _storage_event, methods=["POST"])])


class EventClassifier:
    """What classify does with a storage event: decide, read that generation, decode, classify
    through the service's inference path, and store the result (compare-and-swap). Result
    lookups and writes run on `threads`."""

    def __init__(
        self,
        photos: Photos,
        classifier: Classifier,
        infer: Inference,
        settings: ClassifySettings,
        threads: ThreadPoolExecutor,
    ) -> None:
        self.photos, self.classifier, self.infer = photos, classifier, infer
        self.settings, self.threads = settings, threads
        self.objects = photos.storage if settings.bucket else None
        self.bucket = settings.bucket
        self.excluded = (settings.results_prefix, settings.storage_prefix)
        watch = settings.watch_prefix
        self.watched = "" if watch == "/" else watch

    async def handle(self, event: StorageEvent) -> EventAnswer:
        """The event's answer, in a span of the photo's own trace when the object carries one."""
        if event.object is None:
            return await self._handle(event)
        found = event.object
        where = {"gcs.bucket": found.bucket, "gcs.object": found.name}
        with tracing.continued_from(found.trace_carrier(), "storage event", where) as span:
            answer = await self._handle(event)
            if span is not None:
                span.set_attribute("event.status", answer.status)
            return answer

    async def _handle(self, event: StorageEvent) -> EventAnswer:
        if event.kind is None or event.object is None:
            return EventAnswer(status="skipped", reason="not an object-finalized event")
        found = event.object
        if self.objects is None or found.bucket != self.bucket:
            return EventAnswer(status="skipped", reason="another bucket")
        if not found.name.startswith(self.watched) or found.name.startswith(self.excluded):
            return EventAnswer(status="skipped", reason="outside the watched prefix")
        if not has_storable_result(self.objects, self.settings.results_prefix, found.name):
            return EventAnswer(status="skipped", reason="unsupported object name")
        key = result_key(self.settings.results_prefix, found.name)
        info = ObjectInfo(found.name, Version(found.generation, found.size or 0))
        if await self._up_to_date(key, info.version):
            return EventAnswer(status="skipped", reason="up to date", result=key)
        try:
            # the event's generation exactly (GCS): the result records that version
            read = partial(self._read, found.name, info.version)
            answer = self.classifier.rank(await self.infer(read, self.photos.decode), 5)
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
            info,
            True,
            self.settings.resize_mode,
            "event",
            answer=answer,
        )
        return await self._store(key, result, "classified")

    def _write(self, key: str, result: ClassificationResult) -> Outcome:
        with timed("write"):
            return store_result(self.objects, key, result)

    def _read(self, key: str, version: Version) -> bytes:
        return self.photos.read(key, version)[0]

    async def _up_to_date(self, key: str, version: Version) -> bool:
        existing = await run_in(self.threads, self.objects.head, key)
        if existing is None:
            return False
        stored = await run_in(self.threads, result_version, self.objects, existing)
        return stored is not None and stored.covers(version)

    async def _store(
        self,
        key: str,
        result: ClassificationResult,
        status: Literal["classified", "error_recorded"],
    ) -> EventAnswer:
        outcome = await run_in(self.threads, self._write, key, result)
        if outcome is Outcome.up_to_date:
            return EventAnswer(status="skipped", reason="up to date", result=key)
        return EventAnswer(status=status, result=key)

    def _uri(self, found: StorageObjectData) -> str:
        return f"gs://{found.bucket}/{found.name}"
