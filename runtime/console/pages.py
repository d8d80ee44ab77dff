"""The console's pages, rendered on the server (Starlette + Jinja2, every value escaped).

    GET  /console                      a tenant's overview, or the operator's
    GET  /console/tenants/{tenant}     the operator's view of one tenant
    GET  /console/tasks/{task}         one task, its details and charges
    GET  /console/resources/{id}/destroy   asks to confirm; POST destroys it
    GET  /console/login, POST /console/login, POST /console/logout

A destroy goes through the same call path as an agent's (``App.call`` with the
kind's own destroy tool), as the signed-in key's tenant and agent. No page runs a
script: the Content-Security-Policy allows none.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from common.errors import CloudSkillsError
from runtime.console import queries
from runtime.console.auth import LOGIN_COOKIE, SESSION_COOKIE, SESSION_S, Sessions, Viewer
from runtime.console.charts import stacked_bars
from scheduler.models import Tenant
from scheduler.observe import Reports

if TYPE_CHECKING:
    from runtime.app import App

ROOT = "/console"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
Page = Callable[[Request, Viewer], Awaitable[Response]]


def age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.0f} d"


class Console:
    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions = Sessions(app.store, app.settings.home, app.settings.operator_key)
        folder = resources.files("runtime.console")
        self.css = folder.joinpath("static", "console.css").read_bytes()
        self.templates = Environment(
            loader=FileSystemLoader(str(folder.joinpath("templates"))), autoescape=select_autoescape(default=True)
        )
        self.templates.filters["money"] = app.catalog.format
        self.templates.filters["age"] = age

    def routes(self) -> list[BaseRoute]:
        signed = self.signed_in
        return [
            Mount(
                ROOT,
                routes=[
                    Route("/", signed(self.overview)),
                    Route("/login", self.login, methods=["GET", "POST"]),
                    Route("/logout", signed(self.logout), methods=["POST"]),
                    Route("/static/console.css", self.stylesheet),
                    Route("/tenants/{tenant_id}", signed(self.tenant_page)),
                    Route("/tasks/{task_id}", signed(self.task_page)),
                    Route("/resources/{resource_id}/destroy", signed(self.destroy), methods=["GET", "POST"]),
                ],
            ),
            Route(ROOT, lambda request: RedirectResponse(f"{ROOT}/", 308)),
        ]

    # -- plumbing -------------------------------------------------------------

    def render(self, request: Request, name: str, viewer: Viewer | None, status: int = 200, **context: Any) -> Response:
        csrf = self.sessions.csrf_token(viewer.nonce) if viewer is not None else ""
        page = self.templates.get_template(name).render(root=ROOT, viewer=viewer, csrf=csrf, **context)
        return HTMLResponse(page, status_code=status, headers=HEADERS)

    def signed_in(self, page: Page) -> Callable[[Request], Awaitable[Response]]:
        """The page for a live session, whose POSTs carry its CSRF token; else the sign-in page."""

        async def guarded(request: Request) -> Response:
            viewer = self.sessions.viewer(request)
            if viewer is None:
                response = RedirectResponse(f"{ROOT}/login", 303)
                self.sessions.clear_cookie(response, SESSION_COOKIE)
                return response
            if request.method == "POST":
                form = await request.form()
                if not self.sessions.csrf_ok(viewer.nonce, str(form.get("csrf", ""))):
                    return self.forbidden(request, viewer)
            return await page(request, viewer)

        return guarded

    def forbidden(self, request: Request, viewer: Viewer | None) -> Response:
        message = "This form is stale or did not come from this console (CSRF check failed): reload the page and retry."
        return self.render(request, "message.html", viewer, 403, title="Refused", message=message)

    def not_found(self, request: Request, viewer: Viewer, what: str) -> Response:
        return self.render(request, "message.html", viewer, 404, title="Not found", message=f"No {what} here.")

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    # -- signing in and out ----------------------------------------------------

    async def login(self, request: Request) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        error = None
        if request.method == "POST":
            form = await request.form()
            if not nonce or not self.sessions.csrf_ok(nonce, str(form.get("csrf", "")), "login"):
                return self.forbidden(request, None)
            cookie = self.sessions.sign_in(str(form.get("key", "")))
            if cookie is not None:
                response: Response = RedirectResponse(f"{ROOT}/", 303)
                self.sessions.set_cookie(response, request, SESSION_COOKIE, cookie, SESSION_S)
                self.sessions.clear_cookie(response, LOGIN_COOKIE)
                return response
            error = "That key is not a live API key: check it, or ask your operator for a new one."
        fresh = nonce or self.sessions.fresh_nonce()
        csrf = self.sessions.csrf_token(fresh, "login")
        page = self.templates.get_template("login.html").render(root=ROOT, viewer=None, csrf=csrf, error=error)
        response = HTMLResponse(page, status_code=401 if error else 200, headers=HEADERS)
        self.sessions.set_cookie(response, request, LOGIN_COOKIE, fresh, 3600)
        return response

    async def logout(self, request: Request, viewer: Viewer) -> Response:
        response = RedirectResponse(f"{ROOT}/login", 303)
        self.sessions.clear_cookie(response, SESSION_COOKIE)
        return response

    # -- pages -------------------------------------------------------------------

    async def overview(self, request: Request, viewer: Viewer) -> Response:
        if viewer.operator:
            return await self.operator_page(request, viewer)
        assert viewer.tenant_id is not None
        return self.tenant_view(request, viewer, viewer.tenant_id)

    async def tenant_page(self, request: Request, viewer: Viewer) -> Response:
        tenant_id = request.path_params["tenant_id"]
        if not viewer.operator and tenant_id != viewer.tenant_id:
            return self.not_found(request, viewer, "such tenant")
        return self.tenant_view(request, viewer, tenant_id)

    def tenant_view(self, request: Request, viewer: Viewer, tenant_id: str) -> Response:
        app = self.app
        with app.store.transaction() as session:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None:
                return self.not_found(request, viewer, "such tenant")
            money = queries.balance(session, tenant_id)
            charts = []
            for by in ("skill", "agent"):
                days, series = queries.spend_by_day(session, tenant_id, by)
                title = f"Spend by {by}, {app.catalog.currency} a day, last 14 days"
                charts.append((f"By {by}", stacked_bars(title, days, series, app.catalog.format)))
            live = queries.live_resources(session, app.leases, app.registry, tenant_id)
            tasks = queries.recent_tasks(session, tenant_id)
            models = queries.model_stats(session, tenant_id)
        return self.render(
            request,
            "tenant.html",
            viewer,
            title=tenant.name,
            tenant=tenant,
            balance=money,
            charts=charts,
            live=live,
            tasks=[(task, queries.duration_s(task)) for task in tasks],
            models=models,
            destroyed=request.query_params.get("destroyed"),
        )

    async def task_page(self, request: Request, viewer: Viewer) -> Response:
        with self.app.store.transaction() as session:
            found = queries.task_of(session, viewer.tenant_id, request.path_params["task_id"])
        if found is None:
            return self.not_found(request, viewer, "such task of yours")
        task, entries = found
        return self.render(
            request,
            "task.html",
            viewer,
            title=f"Task {task.id}",
            task=task,
            entries=entries,
            duration=queries.duration_s(task),
            args=queries.json_preview(task.args),
            result=queries.json_preview(task.result),
        )

    async def destroy(self, request: Request, viewer: Viewer) -> Response:
        resource_id = request.path_params["resource_id"]
        with self.app.store.transaction() as session:
            found = queries.live_resources(session, self.app.leases, self.app.registry, viewer.tenant_id, resource_id)
        if not found or found[0].destroy_tool is None:
            return self.not_found(request, viewer, "live resource of yours that can be destroyed")
        resource = found[0]
        if request.method == "GET":
            return self.render(request, "destroy.html", viewer, title=f"Destroy {resource.id}?", resource=resource)
        try:
            arguments = {f"{resource.kind}_id": resource.id}
            assert resource.destroy_tool is not None
            await self.app.call(resource.tenant_id, resource.destroy_tool, arguments, agent=viewer.agent)
        except CloudSkillsError as exc:
            return self.render(request, "message.html", viewer, 409, title="Not destroyed", message=exc.message)
        back = f"{ROOT}/" if not viewer.operator else f"{ROOT}/tenants/{resource.tenant_id}"
        return RedirectResponse(f"{back}?destroyed={resource.id}", 303)

    async def operator_page(self, request: Request, viewer: Viewer) -> Response:
        app = self.app
        with app.store.transaction() as session:
            tenants = queries.tenants_overview(session)
            live = queries.live_resources(session, app.leases, app.registry, None)
        readings = [s for service in app.services.all() if isinstance(service, Reports) for s in service.samples()]
        return self.render(
            request,
            "operator.html",
            viewer,
            title="Operator",
            tenants=tenants,
            live=live,
            readings=readings,
            engines=await self.engines(),
            passes=list(reversed(app.duties.passes)),
        )

    async def engines(self) -> list[tuple[str, bool, str]]:
        """Each engine the process depends on: name, whether it answers, and what it said (or how fast)."""
        checks: list[tuple[str, bool, str]] = []
        began = time.perf_counter()
        try:
            with self.app.store.transaction() as session:
                session.execute(text("SELECT 1"))
            checks.append(("store", True, f"answered in {age(time.perf_counter() - began)}"))
        except Exception as exc:
            checks.append(("store", False, type(exc).__name__))
        began = time.perf_counter()
        try:
            with anyio.fail_after(5):
                version = await anyio.to_thread.run_sync(self.app.docker.version, abandon_on_cancel=True)
            checks.append(("docker", True, f"Docker {version}, answered in {age(time.perf_counter() - began)}"))
        except (CloudSkillsError, TimeoutError) as exc:
            checks.append(("docker", False, getattr(exc, "message", "no answer within 5 s")))
        return checks
