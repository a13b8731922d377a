"""The approvals page's OpenAPI document: served, and true to the routes and the hold's fields."""

from __future__ import annotations

import json
from importlib import resources

from aiohttp.test_utils import TestClient, TestServer

from holdgate.approvals.desk import ApprovalDesk
from holdgate.approvals.hold import HoldState
from holdgate.approvals.page import ApprovalsPage
from tests.approvals.test_hold import hold as make_hold

DOCUMENT = json.loads(
    resources.files("holdgate.approvals").joinpath("api.openapi.json").read_text()
)


def _page() -> ApprovalsPage:
    return ApprovalsPage(ApprovalDesk(), admin_token="admin-token-for-the-api-test")


def test_every_route_is_documented_and_nothing_else() -> None:
    app = _page().app()
    routes = {
        (r.resource.canonical, r.method.lower())
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(path, method) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert routes == documented
    assert DOCUMENT["openapi"].startswith("3.1")


def test_the_hold_schema_names_every_field_the_api_returns() -> None:
    hold = make_hold()
    schema = DOCUMENT["components"]["schemas"]["Hold"]
    assert set(hold.as_dict()) <= set(schema["properties"])
    assert set(schema["properties"]["state"]["enum"]) == {str(s) for s in HoldState}


async def test_the_document_is_served_without_a_token() -> None:
    async with TestClient(TestServer(_page().app())) as client:
        response = await client.get("/api/openapi.json")
        assert response.status == 200
        assert await response.json() == DOCUMENT
        assert (await client.get("/api/holds")).status == 401  # the data still needs a token
