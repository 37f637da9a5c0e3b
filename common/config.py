"""Every setting of both services, in one `pydantic-settings` model read once from the environment.

Each field is an environment variable of the same name in capitals (`max_upload_bytes` is
`MAX_UPLOAD_BYTES`). docs/settings.md's table and the performance doc's tuning table are
generated from the fields' descriptions (`python -m classify.settings`, classify's settings
extending these), and a test keeps them equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.images.decode_budget import DecodeBudget
from common.schemas import ResizeMode

MIB = 1024 * 1024


def setting(
    default: Any = ..., *, used_by: str = "both", tuning: bool = False, **kwargs: Any
) -> Any:
    """A field that also records which service reads it and whether it is a tuning knob."""
    return Field(default, json_schema_extra={"used_by": used_by, "tuning": tuning}, **kwargs)


class Settings(BaseSettings):
    """What both services read (each the fields it uses); classify's own settings extend it
    (`classify/settings.py`). `used_by` says which service reads a field, for the tables."""

    model_config = SettingsConfigDict(case_sensitive=False, env_ignore_empty=True, extra="ignore")

    # storage
    bucket: str | None = setting(
        None, description="GCS bucket; unset means local folder storage (`STORAGE_DIR`)"
    )
    storage_dir: Path = setting(
        Path("data"), description="local storage folder, when `BUCKET` is unset"
    )
    storage_prefix: str = setting(  # preprocess only
        "preprocessed/", used_by="preprocess", description="key prefix of stored images"
    )
    storage_timeout_s: float = setting(
        10.0,
        gt=0,
        description="the most a storage read may take in all, retries included (also each "
        "storage call's network timeout)",
    )
    # limits
    max_upload_bytes: int = setting(
        20 * MIB,
        gt=0,
        description="largest upload, checked while it streams (and largest object classify reads)",
    )
    max_image_pixels: int = setting(
        40_000_000, gt=0, description="largest image in pixels, checked from its header"
    )
    decode_pixel_budget: int | None = setting(
        None,
        gt=0,
        description="decoded pixels in memory at once across requests "
        "(default: `MAX_IMAGE_PIXELS`); see docs/deploy.md, Memory",
    )
    decode_wait_s: float = setting(
        5.0, ge=0, description="how long a decode waits for the budget before 503 + Retry-After"
    )
    max_in_flight: int = setting(
        64, gt=0, description="requests in flight before the service answers 503 + Retry-After"
    )
    resize_mode: ResizeMode = setting(
        ResizeMode.resize, description="default preprocessing mode: `resize` or `center-crop`"
    )
    # auth and observability
    auth_token: str | None = setting(
        None,
        pattern=r"^[A-Za-z0-9\-._~+/]+=*$",
        description="when set, working routes need `Authorization: Bearer <AUTH_TOKEN>` (an "
        "RFC 6750 token: letters, digits, `-._~+/`, e.g. `openssl rand -base64 32`)",
    )
    auth_audience: str | None = setting(
        None, description="also accept Google ID tokens for this audience (the service URL)"
    )
    auth_certs_url: str = setting(
        "https://www.googleapis.com/oauth2/v1/certs",
        description="where Google's ID-token signing certificates come from",
    )
    auth_allowed_emails: Annotated[frozenset[str], NoDecode] = setting(
        frozenset(), description="comma-separated callers allowed with an ID token (default: any)"
    )
    access_log: bool = setting(
        False,
        description="an access line per request (Cloud Logging's `httpRequest`, and the error "
        "`code` of an error answer)",
    )
    traces_to_google: bool = setting(
        False,
        description="send traces to Google Cloud's Telemetry API with the service's own "
        "credentials, when `OTEL_TRACES_EXPORTER=otlp` turns tracing on "
        "([operations.md](operations.md#traces))",
    )

    @field_validator("auth_allowed_emails", mode="before")
    @classmethod
    def _split_emails(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(item.strip() for item in value.split(",") if item.strip())
        return value

    def decode_budget(self) -> DecodeBudget:
        """The process's decode budget: by default one image of the largest accepted size."""
        return DecodeBudget(
            self.decode_pixel_budget or self.max_image_pixels, wait_s=self.decode_wait_s
        )

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


def explain(error: ValidationError) -> SettingsError:
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
        raise explain(error) from None


def observability_config(settings: Settings) -> dict[str, object]:
    """BentoML service config for its access log and OpenTelemetry middleware: both off.

    BentoML's access line is preformatted text: `ACCESS_LOG` turns on the services' own
    structured one (common/http/request_log.py). BentoML's tracing middleware runs on every
    request even when no span is sampled (benchmarks/decisions.md, D1) and reads only some of
    OpenTelemetry's variables: the services trace with their own (common/tracing.py).
    """
    return {
        "logging": {"access": {"enabled": False}},
        # ".*" matches every URL, so the middleware passes requests straight through
        "tracing": {"excluded_urls": ".*"},
    }


def settings_table(model: type[BaseSettings], tuning: bool = False) -> str:
    """The markdown table of a settings model's fields (or of its tuning knobs)."""
    rows = ["| variable | default | used by | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
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
