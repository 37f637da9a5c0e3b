"""A BentoML home per server, for running several `bentoml serve` side by side (the tests and the
benchmarks do; `scripts/serve` does the same in bash for preprocess)."""

from __future__ import annotations

import os
from pathlib import Path


def private_bentoml_home(home: Path, shared: Path | None = None) -> Path:
    """A BentoML home for servers of one's own that shares the model and Bento stores of
    `shared` (the current `$BENTOML_HOME` by default).

    Every `bentoml serve` empties `$BENTOML_HOME/prometheus_multiproc_dir` as it starts: in a
    shared home that would reset (or mix) the metrics of any other service running from it.
    """
    shared = shared or Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    home.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        (shared / store).mkdir(parents=True, exist_ok=True)
        if not (home / store).exists():
            (home / store).symlink_to(shared / store)
    return home
