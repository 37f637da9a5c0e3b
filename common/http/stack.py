"""The HTTP middleware stack both services put in front of BentoML, in one place and order.

Outermost first: with tracing on, the request's span (OpenTelemetry's ASGI middleware,
continuing the caller's `traceparent`: common/tracing.py); the request's trace for its log
lines, and its access line (`common/http/request_log.py`); `/docs` redirect; the error shape
(every error leaves as `{"error", "code"}`, an uncaught exception as a JSON 500); auth (nothing
runs for a caller without a token); load shedding (which also sets each admitted request's
deadline); then the service's own body guard (JSON only for classify's routes, the upload
parser for preprocess).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp

from common import tracing
from common.config import Settings
from common.docs import DocsAlias
from common.http.auth import BearerAuth
from common.http.guards import ErrorShape
from common.http.request_log import RequestLog
from common.http.shedding import LoadShedder

UNTRACED = "/livez,/readyz,/healthz,/metrics"


def install(
    service: Any, settings: Settings, body_guard: type[ASGIApp], **guard_options: object
) -> None:
    """Add the shared stack to a `@bentoml.service` class, `body_guard` innermost."""
    if tracing.enabled():
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        # one span per request; none per message received or sent (an upload's chunks), none
        # for probes and scrapes (Cloud Run's every few seconds, the metrics sidecar's)
        service.add_asgi_middleware(
            OpenTelemetryMiddleware, exclude_spans=["receive", "send"], excluded_urls=UNTRACED
        )
    service.add_asgi_middleware(RequestLog, access_log=settings.access_log)
    service.add_asgi_middleware(DocsAlias)
    service.add_asgi_middleware(ErrorShape)
    service.add_asgi_middleware(BearerAuth, settings=settings)
    service.add_asgi_middleware(LoadShedder, max_in_flight=settings.max_in_flight)
    service.add_asgi_middleware(body_guard, **guard_options)
