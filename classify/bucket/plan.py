"""Which photos of a task's share still need a result, decided while the listings stream by.

Memory must not grow with the bucket (a task's memory is fixed at deploy, and a bucket holds
millions of photos), so nothing is indexed: the source listing and the results listing are
both in name order (GCS lists names in UTF-8 byte order, the local store walks folders in the
same order), and one pass over both, in step, pairs each photo with its result.

The two orders differ in one way: a result is named `<source key>.json`, and the suffix moves a
key behind the keys that extend it with a character sorting before "." (`a` lists before `a-b`,
but `a.json` after `a-b.json`). `in_result_order` holds a key back only while the keys after it
extend it, so what waits is a chain of nested prefixes: at most one key per character of the
longest name (1,024 bytes), whatever the bucket holds. A listing out of that order costs work,
never a wrong result: a photo whose result was not found is classified again, and the result
write's compare-and-swap finds it up to date (counted as skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from classify.results import RESULT_SUFFIX, has_storable_result, result_version, source_key
from common.storage import ObjectInfo, Storage, Version

LOG = logging.getLogger(__name__)


def in_result_order(sources: Iterable[ObjectInfo]) -> Iterator[ObjectInfo]:
    """`sources` (in key order) reordered to the order of their result names."""
    waiting: list[ObjectInfo] = []  # each a proper prefix of the one above it
    for info in sources:
        named = info.key + RESULT_SUFFIX
        while waiting and waiting[-1].key + RESULT_SUFFIX < named:
            yield waiting.pop()
        if waiting and not info.key.startswith(waiting[-1].key):
            yield from reversed(waiting)  # not in key order: let it all go (costs work only)
            waiting.clear()
        waiting.append(info)
    yield from reversed(waiting)


@dataclass
class PlanCounts:
    """What planning found so far (the manifest's figures)."""

    pending: int = 0  # photos handed on to classify
    skipped: int = 0  # results up to date already
    unsupported: int = 0  # names no result can be stored for
    invalid_results: int = 0  # result objects this code did not write
    listed: bool = False  # the whole listing has been read


@dataclass
class Planner:
    """The photos of the share `owns` picks under `prefix` that have no up-to-date result under
    `results_prefix`, yielded as the two listings are read."""

    objects: Storage
    prefix: str
    results_prefix: str
    is_source: Callable[[str], bool]  # under the prefix, not excluded
    owns: Callable[[str], bool]  # this task's share
    counts: PlanCounts = field(default_factory=PlanCounts)

    def pending(self) -> Iterator[ObjectInfo]:
        results = self._results()
        current = next(results, None)
        for info in in_result_order(self._owned_sources()):
            named = info.key + RESULT_SUFFIX
            while current is not None and current[0] + RESULT_SUFFIX < named:
                current = next(results, None)
            matched = current if current is not None and current[0] == info.key else None
            if matched is not None and self._covers(matched[1], info.version):
                self.counts.skipped += 1
                continue
            self.counts.pending += 1
            yield info
        self.counts.listed = True

    def _owned_sources(self) -> Iterator[ObjectInfo]:
        for info in self.objects.list(self.prefix):
            if not self.is_source(info.key) or not self.owns(info.key):
                continue
            if not has_storable_result(self.objects, self.results_prefix, info.key):
                LOG.warning("%r: a name this service cannot store a result for; skipped", info.key)
                self.counts.unsupported += 1
                continue
            yield info

    def _results(self) -> Iterator[tuple[str, ObjectInfo]]:
        """(source key, result object) for each result, in the listing's order."""
        for info in self.objects.list(self.results_prefix):
            key = source_key(self.results_prefix, info.key)
            if key is not None:
                yield key, info

    def _covers(self, result: ObjectInfo, version: Version) -> bool:
        stored = result_version(self.objects, result)
        if stored is None:
            LOG.warning("%s holds no valid result: its photo will be classified again", result.key)
            self.counts.invalid_results += 1
            return False
        return stored.covers(version)
