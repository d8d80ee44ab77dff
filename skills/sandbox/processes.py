"""Background processes in a session sandbox: their ops' arguments, results and handlers.

``sandbox_exec`` with ``background: true`` starts one (``ops.exec_``); these ops
list them, read one's output from an offset, and kill one. The output is kept
inside the sandbox, by its agent, never by the server.
"""

from __future__ import annotations

import codecs
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from sandbox.driver import AgentRequest
from sandbox.processes import ProcessInfo, ProcessRequest
from scheduler.tasks import TaskContext
from skills.base import OpInput
from skills.sandbox.manager import SandboxManager
from skills.sandbox.models import SANDBOX_ID

PROCESS_ID = Field(description="The id sandbox_exec returned with background: true, e.g. 'proc_1'.")


class Process(BaseModel):
    process_id: str
    command: str
    pid: int = Field(description="Its process id inside the sandbox.")
    running: bool
    exit_code: int | None = Field(description="Its exit status once it ended; 128+N when killed by signal N.")
    started_at: str
    output_bytes: int = Field(description="Bytes it has written to stdout and stderr so far (the newest 1 MiB kept).")


def process(info: ProcessInfo) -> Process:
    return Process(
        process_id=info.process_id,
        command=info.command,
        pid=info.pid,
        running=info.running,
        exit_code=info.exit_code,
        started_at=datetime.fromtimestamp(info.started_at, UTC).isoformat(),
        output_bytes=info.output_bytes,
    )


class ProcessListInput(OpInput):
    sandbox_id: str = SANDBOX_ID


class ProcessListOutput(BaseModel):
    processes: list[Process]


class ProcessOutputInput(OpInput):
    sandbox_id: str = SANDBOX_ID
    process_id: str = PROCESS_ID
    offset: int = Field(
        default=0, ge=0, description="Where to start in its output (stdout and stderr together, in order)."
    )
    max_bytes: int = Field(default=65536, ge=1, le=1 << 20, description="The most bytes to return.")


class ProcessOutputOutput(BaseModel):
    process: Process
    output: str = Field(
        description="Its stdout and stderr together, in the order written, from `offset`, as UTF-8 text "
        "(bytes that are not UTF-8 shown as U+FFFD)."
    )
    offset: int = Field(description="Where `output` starts; later than asked when older output was dropped.")
    next_offset: int = Field(description="Pass this as `offset` to read on.")
    dropped_bytes: int = Field(description="Bytes asked for that are no longer kept (only the newest 1 MiB is).")
    more: bool = Field(description="Whether more output is already there past next_offset.")


class ProcessKillInput(OpInput):
    sandbox_id: str = SANDBOX_ID
    process_id: str = PROCESS_ID


class ProcessKillOutput(BaseModel):
    process: Process


async def process_call(ctx: TaskContext, sandbox_id: str, request: ProcessRequest) -> tuple[ProcessInfo, ...]:
    sandboxes = ctx.service(SandboxManager)
    record = sandboxes.get(ctx.tenant_id, sandbox_id)
    response = await sandboxes.call(record, AgentRequest(process=request), 30.0)
    assert response.process is not None
    return response.process.processes


async def list_processes(ctx: TaskContext, args: ProcessListInput) -> ProcessListOutput:
    """The sandbox's background processes, running and ended."""
    infos = await process_call(ctx, args.sandbox_id, ProcessRequest("list"))
    return ProcessListOutput(processes=[process(i) for i in infos])


async def process_output(ctx: TaskContext, args: ProcessOutputInput) -> ProcessOutputOutput:
    """A background process's output from an offset."""
    sandboxes = ctx.service(SandboxManager)
    record = sandboxes.get(ctx.tenant_id, args.sandbox_id)
    request = ProcessRequest("output", args.process_id, args.offset, args.max_bytes)
    response = await sandboxes.call(record, AgentRequest(process=request), 30.0)
    assert response.process is not None and response.process.output is not None
    out = response.process.output
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(out.data, final=not out.more and not out.info.running)
    # A character cut at the end is left for the next read, whole.
    pending = len(decoder.getstate()[0])
    return ProcessOutputOutput(
        process=process(out.info),
        output=text,
        offset=out.offset,
        next_offset=out.next_offset - pending,
        dropped_bytes=out.dropped_bytes,
        more=out.more,
    )


async def kill_process(ctx: TaskContext, args: ProcessKillInput) -> ProcessKillOutput:
    """Kill a background process and everything it started (SIGKILL to its process group)."""
    infos = await process_call(ctx, args.sandbox_id, ProcessRequest("kill", args.process_id))
    return ProcessKillOutput(process=process(infos[0]))
