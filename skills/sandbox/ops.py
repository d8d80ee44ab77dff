"""The sandbox skill's handlers: one-call runs and session sandboxes."""

from __future__ import annotations

from dataclasses import replace

import anyio
from opentelemetry import trace

from common.errors import InvalidInput, NotFound
from sandbox.driver import AgentRequest, Command, ExecResult, FileContent, FileRead, FileWrite, Limits
from sandbox.templates import TEMPLATES
from scheduler.pricing import Usage
from scheduler.tasks import TaskContext
from skills.commands import command_timed_out
from skills.content import decode, encode
from skills.sandbox import mounts
from skills.sandbox.manager import SandboxManager
from skills.sandbox.models import (
    CreateInput,
    CreateOutput,
    DestroyInput,
    DestroyOutput,
    Encoding,
    ExecInput,
    ExecOutput,
    FileEntry,
    FileIn,
    FileOut,
    ListFilesInput,
    ListFilesOutput,
    ListInput,
    ListOutput,
    ReadFileInput,
    ReadFileOutput,
    RunCodeInput,
    RunInput,
    RunOutput,
    SandboxInfo,
    SessionExecOutput,
    WriteFileInput,
    WriteFileOutput,
)
from skills.sandbox.network import create_with_network
from skills.sandbox.records import SandboxRecord, usage_for
from skills.sandbox.results import CAPS, RichOutput, attachments_of, streamed
from skills.sandbox.rows import Sandbox
from skills.sandbox.templates_ops import language_of, template_for

# Spans inside a task's own (the process's tracing, when configured, records them; else they cost nothing).
TRACER = trace.get_tracer("cloudskills.sandbox")

# A one-call sandbox lives a little longer than its command: start, files, teardown.
RUN_OVERHEAD_S = 30


def file_write(spec: FileIn) -> FileWrite:
    return FileWrite(path=spec.path, data=decode(spec.content, spec.encoding, spec.path))


def file_out(content: FileContent, wanted: Encoding | None = None) -> FileOut:
    if content.error is not None:
        return FileOut(path=content.path, size=0, content="", encoding="utf-8", error=content.error)
    text, encoding = encode(content.data, wanted)
    return FileOut(path=content.path, size=content.size, content=text, encoding=encoding, truncated=content.truncated)


# What programs print when they try to reach the network, which a sandbox has none of.
NETWORK_FAILURES = (
    "Temporary failure in name resolution",
    "Could not resolve host",
    "Name or service not known",
    "No address associated with hostname",
    "Network is unreachable",
    "getaddrinfo failed",
)
NO_NETWORK = (
    "\n[cloudskills: this sandbox has no network: it can neither resolve names nor reach other hosts, and "
    "retrying will not help. Bring what the code needs in as files (sandbox_write_file), or use the "
    "'dev' template's tools and packages.]\n"
)


def with_network_note(stdout: str, stderr: str) -> str:
    """stderr, with a note that says plainly why a program that tried the network failed."""
    if any(failure in text for failure in NETWORK_FAILURES for text in (stderr, stdout)):
        return stderr + NO_NETWORK
    return stderr


def exec_output(ctx: TaskContext, result: ExecResult, timeout_s: float) -> ExecOutput:
    stdout, stderr = result.stdout.text(), result.stderr.text()
    if result.timed_out:
        raise command_timed_out(timeout_s, stdout, with_network_note(stdout, stderr))
    return ExecOutput(
        exit_code=result.exit_code,
        stdout=stdout,
        stderr=with_network_note(stdout, stderr),
        stdout_truncated=result.stdout.truncated,
        stderr_truncated=result.stderr.truncated,
        duration_ms=result.duration_ms,
    )


def run_command(args: RunInput) -> Command:
    if (args.code is None) == (args.command is None):
        raise InvalidInput("give exactly one of `code` (with `language`) or `command`.")
    if args.command is not None:
        return Command(
            argv=("bash", "-c", args.command),
            timeout_s=args.timeout_s,
            max_output=args.max_output,
            env=args.env,
        )
    return Command(
        code=args.code,
        language=args.language,
        timeout_s=args.timeout_s,
        max_output=args.max_output,
        env=args.env,
        persistent=True,
    )


async def run(ctx: TaskContext, args: RunInput) -> RunOutput:
    """Run code or a command in a fresh sandbox, destroyed afterwards whatever happens."""
    command = run_command(args)
    writes = tuple(file_write(spec) for spec in args.files)
    template = await template_for(ctx, args.template)
    sandboxes = ctx.service(SandboxManager)
    ttl_s = int(args.timeout_s + RUN_OVERHEAD_S)
    with TRACER.start_as_current_span("placement", attributes={"sandbox.template": template.name}) as span:
        volumes = await mounts.volumes_for(ctx, args.workspaces)
        record = await create_with_network(ctx, args.network, template, template.limits, ttl_s, ctx.task_id, volumes)
        span.set_attribute("sandbox.id", record.id)
    try:
        # idle_s: should this process die mid-run, the sandbox ends by itself soon after.
        reads = tuple(FileRead(p) for p in args.outputs)
        request = AgentRequest(writes=writes, command=command, reads=reads, idle_s=RUN_OVERHEAD_S, outputs=CAPS)
        with TRACER.start_as_current_span("exec", attributes={"sandbox.id": record.id}):
            async with streamed(ctx) as sink:
                response = await sandboxes.call(record, request, args.timeout_s, sink)
    finally:
        with anyio.CancelScope(shield=True):
            # Billed up to now; the container is removed off the caller's path, unless it mounts
            # workspaces: they are free again (to delete, restore) once the run has answered.
            ctx.add_usage(await sandboxes.destroy(record.id, "task_done", wait=bool(volumes)))
    assert response.exec is not None
    output = exec_output(ctx, response.exec, args.timeout_s)
    files = [file_out(f) for f in response.reads]
    return RunOutput(**output.model_dump(), files=files, **attachments_of(response.outputs, session=False))


def run_worst_case(args: RunInput) -> Usage:
    # An unknown template is refused when the task runs; its hold is the default size.
    template = TEMPLATES.get(args.template)
    limits = template.limits if template is not None else Limits()
    return usage_for(limits, int((args.timeout_s + RUN_OVERHEAD_S) * 1000))


def row_info(row: Sandbox) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=row.id,
        template=row.template,
        state=row.state,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_mib=row.disk_mib,
        ttl_s=row.ttl_s,
        created_at=row.created_at.isoformat(),
        last_used_at=row.last_used_at.isoformat(),
    )


async def create(ctx: TaskContext, args: CreateInput) -> CreateOutput:
    """Start a session sandbox that lives until destroyed or idle for ttl_s."""
    template = await template_for(ctx, args.template)
    base = template.limits
    limits = replace(
        base,
        vcpus=base.vcpus if args.vcpus is None else args.vcpus,
        memory_mib=base.memory_mib if args.memory_mib is None else args.memory_mib,
        disk_mib=base.disk_mib if args.disk_mib is None else args.disk_mib,
    )
    sandboxes = ctx.service(SandboxManager)
    volumes = await mounts.volumes_for(ctx, args.workspaces)
    record = await create_with_network(ctx, args.network, template, limits, args.ttl_s, None, volumes)
    return CreateOutput(**row_info(sandboxes.row(record.id)).model_dump())


async def session_call(
    ctx: TaskContext, sandbox_id: str, request: AgentRequest, deadline_s: float = 60.0
) -> tuple[SandboxRecord, ExecResult | None, tuple[FileContent, ...], tuple[FileEntry, ...]]:
    sandboxes = ctx.service(SandboxManager)
    record = sandboxes.get(ctx.tenant_id, sandbox_id)
    response = await sandboxes.call(record, request, deadline_s)
    entries = tuple(FileEntry(name=e.name, path=e.path, type=e.type, size=e.size) for e in response.listing)
    return record, response.exec, response.reads, entries


async def session_exec(ctx: TaskContext, record: SandboxRecord, command: Command) -> RichOutput:
    """Run a command in a session sandbox, its output streamed to a caller that listens,
    with what it left under /work/outputs."""
    sandboxes = ctx.service(SandboxManager)
    async with streamed(ctx) as sink:
        response = await sandboxes.call(record, AgentRequest(command=command, outputs=CAPS), command.timeout_s, sink)
    assert response.exec is not None
    output = exec_output(ctx, response.exec, command.timeout_s)
    return RichOutput(**output.model_dump(), **attachments_of(response.outputs, session=True))


async def exec_(ctx: TaskContext, args: ExecInput) -> SessionExecOutput:
    """Run a shell command in a session sandbox, or start it in the background."""
    command = Command(
        argv=("bash", "-c", args.command),
        timeout_s=args.timeout_s,
        max_output=args.max_output,
        env=args.env,
        cwd=args.cwd,
        background=args.background,
    )
    record = ctx.service(SandboxManager).get(ctx.tenant_id, args.sandbox_id)
    if not args.background:
        return SessionExecOutput(**(await session_exec(ctx, record, command)).model_dump())
    response = await ctx.service(SandboxManager).call(record, AgentRequest(command=command), 30.0)
    assert response.process is not None
    started = response.process.processes[0]
    empty = {"stdout_truncated": False, "stderr_truncated": False, "duration_ms": 0}
    return SessionExecOutput(exit_code=0, stdout="", stderr="", **empty, process_id=started.process_id)


async def run_code(ctx: TaskContext, args: RunCodeInput) -> RichOutput:
    """Run code in a session sandbox, in the template's language unless told otherwise."""
    record = ctx.service(SandboxManager).get(ctx.tenant_id, args.sandbox_id)
    language = args.language or language_of(ctx, record.template)
    command = Command(
        code=args.code, language=language, timeout_s=args.timeout_s, max_output=args.max_output, persistent=True
    )
    return await session_exec(ctx, record, command)


async def write_file(ctx: TaskContext, args: WriteFileInput) -> WriteFileOutput:
    """Write a file into a session sandbox."""
    data = decode(args.content, args.encoding, args.path)
    request = AgentRequest(writes=(FileWrite(path=args.path, data=data),), list_path=None)
    await session_call(ctx, args.sandbox_id, request)
    path = args.path if args.path.startswith("/") else f"/work/{args.path}"
    return WriteFileOutput(path=path, size=len(data))


async def read_file(ctx: TaskContext, args: ReadFileInput) -> ReadFileOutput:
    """Read a file from a session sandbox."""
    request = AgentRequest(reads=(FileRead(args.path, args.max_bytes),))
    _, _, reads, _ = await session_call(ctx, args.sandbox_id, request)
    out = file_out(reads[0], args.encoding)
    return ReadFileOutput(**out.model_dump())


async def list_files(ctx: TaskContext, args: ListFilesInput) -> ListFilesOutput:
    """List a directory of a session sandbox."""
    _, _, _, entries = await session_call(ctx, args.sandbox_id, AgentRequest(list_path=args.path))
    return ListFilesOutput(path=args.path, entries=list(entries))


async def list_(ctx: TaskContext, args: ListInput) -> ListOutput:
    """The caller's live session sandboxes."""
    rows = ctx.service(SandboxManager).list_live(ctx.tenant_id)
    return ListOutput(sandboxes=[row_info(r) for r in rows])


async def destroy(ctx: TaskContext, args: DestroyInput) -> DestroyOutput:
    """Destroy a session sandbox and bill its lifetime; destroying it again is fine."""
    sandboxes = ctx.service(SandboxManager)
    try:
        record = sandboxes.get(ctx.tenant_id, args.sandbox_id, paused_ok=True)
    except NotFound:
        if not sandboxes.owns(ctx.tenant_id, args.sandbox_id):
            raise
        return DestroyOutput(sandbox_id=args.sandbox_id, destroyed=False)
    with anyio.CancelScope(shield=True):
        await sandboxes.destroy(record.id, "destroyed_by_owner")
    return DestroyOutput(sandbox_id=args.sandbox_id, destroyed=True)
