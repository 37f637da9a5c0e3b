"""Classify's settings: the shared ones (`common/config.py`) and the model's, its runtime and
batching, read once; and the one place the runtime is decided.

The runtime is the Bento's build argument (`bentoml build --arg runtime=NAME`), which BentoML
keeps in the Bento (`bento.yaml`) and restores when it serves it; `CLASSIFY_RUNTIME` overrides it
explicitly, read by this same model. `classify-bucket` runs in the same image without
`bentoml serve`, so it reads the arguments from the Bento it runs in.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from functools import cache
from pathlib import Path

import bentoml
import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from classify.runtime_table import DEFAULT_RUNTIME, Runtime, RuntimeSpec
from classify.runtime_table import spec as runtime_spec
from common.config import Settings, explain, setting, settings_table


class Switch(StrEnum):
    on = "on"
    off = "off"


class BuildArguments(BaseModel):
    """`bentoml build --arg runtime=NAME`: what a classify Bento is built for."""

    runtime: Runtime | None = Field(
        None, description="the runtime served unless CLASSIFY_RUNTIME says otherwise"
    )

    @classmethod
    def current(cls) -> BuildArguments:
        """The arguments of the Bento being served, or of the Bento this process runs in
        (`$BENTO_PATH/bento.yaml`: a container's `classify-bucket`); none from a source tree."""
        served = bentoml.use_arguments(cls)
        if served.runtime is not None:
            return served
        manifest = Path(os.environ.get("BENTO_PATH", "/nonexistent")) / "bento.yaml"
        if manifest.is_file():
            return cls.model_validate(yaml.safe_load(manifest.read_text()).get("args") or {})
        return served


class ClassifySettings(Settings):
    """Everything classify reads: the shared settings, then its own."""

    _built_for: Runtime | None = PrivateAttr(None)  # the build argument

    # classify only: the model, its runtime and batching
    classify_model: str | None = setting(
        None,
        used_by="classify",
        description="model tag in the BentoML store; unset: the import's model for the runtime "
        "(`mobilenet_v2_onnx:latest` for ONNX Runtime)",
    )
    classify_runtime: Runtime | None = setting(
        None,
        used_by="classify",
        description="overrides the runtime the Bento was built for (`--arg runtime=NAME`; "
        "unset and unbuilt: `onnxruntime`): `onnxruntime`, `tensorflow`, `openvino`, or the "
        "opt-in `openvino-int8` / `openvino-bf16` (a runtime of the same family)",
    )
    classify_batching: Switch | None = setting(
        None,
        used_by="classify",
        description="`on`: concurrent requests share model calls (adaptive batching); `off`: one "
        "model call per request; unset: on where it pays for the runtime "
        "([measured](performance.md#batching-on-by-default))",
    )
    classify_max_batch_size: int = setting(
        2, ge=2, used_by="classify", description="largest batch the adaptive batcher forms"
    )
    classify_max_latency_ms: int = setting(
        10_000,
        gt=0,
        used_by="classify",
        description="the batcher's latency budget: requests predicted to wait longer get 503",
    )
    results_prefix: str = setting(
        "results/",
        pattern=r"^[^/].*/$",
        used_by="classify",
        description="where storage events and `classify-bucket` write one JSON result per "
        "photo (docs/buckets.md); never read as photos",
    )
    watch_prefix: str = setting(
        "uploads/",
        used_by="classify",
        description="storage events classify only objects under this prefix (`/`: the whole "
        "bucket; never the results or preprocess prefixes)",
    )
    # classify only, tuning (docs/performance.md): derived from the runtime and the cores
    # unless set
    classify_batch_streams: int | None = setting(
        None,
        ge=1,
        le=8,
        used_by="classify",
        tuning=True,
        description="batches that may run at once (default: 2, or 1 on one core)",
    )
    classify_model_threads: int | None = setting(
        None,
        ge=1,
        used_by="classify",
        tuning=True,
        description="a fixed thread count inside one model call (default: the runtime's choice;"
        " TensorFlow batched: cores / batch streams)",
    )
    classify_concurrent_calls: int | None = setting(
        None,
        ge=1,
        used_by="classify",
        tuning=True,
        description="model calls that may run at once (default: batched, one per batch stream;"
        " unbatched, 2 per core, OpenVINO 4)",
    )

    @property
    def runtime(self) -> RuntimeSpec:
        """The runtime served: `CLASSIFY_RUNTIME` if set, else the build argument."""
        return runtime_spec(self.classify_runtime or self._built_for or DEFAULT_RUNTIME)

    @property
    def batching(self) -> bool:
        if self.classify_batching is None:
            return self.runtime.batched_by_default
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
        if self.runtime.name == "tensorflow" and self.batching:
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
        return self.runtime.calls_per_core * _cores()


def _cores() -> int:
    return os.cpu_count() or 1


@cache
def classify_settings() -> ClassifySettings:
    """The process-wide settings with the build argument, read and validated once."""
    built_for = BuildArguments.current().runtime
    try:
        settings = ClassifySettings()
    except ValidationError as error:
        raise explain(error) from None
    settings._built_for = built_for
    return settings


if __name__ == "__main__":  # docs/settings.md's table (--tuning: docs/performance.md's)
    print(settings_table(ClassifySettings, tuning="--tuning" in sys.argv))
