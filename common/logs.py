"""Log lines as Cloud Logging reads them: one JSON object per line on stdout (whenever stdout is
not a terminal, as on Cloud Run) with `severity`, `message`, the request's trace and span, the
error `code` where there is one and a traceback inside the same entry; plain readable lines on a
terminal (`scripts/serve`). The services call `configure_logging` when they are imported, after
BentoML set up its own handlers, so BentoML's lines take the same format.

The trace comes from the request's `traceparent` (W3C) or `X-Cloud-Trace-Context` (Cloud Run's
own) header, kept for the request by `common/http/request_log.py`, the outermost middleware.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

from opentelemetry import trace as otel_trace
from pythonjsonlogger.json import JsonFormatter

# The loggers BentoML, uvicorn and circus give handlers of their own (they do not propagate to
# the root logger): each gets ours instead.
OWN_HANDLERS = ("bentoml", "bentoml.access", "uvicorn.error", "circus")
# uvicorn's access line is text and says less than ours (common/http/request_log.py).
QUIET = ("uvicorn.access",)
TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
LABELS_FIELD = "logging.googleapis.com/labels"  # the entry's labels, indexed by Cloud Logging
# What every later line of this process names (label_process_logs): classify's model and runtime.
PROCESS_LABELS: dict[str, str] = {}
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=([01]))?$")


@dataclass(frozen=True)
class Trace:
    trace_id: str  # 32 hex digits
    span_id: str | None  # 16 hex digits
    sampled: bool

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> Trace | None:
        """The caller's trace, from `traceparent`, else `X-Cloud-Trace-Context`; None if
        neither is present and well formed (a malformed header is ignored, never an error)."""
        found = TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
        if found and found.group(1) != "0" * 32:
            trace_id, span_id, flags = found.groups()
            return cls(trace_id, span_id, bool(int(flags, 16) & 1))
        found = CLOUD_TRACE.match(headers.get("x-cloud-trace-context", "").strip())
        if found:
            trace_id, span, sampled = found.groups()
            span_id = f"{int(span):016x}" if span and int(span) < 2**64 else None
            return cls(trace_id.lower(), span_id, sampled == "1")
        return None


CURRENT_TRACE: ContextVar[Trace | None] = ContextVar("current_trace", default=None)


def label_process_logs(**labels: str) -> None:
    """Name `labels` on every later log line of this process (`labels.model="..."` in Cloud
    Logging's filters): which model served what stays traceable across a rollout."""
    PROCESS_LABELS.update(labels)


def current_trace() -> Trace | None:
    """The span a line is logged in when tracing is on (so a line names the span it belongs
    to), else the caller's trace from the request's headers."""
    span = otel_trace.get_current_span().get_span_context()
    if span.is_valid:
        return Trace(f"{span.trace_id:032x}", f"{span.span_id:016x}", span.trace_flags.sampled)
    return CURRENT_TRACE.get()


class CloudLoggingFormatter(JsonFormatter):
    """python-json-logger's formatter with Cloud Logging's field names and the request's trace."""

    def __init__(self, project: str | None) -> None:
        super().__init__(
            "%(levelname)s %(message)s %(name)s",
            rename_fields={"levelname": "severity", "name": "logger", "exc_info": "stack_trace"},
        )
        self.project = project

    def add_fields(self, log: dict[str, Any], record: logging.LogRecord, message: dict) -> None:
        super().add_fields(log, record, message)
        if PROCESS_LABELS:
            log[LABELS_FIELD] = {**PROCESS_LABELS, **log.get(LABELS_FIELD, {})}
        trace = current_trace()
        if trace is not None:
            where = f"projects/{self.project}/traces/" if self.project else ""
            log[TRACE_FIELD] = f"{where}{trace.trace_id}"
            if trace.span_id:
                log[SPAN_FIELD] = trace.span_id
            log[SAMPLED_FIELD] = trace.sampled


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Every log line of this process, BentoML's too, in one format on `stream` (stdout):
    JSON for Cloud Logging unless it is a terminal."""
    stream = stream or sys.stdout
    handler = logging.StreamHandler(stream)
    if stream.isatty():
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(CloudLoggingFormatter(os.environ.get("GOOGLE_CLOUD_PROJECT")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in OWN_HANDLERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True  # to the root's one handler, once
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
