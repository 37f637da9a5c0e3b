"""The preprocess Bento: upload an image, get back where its normalized 224x224 image is stored.

No TensorFlow here: this service only decodes, normalizes, encodes and stores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse

from common.auth import BearerAuth
from common.config import observability_config, settings
from common.docs import DocsAlias
from common.errors import EmptyUpload, ServiceError, UploadTooLarge, error_response
from common.http_guards import ErrorShape
from common.images import (
    STORED_CONTENT_TYPE,
    STORED_SUFFIX,
    decode_image,
    encode_stored,
    normalize,
    set_pixel_limit,
)
from common.schemas import PreprocessResponse, ResizeMode
from common.shedding import LoadShedder
from common.storage import storage_from_settings
from preprocess.uploads import UploadGuard


@bentoml.service(
    name="preprocess",
    workers=1,
    threads=4,  # Pillow releases the GIL while decoding and resizing
    traffic={"timeout": 60},
    labels={"owner": "image-services", "stage": "preprocess"},
    **observability_config(settings()),
)
class Preprocess:
    def __init__(self) -> None:
        self.settings = settings()
        set_pixel_limit(self.settings.max_image_pixels)
        self.storage = storage_from_settings(self.settings)

    @bentoml.api(route="/preprocess", output_spec=PreprocessResponse)
    def preprocess(
        self,
        image: Annotated[Path, Field(description="The image: JPEG, PNG, WebP, BMP or GIF.")],
        mode: Annotated[
            ResizeMode | None,
            Field(description="`resize` (whole image) or `center-crop`; default from config."),
        ] = None,
    ) -> PreprocessResponse | JSONResponse:
        """Normalize an uploaded image to 224x224 RGB, store it (lossless BMP), return its path."""
        try:
            return self._store(self._read_upload(image), mode or self.settings.resize_mode)
        except ServiceError as exc:
            return error_response(exc)

    def _read_upload(self, upload: Path) -> bytes:
        size = upload.stat().st_size
        if size == 0:
            raise EmptyUpload("the uploaded file is empty")
        if size > self.settings.max_upload_bytes:
            raise UploadTooLarge(
                f"the upload is {size:,} bytes; the limit is {self.settings.max_upload_bytes:,}"
            )
        return upload.read_bytes()

    def _store(self, data: bytes, mode: ResizeMode) -> PreprocessResponse:
        image = normalize(decode_image(data, self.settings.max_image_pixels), mode)
        stored = encode_stored(image)
        digest = hashlib.sha256(stored).hexdigest()
        key = f"{self.settings.storage_prefix}{digest}{STORED_SUFFIX}"
        uri, _created = self.storage.put_if_absent(key, stored, STORED_CONTENT_TYPE)
        return PreprocessResponse(
            gcs_path=uri, width=image.width, height=image.height, sha256=digest
        )


Preprocess.add_asgi_middleware(DocsAlias)
Preprocess.add_asgi_middleware(ErrorShape)
Preprocess.add_asgi_middleware(BearerAuth, settings=settings())
Preprocess.add_asgi_middleware(LoadShedder, max_in_flight=settings().max_in_flight)
Preprocess.add_asgi_middleware(
    UploadGuard,
    path="/preprocess",
    max_upload_bytes=settings().max_upload_bytes,
    file_field="image",
    fields={"image", "mode"},
)
