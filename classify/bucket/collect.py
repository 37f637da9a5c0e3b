"""`classify-bucket --collect OUT`: every result under the results prefix merged into one JSON
Lines file (one result per line, ready for `bq load --source_format=NEWLINE_DELIMITED_JSON`) or
one CSV (flat columns), written whole or not at all."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from classify.results import MAX_RESULT_BYTES, ClassificationResult, source_key
from common.errors import ServiceError, StorageUnavailable
from common.storage import Storage

LOG = logging.getLogger(__name__)

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


@dataclass
class Collected:
    written: int = 0
    invalid: int = 0  # result objects that do not hold a result this code wrote: left out


def collect(objects: Storage, results_prefix: str, out: Path) -> Collected:
    """Write the results to `out` (.jsonl or .csv by its suffix), leaving out (and counting)
    objects under the prefix that are not valid results."""
    as_csv = out.suffix.lower() == ".csv"
    fd, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    counted = Collected()
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, CSV_COLUMNS) if as_csv else None
            if writer:
                writer.writeheader()
            for result in iter_results(objects, results_prefix, counted):
                if writer:
                    writer.writerow(_row(result))
                else:
                    file.write(result.model_dump_json() + "\n")
                counted.written += 1
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return counted


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


def iter_results(
    objects: Storage, results_prefix: str, counted: Collected
) -> Iterator[ClassificationResult]:
    """Every valid result under the prefix (manifests aside), in listing order; an object that
    is too large, gone or not a result is counted in `counted.invalid` and left out."""
    for info in objects.list(results_prefix):
        if source_key(results_prefix, info.key) is None:
            continue
        try:
            data, _ = objects.read(info.key, None, MAX_RESULT_BYTES)
            yield ClassificationResult.model_validate_json(data)
        except StorageUnavailable:
            raise
        except (ServiceError, ValueError) as exc:
            LOG.warning("%s is not a valid result (%s): left out", info.key, exc)
            counted.invalid += 1
