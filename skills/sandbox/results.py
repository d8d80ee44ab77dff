"""What a command in a sandbox gives back beyond its streams: the files it left under
/work/outputs (as MCP image and resource content), and its output while it runs
(as MCP progress notifications)."""

from __future__ import annotations

import codecs
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from pydantic import Field

from sandbox.driver import OutputSink
from sandbox.outputs import CollectedOutputs, OutputCaps
from scheduler.tasks import TaskContext
from skills.commands import ExecOutput
from skills.content import Attachment, attachment

# What one result may carry from /work/outputs.
CAPS = OutputCaps()


class RichOutput(ExecOutput):
    attachments: list[Attachment] = Field(
        default_factory=list,
        description="Files the code wrote or changed under /work/outputs during this call (matplotlib figures "
        "it showed or left open are saved there as PNG): images come back as image content, other files as "
        f"embedded resources; at most {CAPS.max_files} files, {CAPS.max_file_bytes >> 20} MiB each and "
        f"{CAPS.max_total_bytes >> 20} MiB in all.",
    )
    attachments_note: str | None = Field(
        default=None, description="Which files under /work/outputs did not come back, and why."
    )


def attachments_of(collected: CollectedOutputs | None, session: bool) -> dict[str, object]:
    """The attachments fields of a result, from what the agent collected."""
    if collected is None:
        return {}
    found = [attachment(f.path, f.data) for f in collected.files]
    note = None
    if collected.left_out:
        listed = "; ".join(f"{f.path} ({f.size} bytes: {f.reason})" for f in collected.left_out[:20])
        more = f" and {len(collected.left_out) - 20} more" if len(collected.left_out) > 20 else ""
        instead = (
            "read them with sandbox_read_file"
            if session
            else "write fewer or smaller files, or run in a session (sandbox_create) and read them with "
            "sandbox_read_file"
        )
        note = f"{len(collected.left_out)} files under /work/outputs did not come back: {listed}{more}; {instead}."
    return {"attachments": found, "attachments_note": note}


@asynccontextmanager
async def streamed(ctx: TaskContext) -> AsyncIterator[OutputSink | None]:
    """A sink for a command's output that sends it on as MCP progress notifications, each
    message "[stdout] ..." or "[stderr] ..." with whole lines, the progress being the bytes
    sent so far; None when nobody listens. All of it is sent before the context ends."""
    if ctx.progress is None:
        yield None
        return
    send, receive = anyio.create_memory_object_stream[tuple[str, bytes]](math.inf)

    def sink(stream: str, data: bytes) -> None:  # called from the driver's thread
        anyio.from_thread.run_sync(send.send_nowait, (stream, data))

    async def forward() -> None:
        decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
        sent = 0
        async with receive:
            async for stream, data in receive:
                pieces = {stream: [data]}
                while True:  # what came meanwhile goes in the same notification
                    try:
                        more_stream, more = receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    pieces.setdefault(more_stream, []).append(more)
                for name, parts in pieces.items():
                    chunk = b"".join(parts)
                    sent += len(chunk)
                    text = decoders[name].decode(chunk)
                    if text:
                        await ctx.report(sent, f"[{name}] {text}")
        for name, decoder in decoders.items():
            rest = decoder.decode(b"", final=True)
            if rest:
                await ctx.report(sent, f"[{name}] {rest}")

    failed: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(forward)
        try:
            yield sink
        except Exception as exc:
            # Raised as it is once the group ends, not inside an ExceptionGroup: the caller's
            # errors (a sandbox that stopped, ...) must reach the agent as what they are.
            failed = exc
        finally:
            send.close()
    if failed is not None:
        raise failed
