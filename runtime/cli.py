"""The `cloudskills` command: serve, catalog, doctor, images, and one command per op.

`cloudskills <skill> <op> --arg ...` is generated from the same registry as the
MCP tools, so the CLI and the tools always agree.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import sys
import types
import typing
from typing import Any, Literal

import anyio
import click
from pydantic.fields import FieldInfo

from common.errors import CloudSkillsError
from runtime.admin import register_admin_commands
from runtime.doctor import doctor_checks
from runtime.settings import load_settings
from runtime.tenants import check_agent, list_tenants
from scheduler.tasks import TaskOutcome
from skills.base import Op
from skills.registry import discover


def fail(message: str) -> typing.NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what the server does to stderr.")
def main(verbose: bool) -> None:
    """cloudskills: an agent cloud of sandboxes, VMs, databases and models, over MCP."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)


# A stdio server's client closes its stdin and kills it a second or two later.
STDIO_POOL_DRAIN_S = 0.3


@main.command()
@click.option("--http", "use_http", is_flag=True, help="Serve Streamable HTTP at /mcp instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--tenant", default=None, help="The tenant this server acts for (default: local).")
@click.option("--agent", default=None, help="The tenant's agent a stdio server acts as (e.g. planner).")
def serve(use_http: bool, host: str, port: int, tenant: str | None, agent: str | None) -> None:
    """Serve the MCP server (stdio by default)."""
    from runtime.app import App
    from runtime.server import loop_options, serve_http, serve_stdio

    chosen = {"tenant": tenant, "agent": agent}
    settings = load_settings(**{k: v for k, v in chosen.items() if v})
    if not use_http and "pool_drain_s" not in settings.model_fields_set:
        settings = load_settings(**{k: v for k, v in chosen.items() if v}, pool_drain_s=STDIO_POOL_DRAIN_S)
    try:
        app = App(settings)
    except CloudSkillsError as exc:
        fail(exc.message)
    if app.first_key is not None:
        click.echo(
            f"cloudskills: created tenant {app.first_key.tenant_id!r} and its API key (shown only now): "
            f"{app.first_key.key}",
            err=True,
        )
    if use_http:
        click.echo(f"cloudskills: serving MCP on http://{host}:{port}/mcp (Authorization: Bearer <key>)", err=True)
        anyio.run(serve_http, app, host, port, backend_options=loop_options(settings.event_loop))
    else:
        if settings.tenant not in {t.id for t in list_tenants(app.store)}:
            fail(f"no tenant {settings.tenant!r}: create it with `cloudskills tenants create {settings.tenant}`.")
        try:
            check_agent(settings.agent)
        except CloudSkillsError as exc:
            fail(exc.message)
        anyio.run(serve_stdio, app, settings.tenant, settings.agent, backend_options=loop_options(settings.event_loop))


@main.group("skills", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def skills_command(ctx: click.Context, as_json: bool) -> None:
    """The catalog: `skills list` (the default), `skills get <name>` for one skill and its files."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_skills, as_json=as_json)


@skills_command.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_skills(as_json: bool) -> None:
    """Every skill, its version and its tools."""
    registry = discover()
    if as_json:
        catalog = [
            {
                "name": s.name,
                "description": s.description,
                "uri": f"skill://{s.name}/SKILL.md",
                "version": (s.meta.get("metadata") or {}).get("version"),
                "tools": [f"{s.name}_{op.name}" for op in s.ops],
            }
            for s in registry.skills
        ]
        click.echo(json.dumps(catalog, indent=2))
        return
    for skill in registry.skills:
        click.echo(f"{skill.name}: {skill.description}")
        for op in skill.ops:
            click.echo(f"  {skill.name}_{op.name:<14} {op.description}")


@skills_command.command("get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def get_skill(name: str, as_json: bool) -> None:
    """One skill as MCP's skills/get gives it (front matter, files with digests), then its guide."""
    from runtime.mcp_skills import read_skill

    skill = next((s for s in discover().skills if s.name == name), None)
    served = read_skill(skill) if skill is not None else None
    if skill is None or served is None:
        fail(f"no skill {name!r}: `cloudskills skills list` shows them.")
    entry = served.entry() | {"tools": [f"{skill.name}_{op.name}" for op in skill.ops]}
    if as_json:
        click.echo(json.dumps(entry, indent=2, ensure_ascii=False))
        return
    for key, value in served.frontmatter.items():
        click.echo(f"{key}: {json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value}")
    click.echo(f"tools: {', '.join(entry['tools'])}")
    click.echo("files:")
    for file, listed in zip(served.files, entry["resources"], strict=True):
        click.echo(f"  {file.path:<24} {listed['size']:>7} bytes  {listed['digest']}")
    click.echo("")
    click.echo(skill.doc.rstrip("\n"))


@main.command()
def doctor() -> None:
    """Check Docker, images, KVM and models; say the one command that fixes each."""
    ok = True
    for check in doctor_checks(load_settings()):
        mark = "ok " if check.ok else ("-- " if not check.required else "XX ")
        click.echo(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            click.echo(f"       fix: {check.fix}")
        ok = ok and (check.ok or not check.required)
    sys.exit(0 if ok else 1)


@main.group()
def images() -> None:
    """Sandbox and database images, built locally from Debian's packages."""


@images.command("build")
def images_build() -> None:
    """Build the sandbox and PostgreSQL images and the VM guest where missing (cached by content)."""
    from sandbox.docker import DockerDriver
    from sandbox.images import ensure_images, stderr_progress
    from sandbox.vm_image import ensure_guest_image
    from skills.db.engines import postgres_image

    settings = load_settings()
    driver = DockerDriver(settings.docker_host)
    try:
        tags = [*ensure_images(driver), postgres_image.ensure_image(driver, stderr_progress)]
        guest = ensure_guest_image(settings.image_cache, stderr_progress)
    except CloudSkillsError as exc:
        fail(exc.message)
    for tag in tags:
        click.echo(tag)
    click.echo(guest.disk.parent)


# -- one command per op -------------------------------------------------------


def click_type(annotation: Any) -> tuple[Any, bool]:
    """The click type of a field, and whether the value arrives as JSON text."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return click_type(inner[0])
        return str, True
    if origin is Literal:
        return click.Choice([str(v) for v in typing.get_args(annotation)]), False
    if annotation in (str, int, float):
        return annotation, False
    if annotation is bool:
        return bool, False
    return str, True  # lists, dicts, models and dates: give them as JSON (dates as "..." strings)


def op_command(tool_name: str, op: Op[Any, Any]) -> click.Command:
    json_fields: set[str] = set()
    params: list[click.Parameter] = []
    for name, field in op.input.model_fields.items():
        params.append(field_option(name, field, json_fields))
    params.append(click.Option(["--json", "as_json"], is_flag=True, help="Print the result as JSON."))
    if op.csv is not None:
        params.append(click.Option(["--csv", "csv_path"], type=click.Path(dir_okay=False), help="Write it as CSV."))

    def callback(as_json: bool, csv_path: str | None = None, **values: Any) -> None:
        arguments = {}
        for name, value in values.items():
            if value is None:
                continue
            if name in json_fields:
                # Not JSON (a bare date, say): validation judges the text as given.
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            arguments[name] = value
        echo = None if as_json else StreamEcho()
        try:
            outcome = anyio.run(run_op, tool_name, arguments, echo)
        except CloudSkillsError as exc:
            fail(exc.message)
        if csv_path is not None and op.csv is not None:
            with open(csv_path, "w", newline="") as handle:
                csv.writer(handle).writerows(op.csv(outcome.output))
            click.echo(f"wrote {csv_path}", err=True)
        print_result(outcome.unwrap(), as_json, echo.shown if echo is not None else None)

    return click.Command(op.name.replace("_", "-"), params=params, callback=callback, help=op.description)


def field_option(name: str, field: FieldInfo, json_fields: set[str]) -> click.Option:
    kind, as_json = click_type(field.annotation)
    if as_json:
        json_fields.add(name)
    flag = f"--{name.replace('_', '-')}"
    help_text = (field.description or "") + (" (JSON)" if as_json else "")
    if kind is bool:
        return click.Option([f"{flag}/--no-{name.replace('_', '-')}", name], default=None, help=help_text)
    return click.Option([flag, name], type=kind, default=None, required=field.is_required(), help=help_text)


class StreamEcho:
    """Prints a command's output as it streams (progress "[stdout] ..." / "[stderr] ..."),
    and remembers what it printed, so the result is not printed twice."""

    def __init__(self) -> None:
        self.shown = {"stdout": "", "stderr": ""}

    async def __call__(self, progress: float, message: str | None) -> None:
        for stream in self.shown:
            prefix = f"[{stream}] "
            if message and message.startswith(prefix):
                text = message[len(prefix) :]
                click.echo(text, nl=False, err=stream == "stderr")
                self.shown[stream] += text


async def run_op(tool_name: str, arguments: dict[str, Any], progress: StreamEcho | None = None) -> TaskOutcome:
    from runtime.app import App

    settings = load_settings()
    app = App(settings)
    try:
        async with app.running(serving=False):
            agent = check_agent(settings.agent)
            return await app.call(settings.tenant, tool_name, arguments, progress=progress, agent=agent)
    finally:
        app.close()


def unshown(text: str, shown: str) -> str:
    return text[len(shown) :] if text.startswith(shown) else text


def print_result(data: dict[str, Any], as_json: bool, streamed: dict[str, str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if "stdout" in data and "exit_code" in data:
        # A command's output reads best as itself (what streamed already shows); the rest goes to stderr.
        streamed = streamed or {"stdout": "", "stderr": ""}
        click.echo(unshown(data["stdout"], streamed["stdout"]), nl=False)
        click.echo(unshown(data["stderr"], streamed["stderr"]), nl=False, err=True)
        cost = data.get("cost", {}).get("amount", "")
        click.echo(f"[exit {data['exit_code']} · {data['duration_ms']} ms · {cost}]", err=True)
        for file in data.get("files", []):
            click.echo(f"--- {file['path']} ({file['size']} bytes)", err=True)
            click.echo(file["content"] if not file.get("error") else file["error"])
        for item in data.get("attachments") or []:
            click.echo(f"--- {item['path']} ({item['mime_type']}, {item['size']} bytes: --json shows it)", err=True)
        if data.get("attachments_note"):
            click.echo(data["attachments_note"], err=True)
        if data.get("process_id"):
            click.echo(f"started in the background as {data['process_id']}", err=True)
        sys.exit(data["exit_code"])
    for key, value in data.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        click.echo(f"{key}: {value}")


class SkillGroup(click.Group):
    """A skill's ops as commands; `write_file` (the tool's spelling) works as well as `write-file`."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name.replace("_", "-"))


def add_skill_commands() -> None:
    for skill in discover().skills:
        group = SkillGroup(skill.name, help=skill.description)
        for op in skill.ops:
            group.add_command(op_command(f"{skill.name}_{op.name}", op))
        main.add_command(group)


add_skill_commands()
register_admin_commands(main)
