"""Progress of a long run: a rich bar with rate and ETA on a terminal, otherwise one JSON line
per step on stdout (Cloud Logging parses each as a structured entry).

The total grows while the listing is read (photos are classified as they are listed, so a
task's memory does not grow with the bucket); `listed` says when it is final."""

from __future__ import annotations

import json
import sys
import time
from typing import Protocol

from common.logs import LABELS_FIELD, PROCESS_LABELS

EVERY_S = 10.0  # a JSON line at most this often (and one at the end)


class Progress(Protocol):
    def start(self) -> None: ...
    def add_total(self, photos: int, listed: bool = False) -> None: ...
    def advance(self, photos: int, counts: dict[str, object]) -> None: ...
    def finish(self, counts: dict[str, object]) -> None: ...


class RichProgress:
    def __init__(self, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._description = description
        self._task = None
        self._started = time.monotonic()
        self._done = 0
        self._total = 0

    def start(self) -> None:
        self._bar.start()
        self._task = self._bar.add_task(self._description, total=0, rate="")

    def add_total(self, photos: int, listed: bool = False) -> None:
        self._total += photos
        self._bar.update(self._task, total=self._total)

    def advance(self, photos: int, counts: dict[str, object]) -> None:
        self._done += photos
        rate = self._done / max(time.monotonic() - self._started, 1e-9)
        self._bar.update(self._task, advance=photos, rate=f"{rate:.1f} photos/s")

    def finish(self, counts: dict[str, object]) -> None:
        self._bar.stop()


class JsonProgress:
    def __init__(self, description: str) -> None:
        self._description = description
        self._total = 0
        self._listed = False
        self._done = 0
        self._started = time.monotonic()
        self._last = 0.0

    def start(self) -> None:
        self._emit("started", {})

    def add_total(self, photos: int, listed: bool = False) -> None:
        self._total += photos
        self._listed = self._listed or listed

    def advance(self, photos: int, counts: dict[str, object]) -> None:
        self._done += photos
        if time.monotonic() - self._last >= EVERY_S:
            self._emit("progress", counts)

    def finish(self, counts: dict[str, object]) -> None:
        self._emit("finished", counts)

    def _emit(self, event: str, counts: dict[str, object]) -> None:
        self._last = time.monotonic()
        elapsed = self._last - self._started
        rate = self._done / elapsed if elapsed > 0 else 0.0
        known = self._listed or event == "finished"
        remaining = (self._total - self._done) / rate if rate > 0 and known else None
        line = {
            "severity": "INFO",
            "message": f"{self._description}: {event}, {self._done}/{self._total} photos",
            "event": event,
            "finished": self._done,
            "total": self._total,
            "listed": known,  # the total is final (before: photos listed so far)
            "photos_per_s": round(rate, 2),
            "eta_s": round(remaining, 1) if remaining is not None else None,
            **counts,
        }
        if PROCESS_LABELS:  # the model and runtime, as on every log line (common/logs.py)
            line[LABELS_FIELD] = dict(PROCESS_LABELS)
        print(json.dumps(line), flush=True)


def progress_for(description: str) -> Progress:
    return RichProgress(description) if sys.stderr.isatty() else JsonProgress(description)
