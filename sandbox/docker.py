"""Sandboxes as hardened containers on a Docker Engine (the default driver).

Every container is started locked down, its limits visible inside
(``sandbox/hardening.py``), with ``/work`` and ``/tmp`` on a capped disk of its
own (``sandbox/disks.py``). Its entry process is the resident exec agent;
requests reach it over the container's attached stdio (see
``sandbox/attach.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import docker.tls
import requests.exceptions

from common.errors import BackendUnavailable, CloudSkillsError, NotFound, TaskFailed
from sandbox.attach import Channel, ChannelBroken, StreamedOutput, answer_in, read_stream
from sandbox.checkpoint import checkpoint, pause_problem, restore
from sandbox.disks import LoopDisks
from sandbox.driver import (
    LABEL_MANAGED,
    LABEL_SANDBOX,
    AgentRequest,
    AgentResponse,
    LabelledSandbox,
    OutputSink,
    SandboxExit,
    SandboxHandle,
    SandboxSpec,
)
from sandbox.exits import EXIT_IDLE, docker_time, exit_cause, parse_agent_answer
from sandbox.hardening import CpuPlacement, host_config, lxcfs_serves
from sandbox.janitor import leave_to_janitor
from sandbox.sweep import sweep_engine

log = logging.getLogger("cloudskills.docker")

AGENT_DIR = "/opt/cloudskills"
AGENT_PATH = f"{AGENT_DIR}/agent.py"
SANDBOX_USER = "1000:1000"
WORK_DIR = "/work"
# Time allowed beyond a command's own timeout for the agent to answer.
DEADLINE_GRACE_S = 15.0
# The longest a removal someone else started is waited for (a gVisor container takes
# about a second; a loaded engine, more), and how often Docker is asked meanwhile.
REMOVAL_WAIT_S = 60
REMOVAL_LOOK_EVERY_S = 0.05
DEFAULT_DISK_ROOT = Path("/var/lib/cloudskills/disks")


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

    def __init__(
        self, base_url: str | None = None, disk_root: Path | None = None, tls: docker.tls.TLSConfig | None = None
    ) -> None:
        self._base_url = base_url
        self._tls = tls  # for an engine over TCP
        self._client: docker.DockerClient | None = None
        self._channels: dict[str, Channel] = {}
        self._channels_lock = threading.Lock()
        # Sandboxes this process started, and so holds the agent's stdin of.
        self._attached: set[str] = set()
        self._disk_root = disk_root or DEFAULT_DISK_ROOT
        self._disks: LoopDisks | bool | None = False  # False: not looked at yet
        self._cpus: int | None = None
        self._placement = CpuPlacement()

    @property
    def client(self) -> docker.DockerClient:
        """Connected on first use, so a server starts (and says what is wrong) without an engine."""
        if self._client is None:
            try:
                if self._base_url:
                    # ssh:// through the system's ssh client (key login, a known host), not paramiko.
                    self._client = docker.DockerClient(
                        base_url=self._base_url,
                        timeout=120,
                        tls=self._tls or False,
                        use_ssh_client=self._base_url.startswith("ssh://"),
                    )
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

    @property
    def local(self) -> bool:
        """Whether the engine runs on this machine (its binds are our paths)."""
        url = self._base_url or os.environ.get("DOCKER_HOST") or "unix://"
        return url.startswith(("unix://", "npipe://"))

    @property
    def disks(self) -> LoopDisks | None:
        """Capped loop-device disks, where this process can make them; else None (tmpfs)."""
        if self._disks is False:
            why = LoopDisks.usable() if self.local else "the Docker Engine is on another machine"
            if why is not None:
                log.warning("sandbox disks fall back to a tmpfs (counted against memory): %s", why)
            self._disks = LoopDisks(self._disk_root) if why is None else None
        return cast(LoopDisks | None, self._disks)

    def disk_backing(self) -> str:
        """How /work and /tmp are backed here, in words (for `cloudskills doctor`)."""
        if self.disks is not None:
            return f"an ext4 disk of its own per sandbox, capped at its disk_mib (loop devices, {self._disk_root})"
        why = LoopDisks.usable() if self.local else "the Docker Engine is on another machine"
        return f"a tmpfs counted against memory, because {why}"

    def _host_cpus(self) -> int:
        """The engine's CPU count (0 when it cannot say)."""
        if self._cpus is None:
            try:
                self._cpus = int(self._api.info().get("NCPU") or 0)
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                return 0
        return self._cpus

    def create(self, spec: SandboxSpec) -> SandboxHandle:
        name = f"cloudskills-{spec.labels.get(LABEL_SANDBOX, 'sandbox')}"
        disks = self.disks
        # A gVisor sandbox may be paused: its disk must outlive its container's run.
        keep = spec.runtime == "runsc"
        disk = disks.prepare(name, spec.limits.disk_mib, keep=keep) if disks is not None else None
        try:
            return self._create(spec, name, disk)
        finally:
            if disks is not None and disk is not None:
                # Started (the container holds its disk) or failed: the host lets go.
                disks.release(disk)

    def _create(self, spec: SandboxSpec, name: str, disk: Path | None) -> SandboxHandle:
        cpus = self._host_cpus()
        cpuset = self._placement.cpuset(spec.limits.vcpus, cpus) if cpus else None
        lxcfs = self.local and lxcfs_serves()
        config = self._api.create_host_config(**host_config(spec, disk, cpuset, lxcfs))
        try:
            created = self._api.create_container(
                spec.image,
                command=["python3", AGENT_PATH, "serve"],
                stdin_open=True,  # and StdinOnce: when this process lets go, the agent's stdin ends
                user=SANDBOX_USER,
                working_dir=WORK_DIR,
                hostname="sandbox",
                environment={
                    "HOME": WORK_DIR,
                    "LANG": "C.UTF-8",
                    "CLOUDSKILLS_HOLD_S": f"{spec.hold_s:g}",
                    **spec.env,
                },
                labels={LABEL_MANAGED: "1", **spec.labels, **spec.volume_labels()},
                host_config=config,
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

    def call(
        self, handle: SandboxHandle, request: AgentRequest, deadline_s: float, on_output: OutputSink | None = None
    ) -> AgentResponse:
        """Send one request: over the attached channel if this process started the
        sandbox, else through `docker exec` of the agent's relay (any other process).
        Over the channel a command's output streams to ``on_output``; either way it
        is given the rest from the answer, so what it got adds up to the output."""
        timeout_s = deadline_s + DEADLINE_GRACE_S
        header, blobs = request.to_wire()
        sink = StreamedOutput(on_output) if on_output is not None and "exec" in header else None
        if handle.container_id not in self._attached:
            response = parse_agent_answer(*self._relay(handle.container_id, header, blobs, timeout_s))
        else:
            if sink is not None:
                header["exec"]["stream"] = True
            try:
                answer = self._channel(handle.container_id).request(header, timeout_s, blobs, sink)
            except ChannelBroken as exc:
                self._forget(handle.container_id)
                raise NotFound(self._stopped_reason(handle.container_id, str(exc))) from exc
            response = parse_agent_answer(*answer)
        if sink is not None and response.exec is not None:
            sink.finish(response.exec.stdout.data, response.exec.stderr.data)
        return response

    def exit_of(self, container_id: str) -> SandboxExit | None:
        try:
            state = self._api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return SandboxExit(datetime.now(UTC), "its container was removed outside cloudskills")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise docker_unavailable(exc) from exc
        if state.get("Running"):
            return None
        expired = state.get("ExitCode") == EXIT_IDLE and not state.get("OOMKilled")
        return SandboxExit(docker_time(state.get("FinishedAt")), exit_cause(state), expired=expired)

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

    def _relay(
        self, container_id: str, header: dict[str, Any], blobs: list[bytes], timeout_s: float
    ) -> tuple[dict[str, Any], list[bytes]]:
        with reaching_sandbox("run in"):
            exec_id = self._api.exec_create(
                container_id, ["python3", AGENT_PATH, "relay"], stdin=True, user=SANDBOX_USER, workdir=WORK_DIR
            )["Id"]
            sock = self._api.exec_start(exec_id, socket=True)
        raw = cast(socket.socket, getattr(sock, "_sock", sock))
        try:
            raw.settimeout(timeout_s)
            raw.sendall(json.dumps(header, ensure_ascii=True).encode() + b"\n")
            for blob in blobs:
                raw.sendall(blob)
            raw.shutdown(socket.SHUT_WR)
            stdout, stderr = read_stream(raw)
        except TimeoutError as exc:
            raise TaskFailed("the sandbox stopped answering: destroy it and create a new one.") from exc
        except OSError as exc:
            raise TaskFailed(f"the connection to the sandbox broke ({exc}): try again.") from exc
        finally:
            raw.close()
        try:
            return answer_in(stdout)
        except (ValueError, EOFError, struct.error) as exc:
            detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
            raise TaskFailed(
                f"the sandbox's agent did not answer ({detail[0][:200]}): destroy the sandbox and create a new one."
            ) from exc

    def ping(self, handle: SandboxHandle, timeout_s: float = 5.0) -> bool:
        """Whether the sandbox's agent answers (a readiness check, and a held sandbox's heartbeat)."""
        try:
            return bool(self._channel(handle.container_id).request({}, timeout_s)[0].get("ok"))
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

    def pause_problem(self, container_id: str) -> str | None:
        try:
            runtime = self._api.inspect_container(container_id).get("HostConfig", {}).get("Runtime")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            return f"the engine cannot be asked about it now ({exc})"
        return pause_problem(self._api, str(runtime) if runtime else None, self.local)

    def pause(self, container_id: str) -> int:
        """Checkpoint the sandbox to disk and stop it (``sandbox/checkpoint.py``); the
        checkpoint's bytes (0: unknown). From now on only its agent's socket reaches it."""
        self._forget(container_id)
        return checkpoint(self._api, container_id)

    def resume(self, container_id: str) -> None:
        """Restore a paused sandbox from its checkpoint, its kept disk mounted again first."""
        disks, name = self.disks, self._name_of(container_id)
        mount_point = disks.remount(name) if disks is not None and name and disks.kept(name) else None
        try:
            restore(self._api, container_id)
        finally:
            if disks is not None and mount_point is not None:
                disks.release(mount_point)  # the restored container holds it now

    def _name_of(self, container_id: str) -> str | None:
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            return str(self._api.inspect_container(container_id)["Name"]).lstrip("/")
        return None

    def destroy(self, container_id: str) -> None:
        """Kill and remove the container (and its kept disk); one that is already gone is fine."""
        self._forget(container_id)
        disks = self.disks
        name = self._name_of(container_id) if disks is not None and disks.kept_names() else None
        try:
            self._remove(container_id)
        finally:
            if disks is not None and name is not None:
                disks.discard(name)

    def _remove(self, container_id: str) -> None:
        """Remove it, and return only once it is gone: where another removal (the reaper's,
        a replica's) is under way, Docker answers 409 at once, so ask again until it is
        gone (a workspace it bound is free only then). Asking again, rather than waiting on
        Docker's "removed" condition, which also ends when that removal failed."""
        deadline = time.monotonic() + REMOVAL_WAIT_S
        while True:
            try:
                self._api.remove_container(container_id, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise BackendUnavailable(f"Docker could not remove the sandbox: {exc.explanation}.") from exc
            except requests.exceptions.RequestException as exc:
                raise docker_unavailable(exc) from exc
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"Docker is still removing the sandbox's container after {REMOVAL_WAIT_S} s; its record "
                    "has ended and the reaper removes the container, so retry in a minute."
                )
            time.sleep(REMOVAL_LOOK_EVERY_S)

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
                checkpointed=c.get("State") == "exited" and str(c.get("Status", "")).startswith("Exited (0)"),
            )
            for c in found
        ]

    def abandon(self, labels: list[str]) -> None:
        leave_to_janitor(self._base_url, labels)

    def sweep(self) -> list[str]:
        """Remove what a killed process left half set up (``sandbox/sweep.py``)."""
        try:
            return sweep_engine(self._api, self.disks, self.destroy)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise docker_unavailable(exc) from exc
