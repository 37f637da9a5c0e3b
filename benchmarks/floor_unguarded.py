"""The shipped classify service with its HTTP middleware stack taken off (`common/http/stack.py`:
docs alias, error shape, auth, load shedding, body guard): beside the shipped one in
`benchmarks/request_floor.py`, what that stack costs a request. A measurement only: never
serve this.

    bentoml serve benchmarks.floor_unguarded:Classify --port 3000
"""

from __future__ import annotations

from service import Classify

Classify.middlewares.clear()

__all__ = ["Classify"]
