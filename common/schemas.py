"""Request and response models of both services: the API contract, shown in `/docs`.

Model-level examples use OpenAPI 3.0's singular `example`: BentoML's schema builder rejects
the JSON-Schema `examples` key on a model.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_K = 1000
# The model's contract, defined here once: 224x224 RGB uint8 in, 1000 ImageNet classes out.
MODEL_SIZE = 224
NUM_CLASSES = 1000
MODEL_PIXEL_BYTES = MODEL_SIZE * MODEL_SIZE * 3


class ResizeMode(StrEnum):
    """How an upload becomes a 224x224 image (the brief's preprocessing experiment)."""

    resize = "resize"
    center_crop = "center-crop"


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer the services produce themselves."""

    error: str = Field(description="What is wrong, for a human.")
    code: str = Field(description="Stable machine-readable reason.", examples=["not_an_image"])


class PreprocessResponse(BaseModel):
    """Where the normalized 224x224 image (lossless BMP) was stored, and what it is."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "gcs_path": "gs://my-bucket/preprocessed/3f1c...e9.bmp",
                "width": 224,
                "height": 224,
                "sha256": "3f1c...e9",
            }
        }
    )

    gcs_path: str = Field(description="`gs://bucket/key`, or `file://` on local storage.")
    width: int = Field(description="Width of the stored image in pixels.")
    height: int = Field(description="Height of the stored image in pixels.")
    sha256: str = Field(description="SHA-256 of the stored bytes; also its key.")


class ClassifyRequest(BaseModel):
    """A stored image to classify."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"gcs_path": "gs://my-bucket/preprocessed/3f1c...e9.bmp"}},
    )

    gcs_path: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            description="Path returned by `/preprocess`: `gs://bucket/key` or `file://...`.",
        ),
    ]
    top_k: Annotated[
        int, Field(ge=1, le=MAX_TOP_K, description="How many ranked classes to return.")
    ] = 5


class Prediction(BaseModel):
    """One ImageNet class and its probability."""

    label: str = Field(description="Human ImageNet class name.", examples=["Labrador retriever"])
    index: int = Field(ge=0, lt=1000, description="ImageNet class index (0-999).")
    confidence: float = Field(ge=0.0, le=1.0, description="Softmax probability.")


class ClassifyResponse(BaseModel):
    """The top-1 class, the ranked top-k, and which model produced them."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "example": {
                "label": "Labrador retriever",
                "confidence": 0.93,
                "index": 208,
                "top_k": [
                    {"label": "Labrador retriever", "index": 208, "confidence": 0.93},
                    {"label": "golden retriever", "index": 207, "confidence": 0.03},
                ],
                "model": "mobilenet_v2_onnx:abc123",
                "runtime": "onnxruntime",
            }
        },
    )

    label: str
    confidence: float
    index: int
    top_k: list[Prediction]
    model: str = Field(description="BentoML model tag `name:version` that answered.")
    runtime: str = Field(
        description="What ran the model: `onnxruntime`, `tensorflow` or `openvino` (FP32), or "
        "the opt-in reduced precision `openvino-int8` or `openvino-bf16`, whose probabilities "
        "differ a little from FP32's (docs/performance.md).",
        examples=["onnxruntime"],
    )


class ModelInput(BaseModel):
    """One 224x224 RGB image as raw uint8 bytes (height, width, channel), base64 in JSON."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    pixels: bytes = Field(min_length=MODEL_PIXEL_BYTES, max_length=MODEL_PIXEL_BYTES)


class ModelOutput(BaseModel):
    """Softmax over the 1000 ImageNet classes: little-endian float32, URL-safe base64 in JSON."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    probabilities: bytes = Field(min_length=NUM_CLASSES * 4, max_length=NUM_CLASSES * 4)
