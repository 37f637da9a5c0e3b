"""`image-pipeline --output`: one row per file, written as results arrive, resumable.

CSV or JSON Lines (by the file's suffix). Each row is flushed when it is written, so a run that
stops halfway keeps every answer it had; `--resume` reads the file back, drops a last line cut
short by the stop and the rows of errors a retry can help (credentials, overload, the network),
and skips the files left in it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

COLUMNS = (
    "file",
    "label",
    "index",
    "confidence",
    "top_k",
    "model",
    "runtime",
    "error",
    "retryable",
    "trace_id",
)


class Outcome(BaseModel):
    """What happened to one file: the classification, or the error that stopped it."""

    file: str
    label: str | None = None
    index: int | None = None
    confidence: float | None = None
    top_k: list[dict[str, Any]] | None = None
    model: str | None = None
    runtime: str | None = None
    error: str | None = None
    retryable: bool | None = None  # an error a later run may not get (`--resume` redoes it)
    trace_id: str | None = None  # the photo's trace: its spans and log lines (docs/operations.md)

    @property
    def done(self) -> bool:
        """Classified, or refused for good: `--resume` keeps it."""
        return not (self.error and self.retryable)


class ResultsFile:
    """An append-only CSV or JSONL file of outcomes."""

    def __init__(self, path: Path, resume: bool) -> None:
        if path.suffix.lower() not in (".csv", ".jsonl"):
            raise ValueError(f"--output must end in .csv or .jsonl, not {path.name!r}")
        self.path = path
        self.is_csv = path.suffix.lower() == ".csv"
        self.done: set[str] = self._complete_rows() if resume and path.exists() else set()
        fresh = not self.done
        self._file = open(path, "w" if fresh else "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.DictWriter(self._file, COLUMNS) if self.is_csv else None
        if self._csv and fresh:
            self._csv.writeheader()

    def _complete_rows(self) -> set[str]:
        """Files done already; the file is rewritten with their rows alone (a partly written
        last line and the rows of retryable errors dropped), so each file keeps one row."""
        text = self.path.read_text(encoding="utf-8")
        whole = text[: text.rfind("\n") + 1]
        if self.is_csv:
            rows = [row for row in csv.DictReader(io.StringIO(whole)) if row.get("file")]
            kept = [row for row in rows if _done(row.get("error"), row.get("retryable"))]
            out = io.StringIO()
            writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
            kept_text = out.getvalue()
        else:
            lines = [line for line in whole.splitlines() if line.strip()]
            kept_lines = [line for line in lines if Outcome.model_validate_json(line).done]
            kept = [json.loads(line) for line in kept_lines]
            kept_text = "".join(line + "\n" for line in kept_lines)
        if kept_text != text:
            temporary = self.path.with_name(f".{self.path.name}.resume")
            temporary.write_text(kept_text, encoding="utf-8")
            temporary.replace(self.path)  # whole or not at all
        return {row["file"] for row in kept}

    def write(self, outcome: Outcome) -> None:
        if self._csv:
            row = outcome.model_dump()
            row["top_k"] = json.dumps(row["top_k"]) if row["top_k"] is not None else None
            self._csv.writerow(row)
        else:
            self._file.write(outcome.model_dump_json(exclude_none=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _done(error: str | None, retryable: str | None) -> bool:
    """A CSV row's outcome is final: no error, or one no retry changes (rows written before the
    `retryable` column keep their errors)."""
    return not error or (retryable or "").lower() != "true"
