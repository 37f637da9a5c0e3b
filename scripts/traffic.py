#!/usr/bin/env python
"""What a Cloud Run service's traffic says, for scripts/rollout: read from
`gcloud run services describe SERVICE --format json` on standard input.

    python3 -m scripts.traffic serving            # the revision with the most traffic
    python3 -m scripts.traffic url TAG            # the URL of the revision tagged TAG
    python3 -m scripts.traffic revision TAG       # the revision tagged TAG
    python3 -m scripts.traffic latest             # the latest ready revision

Standard library only, like scripts/sizing.py. A missing tag or revision is exit 2 with a line
saying what is missing.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _traffic(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("status", {}).get("traffic", [])


def serving(service: dict[str, Any]) -> str:
    routed = [entry for entry in _traffic(service) if entry.get("percent")]
    if not routed:
        raise LookupError("no revision of the service receives traffic")
    return max(routed, key=lambda entry: entry["percent"])["revisionName"]


def tagged(service: dict[str, Any], tag: str, field: str) -> str:
    for entry in _traffic(service):
        if entry.get("tag") == tag and entry.get(field):
            return entry[field]
    raise LookupError(f"no revision is tagged {tag!r} (scripts/rollout deploy tags it)")


def latest(service: dict[str, Any]) -> str:
    name = service.get("status", {}).get("latestReadyRevisionName")
    if not name:
        raise LookupError("the service has no ready revision")
    return name


def main(argv: list[str]) -> int:
    service = json.load(sys.stdin)
    try:
        match argv:
            case ["serving"]:
                print(serving(service))
            case ["url", tag]:
                print(tagged(service, tag, "url"))
            case ["revision", tag]:
                print(tagged(service, tag, "revisionName"))
            case ["latest"]:
                print(latest(service))
            case _:
                print(__doc__, file=sys.stderr)
                return 2
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
