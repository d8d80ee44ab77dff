"""An in-memory sandbox driver behind the same port as Docker's, for the fast tier.

It keeps "containers" in a dict, answers every command with exit 0 and what it
was asked to echo, and can be told a container died. The same paths run on the
real engine in tests/skills and tests/e2e.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from common.errors import NotFound
from sandbox.driver import (
    AgentRequest,
    AgentResponse,
    ExecResult,
    LabelledSandbox,
    OutputSink,
    SandboxExit,
    SandboxHandle,
    SandboxSpec,
    StreamOutput,
)


class MemoryDriver:
    def __init__(self) -> None:
        self.labels: dict[str, dict[str, str]] = {}
        self.died: dict[str, SandboxExit] = {}
        self.abandoned: list[str] = []  # labels of containers left to a janitor
        self.requests: list[AgentRequest] = []

    def create(self, spec: SandboxSpec) -> SandboxHandle:
        container_id = uuid.uuid4().hex
        self.labels[container_id] = dict(spec.labels)
        return SandboxHandle(container_id=container_id, name=f"memory-{container_id[:8]}")

    def call(
        self, handle: SandboxHandle, request: AgentRequest, deadline_s: float, on_output: OutputSink | None = None
    ) -> AgentResponse:
        if handle.container_id in self.died or handle.container_id not in self.labels:
            raise NotFound("this sandbox has stopped: destroy it and create a new one.")
        self.requests.append(request)
        out = StreamOutput(data=b"ok\n", total_bytes=3, truncated=False)
        empty = StreamOutput(data=b"", total_bytes=0, truncated=False)
        result = ExecResult(exit_code=0, timed_out=False, duration_ms=1, stdout=out, stderr=empty)
        return AgentResponse(exec=result if request.command else None, reads=(), listing=())

    def ping(self, handle: SandboxHandle, timeout_s: float = 5.0) -> bool:
        return handle.container_id in self.labels and handle.container_id not in self.died

    def destroy(self, container_id: str) -> None:
        self.labels.pop(container_id, None)
        self.died.pop(container_id, None)

    def list_labelled(self, labels: dict[str, str]) -> list[LabelledSandbox]:
        return [
            LabelledSandbox(container_id=cid, labels=dict(own), running=cid not in self.died)
            for cid, own in self.labels.items()
            if all(own.get(k) == v for k, v in labels.items())
        ]

    def exit_of(self, container_id: str) -> SandboxExit | None:
        if container_id not in self.labels:
            return SandboxExit(datetime.now(UTC), "its container was removed outside cloudskills")
        return self.died.get(container_id)

    def abandon(self, labels: list[str]) -> None:
        self.abandoned.extend(labels)

    def sweep(self) -> list[str]:
        return []

    def pause_problem(self, container_id: str) -> str | None:
        return "the fake engine cannot checkpoint"

    def pause(self, container_id: str) -> int:
        raise AssertionError("the fake engine cannot checkpoint")

    def resume(self, container_id: str) -> None:
        raise AssertionError("the fake engine cannot checkpoint")

    def kill(self, container_id: str) -> None:
        """The container dies on its own, as an out-of-memory kill would end it."""
        self.died[container_id] = SandboxExit(datetime.now(UTC), "it ran out of memory")

    def expire(self, container_id: str, at: datetime) -> None:
        """The sandbox ended by itself at ``at``, idle past its limit, as no server was alive."""
        self.died[container_id] = SandboxExit(at, "it expired: idle for its ttl_s", expired=True)
