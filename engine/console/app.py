"""The console's web application (Starlette, served by Hypercorn on trio): pages for a
signed-in operator or supervisor, nothing for anyone else, and no route that changes
anything. The overview is live: the page follows `/events`, a server-sent event stream
of the overview's data twice a second, and redraws itself from it."""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from . import access, views

if TYPE_CHECKING:
    from .service import Console

HERE = Path(__file__).parent
EVENT_INTERVAL_S = 0.5  # the overview's refresh; an alert is sent at once
SETTLEMENTS_LISTED = 200  # the latest, on /settlements
SESSION_SECONDS = 8 * 3600
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=HERE / "templates")


def console_app(console: Console, users: dict[str, str], *, secure: bool = False) -> Starlette:
    """`secure`: served over TLS, so the session cookie is sent over HTTPS only."""

    def page(request: Request, name: str, context: dict, status_code: int = 200) -> Response:
        context = {"user": request.session.get("user"), **context}
        return templates.TemplateResponse(request, name, context, status_code=status_code, headers=SECURITY_HEADERS)

    def signed_in_only(endpoint):
        """Pages send a visitor who has not signed in to the sign-in page; data answers 401."""

        async def guarded(request: Request) -> Response:
            if request.session.get("user") not in users:
                if request.url.path in ("/events", "/api/overview"):
                    return JSONResponse({"error": "sign in first"}, status_code=401, headers=SECURITY_HEADERS)
                return RedirectResponse("/login", status_code=303)
            return await endpoint(request)

        return guarded

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page(request, "login.html", {"failed": False})
        address = request.client.host if request.client else ""
        wait_s = math.ceil(throttle.wait_s(address))
        if wait_s:
            response = page(request, "login.html", {"failed": False, "wait_s": wait_s}, status_code=429)
            response.headers["Retry-After"] = str(wait_s)
            return response
        form = await request.form()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        if not access.signed_in(users, name, password):
            throttle.failed(address)
            return page(request, "login.html", {"failed": True}, status_code=401)
        request.session.clear()
        request.session["user"] = name
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def overview(request: Request) -> Response:
        return page(request, "overview.html", {"data": console.overview()})

    async def overview_data(request: Request) -> Response:
        return JSONResponse(console.overview(), headers=SECURITY_HEADERS)

    async def events(request: Request) -> Response:
        async def stream():
            while True:
                yield f"data: {json.dumps(console.overview(), separators=(',', ':'))}\n\n"
                with trio.move_on_after(EVENT_INTERVAL_S):
                    await console.alerted.park()  # an alert goes out at once

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SECURITY_HEADERS)

    async def settlements_index(request: Request) -> Response:
        latest = list(reversed(console.settlements))[:SETTLEMENTS_LISTED]
        return page(request, "index.html", {"title": "Latest settlements", "base": "/settlements", "items": latest})

    async def settlement(request: Request) -> Response:
        settlement_id = request.path_params["settlement"]
        view = console.settlement(settlement_id)
        if view is None:
            return page(request, "unknown.html", {"what": f"settlement {settlement_id}"}, status_code=404)
        advices, unasked = await console.advices(settlement_id)
        return page(request, "settlement.html", {"view": view, "advices": advices, "unasked": unasked})

    async def conservation(request: Request) -> Response:
        return page(request, "conservation.html", {"rows": views.conservation(console.conservation)})

    async def holders_index(request: Request) -> Response:
        return page(request, "index.html", {"title": "Holders", "base": "/holders", "items": views.assets(journals)})

    async def holders(request: Request) -> Response:
        asset = request.path_params["asset"]
        return page(request, "holders.html", {"view": views.holders(journals, asset)})

    async def participants_index(request: Request) -> Response:
        items = views.parties(journals)
        return page(request, "index.html", {"title": "Participants", "base": "/participants", "items": items})

    async def participant(request: Request) -> Response:
        party = request.path_params["party"]
        return page(request, "participant.html", {"view": views.positions(journals, party)})

    async def provenance(request: Request) -> Response:
        ledger, account, asset = (request.path_params[name] for name in ("ledger", "account", "asset"))
        journal = await console.tokens(ledger)
        if journal is None:
            return page(request, "unknown.html", {"what": f"ledger {ledger}"}, status_code=404)
        return page(request, "provenance.html", {"view": views.provenance(journal, account, asset)})

    async def issuance(request: Request) -> Response:
        ledger, seq = request.path_params["ledger"], request.path_params["seq"]
        journal = await console.tokens(ledger)
        view = views.issuance(journal, seq) if journal is not None else None
        if view is None:
            return page(request, "unknown.html", {"what": f"issue {ledger}:{seq}"}, status_code=404)
        return page(request, "issuance.html", {"view": view})

    journals = console.observer.journals
    throttle = access.Throttle()
    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout),
        Route("/", signed_in_only(overview)),
        Route("/api/overview", signed_in_only(overview_data)),
        Route("/events", signed_in_only(events)),
        Route("/settlements", signed_in_only(settlements_index)),
        Route("/settlements/{settlement}", signed_in_only(settlement)),
        Route("/conservation", signed_in_only(conservation)),
        Route("/holders", signed_in_only(holders_index)),
        Route("/holders/{asset}", signed_in_only(holders)),
        Route("/participants", signed_in_only(participants_index)),
        Route("/participants/{party}", signed_in_only(participant)),
        Route("/provenance/{ledger}/{account}/{asset}", signed_in_only(provenance)),
        Route("/issuance/{ledger}/{seq:int}", signed_in_only(issuance)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    session = Middleware(
        SessionMiddleware,
        secret_key=secrets.token_urlsafe(32),
        session_cookie="lockstep-console",
        max_age=SESSION_SECONDS,
        same_site="strict",
        https_only=secure,
    )
    return Starlette(routes=routes, middleware=[session])
