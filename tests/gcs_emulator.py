"""Run `gcp-storage-emulator`, made to honour create-only uploads (`ifGenerationMatch=0`).

The emulator ignores preconditions (see ../shared/notes/gcs-emulator.md), so a second
create-only upload would silently overwrite. Real GCS answers 412; this wrapper makes the
emulator do the same on inserts, so "uploading twice writes once" is tested for real.
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


def main() -> None:
    objects.insert = insert_create_only  # before the server module captures the routes
    http.server.HTTPServer.request_queue_size = 128  # default backlog 5 drops SYNs under load
    from gcp_storage_emulator.__main__ import main as emulator_main

    emulator_main(sys.argv[1:])


if __name__ == "__main__":
    main()
