"""Sandboxes as hardened containers on a Docker Engine (the default driver).

Every container is started locked down: no network, a non-root user, a
read-only root with tmpfs work and temp dirs, all capabilities dropped,
no-new-privileges, and pids, memory and CPU limits. Its entry process is the
resident exec agent; requests reach it over the container's attached stdio
(see ``sandbox/attach.py``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import docker
import docker.errors
import requests.exceptions

from common.errors import BackendUnavailable, CloudSkillsError, InvalidInput, NotFound, TaskFailed
from sandbox.attach import MAX_FRAME_BYTES, Channel, ChannelBroken
from sandbox.driver import (
    LABEL_MANAGED,
    LABEL_SANDBOX,
    AgentRequest,
    AgentResponse,
    LabelledSandbox,
    SandboxExit,
    SandboxHandle,
    SandboxSpec,
)

AGENT_DIR = "/opt/cloudskills"
AGENT_PATH = f"{AGENT_DIR}/agent.py"
SANDBOX_USER = "1000:1000"
WORK_DIR = "/work"
# Time allowed beyond a command's own timeout for the agent to answer.
DEADLINE_GRACE_S = 15.0


def docker_unavailable(exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(
        f"the Docker Engine is not reachable ({type(exc).__name__}); "
        "start it with `scripts/ensure-docker` (or your system's service manager) and try again."
    )


@contextlib.contextmanager
def reaching_sandbox(action: str) -> Iterator[None]:
    """Docker's answers about a running sandbox, as our errors."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise NotFound("this sandbox no longer exists: create a new one.") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise NotFound("this sandbox has stopped: destroy it and create a new one.") from exc
        raise BackendUnavailable(f"Docker refused to {action} the sandbox: {exc.explanation}.") from exc
    except requests.exceptions.RequestException as exc:
        raise docker_unavailable(exc) from exc


class DockerDriver:
    """Talks to one Docker Engine through the `docker` SDK (blocking calls)."""

    def __init__(self, base_url: str | None = None) -> None:
        self._base_url = base_url
        self._client: docker.DockerClient | None = None
        self._channels: dict[str, Channel] = {}
        self._channels_lock = threading.Lock()
        # Sandboxes this process started, and so holds the agent's stdin of.
        self._attached: set[str] = set()

    @property
    def client(self) -> docker.DockerClient:
        """Connected on first use, so a server starts (and says what is wrong) without an engine."""
        if self._client is None:
            try:
                if self._base_url:
                    self._client = docker.DockerClient(base_url=self._base_url, timeout=120)
                else:
                    self._client = docker.from_env(timeout=120)
            except docker.errors.DockerException as exc:
                raise docker_unavailable(exc) from exc
        return self._client

    @property
    def _api(self) -> docker.APIClient:
        return self.client.api

    def version(self) -> str:
        try:
            return str(self._api.version()["Version"])
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise docker_unavailable(exc) from exc

    def create(self, spec: SandboxSpec) -> SandboxHandle:
        limits = spec.limits
        memory = f"{limits.memory_mib}m"
        host_config = self._api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={
                WORK_DIR: f"rw,exec,nosuid,nodev,size={limits.disk_mib}m,uid=1000,gid=1000,mode=0755",
                "/tmp": "rw,exec,nosuid,nodev,size=64m,mode=1777",
            },
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=limits.pids,
            mem_limit=memory,
            memswap_limit=memory,
            nano_cpus=int(limits.vcpus * 1e9),
            init=True,
            ipc_mode="private",
            runtime=spec.runtime,
        )
        name = f"cloudskills-{spec.labels.get(LABEL_SANDBOX, 'sandbox')}"
        try:
            created = self._api.create_container(
                spec.image,
                command=["python3", AGENT_PATH, "serve"],
                stdin_open=True,
                user=SANDBOX_USER,
                working_dir=WORK_DIR,
                hostname="sandbox",
                environment={"HOME": WORK_DIR, "LANG": "C.UTF-8"},
                labels={LABEL_MANAGED: "1", **spec.labels},
                host_config=host_config,
                name=name,
                network_disabled=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise BackendUnavailable(
                f"the sandbox image {spec.image} is not built: run `cloudskills images build` and try again."
            ) from exc
        except docker.errors.APIError as exc:
            raise BackendUnavailable(f"Docker refused to create the sandbox: {exc.explanation}.") from exc
        except requests.exceptions.RequestException as exc:
            raise docker_unavailable(exc) from exc
        container_id = str(created["Id"])
        try:
            self._attached.add(container_id)
            self._channel(container_id)  # attach before start: the agent's stdin is ours
            self._api.start(container_id)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            self.destroy(container_id)
            raise BackendUnavailable(f"Docker could not start the sandbox: {exc}.") from exc
        return SandboxHandle(container_id=container_id, name=name)

    def call(self, handle: SandboxHandle, request: AgentRequest, deadline_s: float) -> AgentResponse:
        """Send one request: over the attached channel if this process started the
        sandbox, else through `docker exec` of the agent's relay (any other process)."""
        timeout_s = deadline_s + DEADLINE_GRACE_S
        if handle.container_id not in self._attached:
            return parse_agent_answer(self._relay(handle.container_id, request.to_wire(), timeout_s))
        try:
            wire = self._channel(handle.container_id).request(request.to_wire(), timeout_s)
        except ChannelBroken as exc:
            self._forget(handle.container_id)
            raise NotFound(self._stopped_reason(handle.container_id, str(exc))) from exc
        return parse_agent_answer(wire)

    def exit_of(self, container_id: str) -> SandboxExit | None:
        try:
            state = self._api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return SandboxExit(datetime.now(UTC), "its container was removed outside cloudskills")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise docker_unavailable(exc) from exc
        if state.get("Running"):
            return None
        return SandboxExit(docker_time(state.get("FinishedAt")), exit_cause(state))

    def _stopped_reason(self, container_id: str, detail: str) -> str:
        """Why a sandbox stopped answering, as far as the engine can tell."""
        try:
            state = self._api.inspect_container(container_id)["State"]
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return f"this sandbox has stopped ({detail}): destroy it and create a new one."
        cause = "its agent was killed" if state.get("Running") else exit_cause(state)
        return (
            f"this sandbox has stopped while running your command ({cause}): destroy it and create "
            "a new one, and start fewer processes or use less memory."
        )

    def _relay(self, container_id: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        with reaching_sandbox("run in"):
            exec_id = self._api.exec_create(
                container_id, ["python3", AGENT_PATH, "relay"], stdin=True, user=SANDBOX_USER, workdir=WORK_DIR
            )["Id"]
            sock = self._api.exec_start(exec_id, socket=True)
        raw = cast(socket.socket, getattr(sock, "_sock", sock))
        try:
            raw.settimeout(timeout_s)
            raw.sendall(json.dumps(payload).encode())
            raw.shutdown(socket.SHUT_WR)
            stdout, stderr = read_stream(raw)
        except TimeoutError as exc:
            raise TaskFailed("the sandbox stopped answering: destroy it and create a new one.") from exc
        except OSError as exc:
            raise TaskFailed(f"the connection to the sandbox broke ({exc}): try again.") from exc
        finally:
            raw.close()
        try:
            return dict(json.loads(stdout))
        except ValueError as exc:
            detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
            raise TaskFailed(
                f"the sandbox's agent did not answer ({detail[0][:200]}): destroy the sandbox and create a new one."
            ) from exc

    def ping(self, handle: SandboxHandle, timeout_s: float = 5.0) -> bool:
        """Whether the sandbox's agent answers (a readiness check)."""
        try:
            return bool(self._channel(handle.container_id).request({}, timeout_s).get("ok"))
        except (ChannelBroken, CloudSkillsError):
            self._forget(handle.container_id)
            return False

    def _channel(self, container_id: str) -> Channel:
        with self._channels_lock:
            channel = self._channels.get(container_id)
            if channel is not None and not channel.closed:
                return channel
            with reaching_sandbox("attach to"):
                # Explicit detach keys: a user's Docker config could name printable ones.
                params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1, "detachKeys": "ctrl-_"}
                sock = self._api.attach_socket(container_id, params=params)
            # Over a unix socket the SDK hands back a SocketIO; we want the socket itself.
            channel = Channel(cast(socket.socket, getattr(sock, "_sock", sock)), owner=sock)
            self._channels[container_id] = channel
            return channel

    def _forget(self, container_id: str) -> None:
        with self._channels_lock:
            channel = self._channels.pop(container_id, None)
            self._attached.discard(container_id)
        if channel is not None:
            channel.close()

    def destroy(self, container_id: str) -> None:
        """Kill and remove the container; one that is already gone is fine."""
        self._forget(container_id)
        try:
            self._api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # removal already in progress
                return
            raise BackendUnavailable(f"Docker could not remove the sandbox: {exc.explanation}.") from exc
        except requests.exceptions.RequestException as exc:
            raise docker_unavailable(exc) from exc

    def list_labelled(self, labels: dict[str, str]) -> list[LabelledSandbox]:
        filters = [f"{LABEL_MANAGED}=1", *(f"{key}={value}" for key, value in labels.items())]
        try:
            found = self._api.containers(all=True, filters={"label": filters})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise docker_unavailable(exc) from exc
        return [
            LabelledSandbox(
                container_id=str(c["Id"]),
                labels=dict(c.get("Labels") or {}),
                running=c.get("State") == "running",
            )
            for c in found
        ]


def exit_cause(state: dict[str, Any]) -> str:
    if state.get("OOMKilled"):
        return "it ran out of memory"
    return f"its container exited with code {state.get('ExitCode')}, out of memory or processes"


def docker_time(text: str | None) -> datetime:
    """Docker's RFC 3339 time with nanoseconds (or its zero time: now)."""
    if not text or text.startswith("0001-"):
        return datetime.now(UTC)
    head, _, fraction = text.rstrip("Z").partition(".")
    micros = (fraction + "000000")[:6]
    return datetime.fromisoformat(f"{head}.{micros}+00:00")


def read_stream(raw: socket.socket) -> tuple[bytes, bytes]:
    """Read Docker's multiplexed exec stream (8-byte header per chunk) to its end."""
    out, err = bytearray(), bytearray()
    while header := recv_exactly(raw, 8):
        stream, size = struct.unpack(">BxxxL", header)
        (out if stream == 1 else err).extend(recv_exactly(raw, size))
        if len(out) + len(err) > MAX_FRAME_BYTES:
            raise TaskFailed("the sandbox sent more than it may: ask for less output and try again.")
    return bytes(out), bytes(err)


def recv_exactly(raw: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = raw.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            break
        chunks.extend(chunk)
    return bytes(chunks)


def parse_agent_answer(wire: dict[str, Any]) -> AgentResponse:
    if not wire.get("ok"):
        kind = wire.get("kind")
        message = str(wire.get("error", "the sandbox refused the request"))
        error: CloudSkillsError = NotFound(message) if kind == "not_found" else InvalidInput(message)
        raise error
    return AgentResponse.from_wire(wire)
