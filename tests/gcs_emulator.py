"""Run `gcp-storage-emulator`, made to honour generations and preconditions as GCS does.

The emulator ignores preconditions and generations (see ../shared/notes/gcs-emulator.md): a
second create-only upload would silently overwrite, and a read of a replaced generation would
return the new content. Real GCS answers 412 to the first and 404 to the second (a bucket
without object versioning keeps no old generations); this wrapper makes the emulator do the
same, so "uploading twice writes once" and "an old generation's event finds its object gone"
are tested for real.
Usage: python tests/gcs_emulator.py start --host 127.0.0.1 --port N --in-memory ...
"""

from __future__ import annotations

import http.server
import sys
from http import HTTPStatus

from gcp_storage_emulator.handlers import objects

_original_insert = objects.insert


def _object_name(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        return (data.get("meta") or {}).get("name") or data.get("name")
    return None


def insert_create_only(request, response, storage, *args, **kwargs):
    """Answer 412 like GCS when `ifGenerationMatch` is not the object's generation (0: the
    object must not exist yet): create-only and compare-and-swap writes, honoured."""
    match = request.query.get("ifGenerationMatch", [None])[0]
    if match is not None:
        name = _object_name(request)
        existing = storage.objects.get(request.params["bucket_name"], {}).get(name)
        current = str(existing.get("generation", "")) if existing else "0"
        if name is not None and current != match:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "conditionNotMet"}})
            return None
    return _original_insert(request, response, storage, *args, **kwargs)


_original_get, _original_download = objects.get, objects.download


def _at_generation(original):
    """GET (metadata or media) of `?generation=N`: 404 unless N is the live generation, and
    412 when `ifGenerationMatch` is not it, as GCS answers for a bucket without versioning."""

    def handler(request, response, storage, *args, **kwargs):
        wanted = request.query.get("generation", [None])[0]
        match = request.query.get("ifGenerationMatch", [None])[0]
        soft_deleted = request.query.get("softDeleted", ["false"])[0].lower() in ("1", "true")
        if (wanted or match) and not soft_deleted:
            bucket = storage.objects.get(request.params["bucket_name"], {})
            existing = bucket.get(request.params["object_id"])
            current = str(existing.get("generation", "")) if existing else None
            if wanted is not None and wanted != current:
                response.status = HTTPStatus.NOT_FOUND
                response.json({"error": {"code": 404, "message": "No such object."}})
                return None
            if match is not None and match != (current or "0"):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
        return original(request, response, storage, *args, **kwargs)

    return handler


def main() -> None:
    objects.insert = insert_create_only  # before the server module captures the routes
    objects.get = _at_generation(_original_get)
    objects.download = _at_generation(_original_download)
    http.server.HTTPServer.request_queue_size = 128  # default backlog 5 drops SYNs under load
    from gcp_storage_emulator.__main__ import main as emulator_main

    emulator_main(sys.argv[1:])


if __name__ == "__main__":
    main()
