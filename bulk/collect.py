"""`classify-bucket --collect OUT`: every result under the results prefix merged into one JSON
Lines file (one result per line, ready for `bq load --source_format=NEWLINE_DELIMITED_JSON`) or
one CSV (flat columns), written whole or not at all."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.bucket_objects import BucketObjects
from common.results import MAX_RESULT_BYTES, ClassificationResult, source_key

CSV_COLUMNS = (
    "source",
    "generation",
    "size",
    "mtime_ns",
    "mode",
    "via",
    "classified_at",
    "label",
    "index",
    "confidence",
    "model",
    "runtime",
    "error_code",
    "error",
)


def collect(objects: BucketObjects, results_prefix: str, out: Path) -> int:
    """Write the results to `out` (.jsonl or .csv by its suffix); the number written."""
    as_csv = out.suffix.lower() == ".csv"
    fd, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, CSV_COLUMNS) if as_csv else None
            if writer:
                writer.writeheader()
            for data in iter_results(objects, results_prefix):
                result = ClassificationResult.model_validate_json(data)
                if writer:
                    writer.writerow(_row(result))
                else:
                    file.write(result.model_dump_json() + "\n")
                count += 1
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def _row(result: ClassificationResult) -> dict[str, object]:
    answer, error = result.answer, result.error
    return {
        "source": result.source,
        "generation": result.version.generation,
        "size": result.version.size,
        "mtime_ns": result.version.mtime_ns,
        "mode": result.mode.value,
        "via": result.via,
        "classified_at": result.classified_at.isoformat(),
        "label": answer.label if answer else None,
        "index": answer.index if answer else None,
        "confidence": answer.confidence if answer else None,
        "model": answer.model if answer else None,
        "runtime": answer.runtime if answer else None,
        "error_code": error.code if error else None,
        "error": error.error if error else None,
    }


def iter_results(objects: BucketObjects, results_prefix: str) -> Iterator[bytes]:
    """Every result object's body under the prefix (manifests aside), in listing order."""
    for info in objects.list(results_prefix):
        if source_key(results_prefix, info.key) is not None:
            data, _ = objects.read(info.key, None, MAX_RESULT_BYTES)
            yield data
