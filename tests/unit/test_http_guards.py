"""The outer guard's promise, at the ASGI level: whatever the app below answers or raises, an
error leaves as `{"error", "code"}` JSON with its status and headers kept."""

from __future__ import annotations

import httpx
import pytest
from starlette.responses import JSONResponse, PlainTextResponse

from common.http.guards import ErrorShape

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _raises(scope, receive, send):
    raise ZeroDivisionError("a bug")


def _answers(response):
    async def app(scope, receive, send):
        await response(scope, receive, send)

    return app


async def _call(app) -> httpx.Response:
    transport = httpx.ASGITransport(app=ErrorShape(app), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/anything")


@pytest.mark.parametrize(
    "app, status, code",
    [
        (_raises, 500, "internal"),
        (
            _answers(PlainTextResponse("Method Not Allowed", 405, {"Allow": "POST"})),
            405,
            "method_not_allowed",
        ),
        (_answers(PlainTextResponse("Not Found", 404)), 404, "not_found"),
        (_answers(JSONResponse([{"error": "boom"}], 500)), 500, "internal_server_error"),
        (_answers(JSONResponse({"detail": "nope"}, 403)), 403, "forbidden"),
        (_answers(JSONResponse({"error": "x", "code": "ours"}, 409)), 409, "ours"),
        (_answers(PlainTextResponse("", 599)), 599, "error"),
    ],
)
async def test_every_error_leaves_as_json(app, status, code):
    response = await _call(app)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == code and response.json()["error"]
    if status == 405:
        assert response.headers["allow"] == "POST"


async def test_success_passes_untouched():
    response = await _call(_answers(PlainTextResponse("fine")))
    assert response.status_code == 200 and response.text == "fine"
