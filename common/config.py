"""Settings read from the environment, once, with the embedded defaults a laptop needs."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field

from common.decode_budget import DecodeBudget
from common.schemas import ResizeMode

MIB = 1024 * 1024


class Settings(BaseModel):
    """Every knob of both services; see the README's table of environment variables."""

    bucket: str | None = Field(None, description="GCS bucket; unset means local folder storage.")
    storage_dir: Path = Field(Path("data"), description="Local storage folder when no bucket.")
    storage_prefix: str = Field("preprocessed/", description="Key prefix for stored images.")
    max_upload_bytes: int = Field(20 * MIB, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    resize_mode: ResizeMode = ResizeMode.resize
    decode_pixel_budget: int | None = Field(
        None, gt=0, description="Decoded pixels in memory at once; default MAX_IMAGE_PIXELS."
    )
    decode_wait_s: float = Field(5.0, ge=0, description="Wait for the decode budget, then 503.")
    storage_timeout_s: float = Field(10.0, gt=0)
    auth_token: str | None = Field(None, description="Bearer token required on working routes.")
    max_in_flight: int = Field(64, gt=0, description="Requests in flight before 503s.")
    auth_audience: str | None = Field(None, description="Accept Google ID tokens for this URL.")
    auth_certs_url: str = Field("https://www.googleapis.com/oauth2/v1/certs")
    auth_allowed_emails: set[str] = Field(default_factory=set)
    access_log: bool = Field(False, description="BentoML's access log line per request.")
    request_tracing: bool = Field(False, description="BentoML's OpenTelemetry request spans.")

    def decode_budget(self) -> DecodeBudget:
        """The process's decode budget: by default one image of the largest accepted size."""
        return DecodeBudget(
            self.decode_pixel_budget or self.max_image_pixels, wait_s=self.decode_wait_s
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {
            "bucket": env.get("BUCKET") or None,
            "storage_dir": env.get("STORAGE_DIR"),
            "storage_prefix": env.get("STORAGE_PREFIX"),
            "max_upload_bytes": env.get("MAX_UPLOAD_BYTES"),
            "max_image_pixels": env.get("MAX_IMAGE_PIXELS"),
            "resize_mode": env.get("RESIZE_MODE"),
            "decode_pixel_budget": env.get("DECODE_PIXEL_BUDGET") or None,
            "decode_wait_s": env.get("DECODE_WAIT_S"),
            "storage_timeout_s": env.get("STORAGE_TIMEOUT_S"),
            "auth_token": env.get("AUTH_TOKEN") or None,
            "max_in_flight": env.get("MAX_IN_FLIGHT"),
            "auth_audience": env.get("AUTH_AUDIENCE") or None,
            "auth_certs_url": env.get("AUTH_CERTS_URL"),
            "auth_allowed_emails": _split(env.get("AUTH_ALLOWED_EMAILS")),
            "access_log": env.get("ACCESS_LOG") or None,
            "request_tracing": env.get("REQUEST_TRACING") or None,
        }
        return cls.model_validate({k: v for k, v in values.items() if v is not None})


def _split(value: str | None) -> set[str] | None:
    return {item.strip() for item in value.split(",") if item.strip()} if value else None


def observability_config(settings: Settings) -> dict[str, object]:
    """BentoML service config for the per-request access log and OpenTelemetry middleware.

    Both are off unless asked for: Cloud Run already logs every request (status, latency,
    size), and BentoML's tracing middleware runs on every request even when no span is sampled
    (its default). Together they cost ~0.6 CPU-ms per request, a quarter of classify's
    per-request overhead on 2 cores (benchmarks/analysis.md).
    """
    return {
        "logging": {"access": {"enabled": settings.access_log}},
        # ".*" matches every URL, so the middleware passes requests straight through
        "tracing": {"excluded_urls": None if settings.request_tracing else ".*"},
    }


@cache
def settings() -> Settings:
    """The process-wide settings (read once: the environment does not change under a server)."""
    return Settings.from_env()
