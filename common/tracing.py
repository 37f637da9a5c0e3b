"""One trace per photo: OpenTelemetry spans for each request and its stages (read, decode, model,
write), exported over OTLP/HTTP when OpenTelemetry's own variables ask for it.

Off by default, and then free: no provider, no middleware, no span objects (the stage timers skip
them; benchmarks/decisions.md, D1 measured what an idle middleware costs). On with
`OTEL_TRACES_EXPORTER=otlp` (or `console`); the SDK and its exporter read the rest of the
standard variables themselves: `OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT` and `_HEADERS`,
`OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`.
Only OTLP over HTTP/protobuf is installed: another `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`
stops the service at start. Where those variables have no word, the project's setting
`TRACES_TO_GOOGLE` sends spans to Google Cloud's Telemetry API with the service's own
credentials (Cloud Run), as Google's samples do.

Context travels as W3C `traceparent`: from `image-pipeline` (which starts each photo's trace)
into preprocess and classify, and from a stored photo's `traceparent` metadata into the storage
event that classifies it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

TRACER = trace.get_tracer("image-services")
EXPORTERS = ("otlp", "console")
GOOGLE_TRACES_ENDPOINT = "https://telemetry.googleapis.com/v1/traces"
SUPPORTED_PROTOCOL = "http/protobuf"
_enabled = False


class TracingError(ValueError):
    """An `OTEL_*` value this installation cannot honour; names the variable."""


def exporter_name(env: Mapping[str, str] = os.environ) -> str | None:
    """The exporter asked for, or None (tracing off). Unlike the spec's default (`otlp`),
    nothing is exported unless asked: a service must not post spans to a collector that
    is not there."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if name in ("", "none"):
        return None
    if name not in EXPORTERS:
        raise TracingError(f"OTEL_TRACES_EXPORTER={name!r}: this installation exports {EXPORTERS}")
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(variable, "").strip().lower()
        if protocol and protocol != SUPPORTED_PROTOCOL:
            raise TracingError(f"{variable}={protocol!r}: only {SUPPORTED_PROTOCOL!r} is installed")
    return name


def enabled() -> bool:
    return _enabled


def configure_tracing(
    service_name: str, to_google: bool = False, env: Mapping[str, str] = os.environ
) -> bool:
    """Install the process's tracer provider when an exporter is asked for; True if it was."""
    global _enabled
    name = exporter_name(env)
    if name is None or _enabled:
        return _enabled
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, str] = {"service.name": env.get("OTEL_SERVICE_NAME") or service_name}
    if to_google and env.get("GOOGLE_CLOUD_PROJECT"):
        attributes["gcp.project_id"] = env["GOOGLE_CLOUD_PROJECT"]
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; the sampler comes from OTEL_TRACES_SAMPLER
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(_exporter(name, to_google, env)))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def _exporter(name: str, to_google: bool, env: Mapping[str, str]):  # -> SpanExporter
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if not to_google:
        return OTLPSpanExporter()
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    has_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    endpoint = None if has_endpoint else GOOGLE_TRACES_ENDPOINT
    return OTLPSpanExporter(endpoint=endpoint, session=AuthorizedSession(credentials))


def shutdown() -> None:
    """Export what is still queued before the process exits (a service stopped by Cloud Run's
    SIGTERM, the client at the end of its run)."""
    provider = trace.get_tracer_provider()
    if _enabled and hasattr(provider, "shutdown"):
        provider.shutdown()


@contextmanager
def stage_span(
    stage: str, attributes: Mapping[str, int | str] | None = None
) -> Iterator[trace.Span | None]:
    """A span for one stage of a photo, inside the photo's trace; none when tracing is off or
    the stage runs outside any photo's trace (a batch's model call serves several photos: each
    photo's own `model` span covers it, see classify/inference.py)."""
    if not _enabled or not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with _span(stage, attributes=dict(attributes or {})) as span:
        yield span


@contextmanager
def _span(name: str, **options: object) -> Iterator[trace.Span]:
    """The current span for the block; an exception leaving it marks it failed."""
    with TRACER.start_as_current_span(name, record_exception=False, **options) as span:
        try:
            yield span
        except BaseException as exc:
            mark_failed(span, exc)
            raise


def mark_failed(span: trace.Span, exc: BaseException, error_status: bool = True) -> None:
    """The error's code (a ServiceError's, else its type) on the span, and the span's status
    ERROR unless `error_status` is False (a request answered 4xx: the caller's error)."""
    code = getattr(exc, "code", None) or type(exc).__name__
    span.set_attribute("error.type", str(code))
    if error_status:
        span.set_status(Status(StatusCode.ERROR, str(code)))


def mark_current_failed(exc: BaseException) -> None:
    """An error handled inside the current span (a photo the client could not classify)."""
    if _enabled:
        mark_failed(trace.get_current_span(), exc)


def mark_answer(exc: BaseException, status: int) -> None:
    """An error answer's code on the request's span (ERROR for 5xx, as for any server span)."""
    if _enabled:
        mark_failed(trace.get_current_span(), exc, error_status=status >= 500)


@contextmanager
def photo_trace(name: str, attributes: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Start one photo's trace (the client) and yield the headers that carry it on.

    With an exporter, a real root span; without one, a sampled trace context of fresh IDs, so the
    services' spans still share one trace per photo when they export (the client's own span is
    then simply not recorded)."""
    headers: dict[str, str] = {}
    if _enabled:
        with _span(name, attributes=dict(attributes)):
            propagate.inject(headers)
            yield headers
        return
    ids = random.SystemRandom()
    parent = SpanContext(
        trace_id=ids.getrandbits(128) or 1,
        span_id=ids.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    propagate.inject(headers, context=trace.set_span_in_context(NonRecordingSpan(parent)))
    yield headers


@contextmanager
def continued_from(carrier: Mapping[str, str], name: str, attributes: Mapping[str, object]):
    """A span continuing the trace `carrier` holds (`traceparent`), linked to the current one
    (the delivery that brought it); without a valid carrier, a child of the current span."""
    if not _enabled:
        yield None
        return
    current = trace.get_current_span().get_span_context()
    extracted = propagate.extract(dict(carrier))
    has_parent = trace.get_current_span(extracted).get_span_context().is_valid
    parent = extracted if has_parent else context.get_current()
    links = [trace.Link(current)] if has_parent and current.is_valid else None
    with _span(name, context=parent, links=links, attributes=dict(attributes)) as span:
        yield span
