"""`/docs` for the interactive API docs, where people look for them (BentoML serves them at `/`)."""

from __future__ import annotations

from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class DocsAlias:
    """Redirect `GET /docs` to BentoML's Swagger UI at `/` (the spec stays at `/docs.json`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ("/docs", "/docs/"):
            await RedirectResponse("/", status_code=307)(scope, receive, send)
            return
        await self.app(scope, receive, send)
