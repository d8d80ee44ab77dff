"""The console over HTTP (no browser; tests/runtime/test_console_browser.py drives a real one):
sign-in by key for a cookie, CSRF on every form, every value escaped, a tenant's own rows only,
destroy through the tools' call path, the operator's view."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx2
import pytest

from runtime.app import App
from runtime.console.auth import SESSION_COOKIE
from runtime.console.queries import destroy_tool
from runtime.logs import JsonFormatter
from runtime.server import http_app
from runtime.settings import Settings
from runtime.tenants import create_key, create_tenant, ensure_tenant, list_keys, revoke_key
from sandbox.docker import DockerDriver
from scheduler.models import LedgerEntry, Task, utcnow
from skills.registry import discover

pytestmark = pytest.mark.anyio

OPERATOR = "operator-key-for-tests"
XSS = "<script>alert(1)</script>"


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    application = App(settings.model_copy(update={"operator_key": OPERATOR}), DockerDriver("unix:///nonexistent.sock"))
    async with application.running(serving=False):
        yield application
    application.close()


def browser(app: App) -> httpx2.AsyncClient:
    """A client that keeps cookies, as a browser would (same origin)."""
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(http_app(app, "127.0.0.1", 8000)), base_url="http://127.0.0.1:8000"
    )


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "every form carries a CSRF token"
    return found.group(1)


async def sign_in(web: httpx2.AsyncClient, key: str) -> httpx2.Response:
    form = await web.get("/console/login")
    return await web.post("/console/login", data={"key": key, "csrf": csrf_of(form.text)})


async def test_a_key_is_exchanged_for_an_httponly_samesite_cookie(app: App) -> None:
    assert app.first_key is not None
    async with browser(app) as web:
        assert (await web.get("/console/")).headers["location"] == "/console/login"
        signed = await sign_in(web, app.first_key.key)
        assert signed.status_code == 303 and signed.headers["location"] == "/console/"
        cookie = next(h for h in signed.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert app.first_key.key not in cookie
        page = await web.get("/console/")
    assert page.status_code == 200
    assert app.first_key.key not in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script runs
    assert "Spend by skill" in page.text and "<svg" in page.text


async def test_a_revoked_key_neither_signs_in_nor_keeps_its_session(app: App) -> None:
    key = create_key(app.store, "local")
    async with browser(app) as web:
        assert (await sign_in(web, key.key)).status_code == 303
        assert (await web.get("/console/")).status_code == 200
        revoke_key(app.store, key.id)
        assert (await web.get("/console/")).headers["location"] == "/console/login"
        refused = await sign_in(web, key.key)
        assert refused.status_code == 401 and "not a live API key" in refused.text
        assert (await sign_in(web, "csk_made-up")).status_code == 401


async def test_every_post_needs_its_csrf_token(app: App) -> None:
    assert app.first_key is not None
    made = (await app.call("local", "db_create", {"engine": "sqlite"})).unwrap()
    async with browser(app) as web:
        # The sign-in form's token is bound to its own cookie: a forged sign-in is refused.
        form = await web.get("/console/login")
        forged = await web.post("/console/login", data={"key": app.first_key.key, "csrf": "forged"})
        assert forged.status_code == 403
        web.cookies.clear()
        assert (
            await web.post("/console/login", data={"key": app.first_key.key, "csrf": csrf_of(form.text)})
        ).status_code == 403
        await sign_in(web, app.first_key.key)
        url = f"/console/resources/{made['db_id']}/destroy"
        for data in ({}, {"csrf": "forged"}, {"csrf": csrf_of((await web.get("/console/login")).text)}):
            refused = await web.post(url, data=data)
            assert refused.status_code == 403 and "CSRF" in refused.text
        assert (await web.post("/console/logout", data={})).status_code == 403
    listed = (await app.call("local", "db_list", {})).unwrap()
    assert [d["db_id"] for d in listed["databases"]] == [made["db_id"]], "nothing was destroyed"


async def test_destroy_goes_through_the_tools_call_path(app: App) -> None:
    assert app.first_key is not None
    made = (await app.call("local", "db_create", {"engine": "sqlite"})).unwrap()
    async with browser(app) as web:
        await sign_in(web, app.first_key.key)
        overview = await web.get("/console/")
        assert made["db_id"] in overview.text
        confirm = await web.get(f"/console/resources/{made['db_id']}/destroy")
        assert "Yes, destroy it" in confirm.text
        done = await web.post(f"/console/resources/{made['db_id']}/destroy", data={"csrf": csrf_of(confirm.text)})
        assert done.status_code == 303
        after = await web.get(done.headers["location"])
    assert f"Destroyed <code>{made['db_id']}</code>" in after.text
    assert (await app.call("local", "db_list", {})).unwrap()["databases"] == []
    tasks = (await app.call("local", "tasks_list", {})).unwrap()
    assert any(t["tool"] == "db_delete" and t["state"] == "succeeded" for t in tasks["tasks"])


async def test_every_value_is_escaped(app: App) -> None:
    ensure_tenant(app.store, XSS)  # a stdio server's tenant name is taken as given
    key = create_key(app.store, XSS).key
    await app.call(XSS, "db_create", {"engine": "sqlite"})
    async with browser(app) as web:
        await sign_in(web, key)
        page = (await web.get("/console/")).text
        task_id = re.findall(r'href="/console/tasks/([^"]+)"', page)[0]
        detail = (await web.get(f"/console/tasks/{task_id}")).text
        web.cookies.clear()
        await sign_in(web, OPERATOR)
        operator = (await web.get("/console/")).text
    for shown in (page, detail, operator):
        assert "<script>" not in shown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;script&gt;" in operator


async def test_a_tenant_sees_only_its_own_rows(app: App) -> None:
    create_tenant(app.store, "rival")
    rival_key = create_key(app.store, "rival").key
    theirs = (await app.call("rival", "db_create", {"engine": "sqlite"})).unwrap()
    assert app.first_key is not None
    async with browser(app) as web:
        await sign_in(web, app.first_key.key)
        page = (await web.get("/console/")).text
        assert theirs["db_id"] not in page and theirs["task_id"] not in page
        assert (await web.get(f"/console/tasks/{theirs['task_id']}")).status_code == 404
        assert (await web.get(f"/console/resources/{theirs['db_id']}/destroy")).status_code == 404
        csrf = csrf_of(page)
        assert (await web.post(f"/console/resources/{theirs['db_id']}/destroy", data={"csrf": csrf})).status_code == 404
        assert (await web.get("/console/tenants/rival")).status_code == 404
        web.cookies.clear()
        await sign_in(web, rival_key)
        assert theirs["db_id"] in (await web.get("/console/")).text
    assert len((await app.call("rival", "db_list", {})).unwrap()["databases"]) == 1


async def test_the_operator_sees_every_tenant_the_engines_and_the_reaper(app: App) -> None:
    create_tenant(app.store, "rival")
    theirs = (await app.call("rival", "db_create", {"engine": "sqlite"})).unwrap()
    await app.duties.pass_once()
    async with browser(app) as web:
        await sign_in(web, OPERATOR)
        page = (await web.get("/console/")).text
        assert 'id="tenants"' in page and ">rival</a>" in page and ">local</a>" in page
        assert theirs["db_id"] in page
        assert "<strong>store</strong>: up" in page and "<strong>docker</strong>: down" in page
        assert "pool_target" in page and "No pass yet." not in page
        assert theirs["task_id"] in (await web.get("/console/tenants/rival")).text
        assert (await web.get(f"/console/tasks/{theirs['task_id']}")).status_code == 200
    assert [k.tenant_id for k in list_keys(app.store)] == ["local"], "the operator's key is no tenant's"


async def test_a_tasks_log_lines_carry_its_id_tenant_and_agent(app: App, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cloudskills.tasks"):
        done = await app.call("local", "billing_balance", {}, agent="planner")
    line = json.loads(JsonFormatter().format(next(r for r in caplog.records if r.name == "cloudskills.tasks")))
    assert line["task_id"] == done.task_id and line["tenant"] == "local" and line["agent"] == "planner"
    assert line["state"] == "succeeded" and line["op"] == "balance"


async def test_per_model_tokens_cost_per_million_and_latency_percentiles(app: App) -> None:
    """From the ledger's token lines and their tasks' timing (as the inference skill bills them)."""
    assert app.first_key is not None
    now = utcnow()
    with app.store.transaction() as session:
        for i in range(1, 101):  # task i took i * 10 ms and produced 1,000 output tokens at 2 micros each
            task_id = f"t_model{i:03d}"
            started = now - timedelta(seconds=5)
            session.add(
                Task(
                    id=task_id,
                    tenant_id="local",
                    skill="inference",
                    op="generate",
                    state="succeeded",
                    timeout_s=60,
                    created_at=started,
                    started_at=started,
                    finished_at=started + timedelta(milliseconds=10 * i),
                    cost_micros=2000,
                )
            )
            session.add(
                LedgerEntry(
                    idempotency_key=f"{task_id}:out",
                    tenant_id="local",
                    task_id=task_id,
                    skill="inference",
                    op="generate",
                    item="tokens.output:tiny",
                    model="tiny",
                    quantity=1000,
                    amount_micros=2000,
                    catalog_version="t",
                )
            )
    async with browser(app) as web:
        await sign_in(web, app.first_key.key)
        page = (await web.get("/console/")).text
    row = re.search(r"<tr><td>tiny</td>(.*?)</tr>", page, re.S)
    assert row is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(1))
    assert cells[:3] == ["0", "0", "100000"]
    assert cells[3] == "2.000000 USD"  # 200,000 micros for 100,000 tokens: 2 USD a million
    assert cells[4:] == ["500 ms", "950 ms", "990 ms"]  # nearest rank of 10, 20, ... 1000 ms


def test_the_console_destroys_each_kind_with_the_op_that_takes_its_id_alone() -> None:
    """Not a kill of one process, nor a delete of one snapshot, which take the id and more."""
    registry = discover()
    assert destroy_tool(registry, "sandbox") == "sandbox_destroy"
    assert destroy_tool(registry, "workspace") == "workspace_delete"
    assert destroy_tool(registry, "db") == "db_delete"
    assert destroy_tool(registry, "vm") == "vm_delete"
