"""The gateway's own approvals page and API, and its Prometheus metrics, on the admin port.

Served on loopback by default. Every route but /metrics needs a reviewer token: the admin
token (reviewer `local:admin`, created at start) or a configured local reviewer's token.
Browsers log in once and then hold an HttpOnly cookie; state-changing calls made with the
cookie must carry the `X-Holdgate-CSRF` header, which no cross-site form can set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from holdgate.approvals.desk import ApprovalDesk
from holdgate.approvals.hold import Hold, Outcome, Reviewer
from holdgate.listening import Served, metrics_response

log = logging.getLogger("holdgate")

COOKIE = "holdgate_token"
CSRF_HEADER = "X-Holdgate-CSRF"
_STATUS = {
    Outcome.RECORDED: 200,
    Outcome.DECIDED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.NOT_ALLOWED: 403,
    Outcome.SELF_APPROVAL: 403,
    Outcome.ALREADY_DECIDED: 409,
    Outcome.REASON_REQUIRED: 400,
    Outcome.UNAVAILABLE: 503,
}


@dataclass(frozen=True, slots=True)
class LocalReviewer:
    """A person who may use the page or the CLI: a name and the SHA-256 of their token."""

    name: str
    token_sha256: str


def token_digest(token: str) -> str:
    """How local reviewer tokens are stored in the configuration."""
    return hashlib.sha256(token.encode()).hexdigest()


class ApprovalsPage(Served):
    """An aiohttp app bound to one ApprovalDesk."""

    def __init__(
        self,
        desk: ApprovalDesk,
        *,
        admin_token: str,
        reviewers: tuple[LocalReviewer, ...] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.desk = desk
        self._tokens: dict[str, Reviewer] = {
            token_digest(admin_token): Reviewer("local:admin", "admin")
        }
        for r in reviewers:
            self._tokens[r.token_sha256.lower()] = Reviewer(f"local:{r.name}", r.name)
        self.registry = registry

    def reviewer_for(self, token: str) -> Reviewer | None:
        """The reviewer a token authenticates, compared in constant time."""
        digest = token_digest(token)
        for known, reviewer in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return reviewer
        return None

    def app(self) -> web.Application:
        """The routes."""
        app = web.Application(middlewares=[self._security_headers])
        app.router.add_get("/", self._index)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/api/holds", self._list)
        app.router.add_get("/api/holds/{id}", self._get)
        app.router.add_post("/api/holds/{id}/approve", self._approve)
        app.router.add_post("/api/holds/{id}/deny", self._deny)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/openapi.json", self._openapi)
        return app

    # --- auth --------------------------------------------------------------------------

    @web.middleware
    async def _security_headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _authenticate(self, request: web.Request, *, changes_state: bool) -> Reviewer:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            reviewer = self.reviewer_for(auth[7:].strip())
        elif COOKIE in request.cookies:
            if changes_state and request.headers.get(CSRF_HEADER) != "1":
                raise web.HTTPForbidden(text=f"missing {CSRF_HEADER} header")
            reviewer = self.reviewer_for(request.cookies[COOKIE])
        else:
            reviewer = None
        if reviewer is None:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "a valid reviewer token is required"}),
                content_type="application/json",
            )
        return reviewer

    # --- routes ------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        page = resources.files("holdgate.approvals").joinpath("page.html").read_text()
        return web.Response(
            text=page,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
            },
        )

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))
        reviewer = self.reviewer_for(token)
        if reviewer is None:
            raise web.HTTPUnauthorized(text="invalid token")
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        log.info("approvals page: %s logged in", reviewer.id)
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def _list(self, request: web.Request) -> web.Response:
        reviewer = self._authenticate(request, changes_state=False)
        return web.json_response(
            {
                "you": reviewer.id,
                "pending": [h.as_dict() for h in self.desk.pending()],
                "recent": [h.as_dict() for h in self.desk.recent()[:20]],
            }
        )

    async def _get(self, request: web.Request) -> web.Response:
        self._authenticate(request, changes_state=False)
        hold = self.desk.find(request.match_info["id"])
        if hold is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no such hold"}), content_type="application/json"
            )
        return web.json_response(hold.as_dict())

    async def _approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, approve=True)

    async def _deny(self, request: web.Request) -> web.Response:
        return await self._decide(request, approve=False)

    async def _decide(self, request: web.Request, *, approve: bool) -> web.Response:
        reviewer = self._authenticate(request, changes_state=True)
        reason = ""
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
                if isinstance(body, dict):
                    reason = str(body.get("reason", ""))[:2000]
        hold, outcome = await self.desk.submit(request.match_info["id"], reviewer, approve, reason)
        if outcome is Outcome.UNAVAILABLE:
            return web.json_response(
                {"outcome": str(outcome), "message": _explain(outcome, hold)}, status=503
            )
        if hold is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no such hold"}), content_type="application/json"
            )
        return web.json_response(
            {"outcome": str(outcome), "message": _explain(outcome, hold), "hold": hold.as_dict()},
            status=_STATUS[outcome],
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self._authenticate(request, changes_state=False)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue = self.desk.subscribe()
        try:
            await response.write(b": connected\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                data = json.dumps({"kind": event.kind, "hold": event.hold.as_dict()})
                await response.write(f"data: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.desk.unsubscribe(queue)
        return response

    async def _openapi(self, request: web.Request) -> web.Response:
        """This API described as OpenAPI 3.1 (no token needed: it holds no data)."""
        document = resources.files("holdgate.approvals").joinpath("api.openapi.json").read_text()
        return web.Response(text=document, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.registry is None:
            raise web.HTTPNotFound()
        return metrics_response(self.registry)


def _explain(outcome: Outcome, hold: Hold | None) -> str:
    if hold is None:
        return _UNAVAILABLE
    return {
        Outcome.RECORDED: f"approval recorded: {len(hold.approvals)} of {hold.required}",
        Outcome.DECIDED: hold.reason,
        Outcome.DUPLICATE: "you already said so; nothing changed",
        Outcome.NOT_ALLOWED: "you are not one of this request's reviewers",
        Outcome.SELF_APPROVAL: "the agent's owner cannot approve the agent's own request",
        Outcome.ALREADY_DECIDED: f"already decided: {hold.state} ({hold.reason})",
        Outcome.REASON_REQUIRED: "a denial needs a reason",
        Outcome.UNAVAILABLE: _UNAVAILABLE,
    }[outcome]


_UNAVAILABLE = (
    "the approvals database is unreachable: nothing was recorded; try again once it is back"
)
