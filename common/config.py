"""Every setting of both services, in one `pydantic-settings` model read once from the environment.

Each field is an environment variable of the same name in capitals (`max_upload_bytes` is
`MAX_UPLOAD_BYTES`). docs/settings.md's table and the performance doc's tuning table are
generated from the fields' descriptions (`python -m common.config`), and a test keeps them equal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.decode_budget import DecodeBudget
from common.runtime_table import BATCHED_BY_DEFAULT, DEFAULT_RUNTIME, Runtime
from common.runtime_table import spec as runtime_spec
from common.schemas import ResizeMode

MIB = 1024 * 1024


class Switch(StrEnum):
    on = "on"
    off = "off"


def _setting(
    default: Any = ..., *, used_by: str = "both", tuning: bool = False, **kwargs: Any
) -> Any:
    """A field that also records which service reads it and whether it is a tuning knob."""
    return Field(default, json_schema_extra={"used_by": used_by, "tuning": tuning}, **kwargs)


class Settings(BaseSettings):
    """The configuration of both services (each reads the fields it uses): what both share
    first, then what classify alone reads (`used_by` says which, for the generated tables)."""

    model_config = SettingsConfigDict(case_sensitive=False, env_ignore_empty=True, extra="ignore")

    # storage
    bucket: str | None = _setting(
        None, description="GCS bucket; unset means local folder storage (`STORAGE_DIR`)"
    )
    storage_dir: Path = _setting(
        Path("data"), description="local storage folder, when `BUCKET` is unset"
    )
    storage_prefix: str = _setting(  # preprocess only
        "preprocessed/", used_by="preprocess", description="key prefix of stored images"
    )
    storage_timeout_s: float = _setting(
        10.0,
        gt=0,
        description="the most a storage read may take in all, retries included (also each "
        "storage call's network timeout)",
    )
    # limits
    max_upload_bytes: int = _setting(
        20 * MIB,
        gt=0,
        description="largest upload, checked while it streams (and largest object classify reads)",
    )
    max_image_pixels: int = _setting(
        40_000_000, gt=0, description="largest image in pixels, checked from its header"
    )
    decode_pixel_budget: int | None = _setting(
        None,
        gt=0,
        description="decoded pixels in memory at once across requests "
        "(default: `MAX_IMAGE_PIXELS`); see docs/deploy.md, Memory",
    )
    decode_wait_s: float = _setting(
        5.0, ge=0, description="how long a decode waits for the budget before 503 + Retry-After"
    )
    max_in_flight: int = _setting(
        64, gt=0, description="requests in flight before the service answers 503 + Retry-After"
    )
    resize_mode: ResizeMode = _setting(
        ResizeMode.resize, description="default preprocessing mode: `resize` or `center-crop`"
    )
    # auth and observability
    auth_token: str | None = _setting(
        None,
        pattern=r"^[A-Za-z0-9\-._~+/]+=*$",
        description="when set, working routes need `Authorization: Bearer <AUTH_TOKEN>` (an "
        "RFC 6750 token: letters, digits, `-._~+/`, e.g. `openssl rand -base64 32`)",
    )
    auth_audience: str | None = _setting(
        None, description="also accept Google ID tokens for this audience (the service URL)"
    )
    auth_certs_url: str = _setting(
        "https://www.googleapis.com/oauth2/v1/certs",
        description="where Google's ID-token signing certificates come from",
    )
    auth_allowed_emails: Annotated[frozenset[str], NoDecode] = _setting(
        frozenset(), description="comma-separated callers allowed with an ID token (default: any)"
    )
    access_log: bool = _setting(False, description="BentoML's access log line per request")
    request_tracing: bool = _setting(
        False, description="BentoML's OpenTelemetry middleware on every route"
    )
    # classify only: the model, its runtime and batching
    classify_model: str | None = _setting(
        None,
        used_by="classify",
        description="model tag in the BentoML store; unset: the import's model for the runtime "
        "(`mobilenet_v2_onnx:latest` for ONNX Runtime)",
    )
    classify_runtime: Runtime = _setting(
        Runtime(DEFAULT_RUNTIME),
        used_by="classify",
        description="`onnxruntime`, `tensorflow`, `openvino`, or the opt-in `openvino-int8` / "
        "`openvino-bf16`",
    )
    classify_batching: Switch | None = _setting(
        None,
        used_by="classify",
        description="`on`: concurrent requests share model calls (adaptive batching); `off`: one "
        "model call per request; unset: on where it pays for the runtime "
        "([measured](performance.md#batching-on-by-default))",
    )
    classify_max_batch_size: int = _setting(
        2, ge=2, used_by="classify", description="largest batch the adaptive batcher forms"
    )
    classify_max_latency_ms: int = _setting(
        10_000,
        gt=0,
        used_by="classify",
        description="the batcher's latency budget: requests predicted to wait longer get 503",
    )
    results_prefix: str = _setting(
        "results/",
        pattern=r"^[^/].*/$",
        used_by="classify",
        description="where storage events and `classify-bucket` write one JSON result per "
        "photo (docs/buckets.md); never read as photos",
    )
    watch_prefix: str = _setting(
        "uploads/",
        used_by="classify",
        description="storage events classify only objects under this prefix (`/`: the whole "
        "bucket; never the results or preprocess prefixes)",
    )
    # classify only, tuning (docs/performance.md): derived from the runtime and the cores
    # unless set
    classify_batch_streams: int | None = _setting(
        None,
        ge=1,
        le=8,
        used_by="classify",
        tuning=True,
        description="batches that may run at once (default: 2, or 1 on one core)",
    )
    classify_model_threads: int | None = _setting(
        None,
        ge=1,
        used_by="classify",
        tuning=True,
        description="a fixed thread count inside one model call (default: the runtime's choice;"
        " TensorFlow batched: cores / batch streams)",
    )
    classify_concurrent_calls: int | None = _setting(
        None,
        ge=1,
        used_by="classify",
        tuning=True,
        description="model calls that may run at once (default: batched, one per batch stream;"
        " unbatched, 2 per core, OpenVINO 4)",
    )

    @field_validator("auth_allowed_emails", mode="before")
    @classmethod
    def _split_emails(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(item.strip() for item in value.split(",") if item.strip())
        return value

    @property
    def batching(self) -> bool:
        if self.classify_batching is None:
            return self.classify_runtime in BATCHED_BY_DEFAULT
        return self.classify_batching is Switch.on

    @property
    def batch_streams(self) -> int:
        """Batches at once: while one runs, the next gathers and keeps another core busy."""
        return self.classify_batch_streams or (2 if _cores() > 1 else 1)

    @property
    def model_threads(self) -> int | None:
        """Threads inside one model call; None leaves it to the runtime.

        TensorFlow's overlapping calls share one intra-op pool whose per-op barriers stall when
        the batch streams compete for the same cores, so each stream gets its share of them.
        """
        if self.classify_model_threads:
            return self.classify_model_threads
        if self.classify_runtime is Runtime.tensorflow and self.batching:
            return max(1, _cores() // self.batch_streams)
        return None

    @property
    def concurrent_calls(self) -> int:
        """Model calls at once: one per batch stream, or (unbatched) enough per core that a core
        stays busy while another call hands its answer back through the GIL."""
        if self.classify_concurrent_calls:
            return self.classify_concurrent_calls
        if self.batching:
            return self.batch_streams
        return runtime_spec(self.classify_runtime).calls_per_core * _cores()

    def decode_budget(self) -> DecodeBudget:
        """The process's decode budget: by default one image of the largest accepted size."""
        return DecodeBudget(
            self.decode_pixel_budget or self.max_image_pixels, wait_s=self.decode_wait_s
        )

    def serving(self, built_for: Runtime | None) -> Settings:
        """These settings with the runtime a Bento was built for (its `runtime` build argument),
        unless `CLASSIFY_RUNTIME` names one: the environment has the last word."""
        if built_for is None or "classify_runtime" in self.model_fields_set:
            return self
        return self.model_copy(update={"classify_runtime": Runtime(built_for)})

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from `env` alone (not the process's environment), as the services read it."""
        values = {
            key.lower(): value
            for key, value in env.items()
            if key.lower() in cls.model_fields and value != ""
        }
        return cls.model_validate(values)


class SettingsError(ValueError):
    """The environment holds a value a setting does not accept; names the variable."""


def _cores() -> int:
    return os.cpu_count() or 1


def _explain(error: ValidationError) -> SettingsError:
    lines = []
    for problem in error.errors():
        variable = "_".join(str(part) for part in problem["loc"]).upper()
        lines.append(f"{variable}={problem.get('input')!r}: {problem['msg']}")
    return SettingsError("invalid setting in the environment: " + "; ".join(lines))


@cache
def settings() -> Settings:
    """The process-wide settings, read and validated once (a bad value stops the start)."""
    try:
        return Settings()
    except ValidationError as error:
        raise _explain(error) from None


def observability_config(settings: Settings) -> dict[str, object]:
    """BentoML service config for the per-request access log and OpenTelemetry middleware.

    Both are off unless asked for: Cloud Run already logs every request, and BentoML's tracing
    middleware runs on every request even when no span is sampled (benchmarks/decisions.md, D1).
    """
    return {
        "logging": {"access": {"enabled": settings.access_log}},
        # ".*" matches every URL, so the middleware passes requests straight through
        "tracing": {"excluded_urls": None if settings.request_tracing else ".*"},
    }


def settings_table(tuning: bool = False) -> str:
    """The markdown table of the settings (or of the tuning knobs), from the fields."""
    rows = ["| variable | default | used by | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra or {}
        assert isinstance(extra, dict)
        if extra.get("tuning", False) != tuning:
            continue
        rows.append(
            f"| `{name.upper()}` | {_default(field.default)} | {extra['used_by']} "
            f"| {field.description} |"
        )
    return "\n".join(rows)


def _default(value: object) -> str:
    if value is None or value == frozenset():
        return "unset"
    if isinstance(value, StrEnum):
        value = value.value
    elif isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


if __name__ == "__main__":
    print(settings_table(tuning="--tuning" in sys.argv))
