"""Settings read from the environment, once, with the embedded defaults a laptop needs."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from pydantic import BaseModel, Field

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
    storage_timeout_s: float = Field(10.0, gt=0)
    auth_token: str | None = Field(None, description="Bearer token required on working routes.")

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
            "storage_timeout_s": env.get("STORAGE_TIMEOUT_S"),
            "auth_token": env.get("AUTH_TOKEN") or None,
        }
        return cls.model_validate({k: v for k, v in values.items() if v is not None})


@cache
def settings() -> Settings:
    """The process-wide settings (read once: the environment does not change under a server)."""
    return Settings.from_env()
