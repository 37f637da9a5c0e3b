"""Which task this is, and which objects are its share.

Cloud Run Jobs tell each task `CLOUD_RUN_TASK_INDEX` / `CLOUD_RUN_TASK_COUNT` (and the retry
`CLOUD_RUN_TASK_ATTEMPT`), Cloud Batch `BATCH_TASK_INDEX` / `BATCH_TASK_COUNT`; with neither,
one task does everything. An object belongs to the task its name hashes to, so the same task
count always shards the same way, whatever the listing order or a retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pydantic import BaseModel, Field, model_validator

_ENVIRONMENTS = (
    ("CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT", "CLOUD_RUN_TASK_ATTEMPT"),
    ("BATCH_TASK_INDEX", "BATCH_TASK_COUNT", None),
)


class TaskShare(BaseModel):
    index: int = Field(0, ge=0)
    count: int = Field(1, ge=1)
    attempt: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _index_below_count(self) -> TaskShare:
        if self.index >= self.count:
            raise ValueError(f"task index {self.index} is not below the task count {self.count}")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TaskShare:
        for index, count, attempt in _ENVIRONMENTS:
            if index in env or count in env:
                return cls(
                    index=_number(env, index, 0),
                    count=_number(env, count, 1),
                    attempt=_number(env, attempt, 0) if attempt else 0,
                )
        return cls()

    def owns(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def _number(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number from the environment, or ValueError naming the variable."""
    text = env.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number") from None
