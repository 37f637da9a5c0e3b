"""Which OpenTelemetry variables turn tracing on, and which values stop a service at start."""

from __future__ import annotations

import pytest

from common.tracing import TracingError, exporter_name


def test_tracing_is_off_unless_an_exporter_is_named():
    assert exporter_name({}) is None
    assert exporter_name({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert exporter_name({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) is None
    assert exporter_name({"OTEL_TRACES_EXPORTER": "OTLP"}) == "otlp"
    for refused in (
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
    ):
        with pytest.raises(TracingError, match="OTEL_"):
            exporter_name(refused)
