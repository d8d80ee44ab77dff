"""How a sandbox's container ended, and what its agent answered, in the engine's and the agent's words."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from common.errors import CloudSkillsError, InvalidInput, NotFound
from sandbox.driver import AgentResponse

# How the agent exits when it ends by itself (keep in sync with sandbox/agent/lifetime.py).
EXIT_IDLE = 75
EXIT_RELEASED = 76


def exit_cause(state: dict[str, Any]) -> str:
    if state.get("OOMKilled"):
        return "it ran out of memory"
    if state.get("ExitCode") == EXIT_IDLE:
        return "it expired: idle for its ttl_s"
    if state.get("ExitCode") == EXIT_RELEASED:
        return "the server that held it went away before handing it over"
    return f"its container exited with code {state.get('ExitCode')}, out of memory or processes"


def docker_time(text: str | None) -> datetime:
    """Docker's RFC 3339 time with nanoseconds (or its zero time: now)."""
    if not text or text.startswith("0001-"):
        return datetime.now(UTC)
    head, _, fraction = text.rstrip("Z").partition(".")
    micros = (fraction + "000000")[:6]
    return datetime.fromisoformat(f"{head}.{micros}+00:00")


def parse_agent_answer(wire: dict[str, Any], blobs: list[bytes]) -> AgentResponse:
    if not wire.get("ok"):
        kind = wire.get("kind")
        message = str(wire.get("error", "the sandbox refused the request"))
        error: CloudSkillsError = NotFound(message) if kind == "not_found" else InvalidInput(message)
        raise error
    return AgentResponse.from_wire(wire, blobs)
