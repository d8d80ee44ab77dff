"""Several Docker Engines behind one sandbox driver: placement, routing, engines that go away.

``docker_hosts`` in the settings names the engines (unix sockets, TCP with TLS,
SSH), each with the most sandboxes it may hold. A new sandbox goes to the engine
with the most room left that is neither draining nor down; an engine that does
not answer is passed over at once and tried again after ``RETRY_DOWN_S``. Every
container carries its engine's name (``LABEL_ENGINE``), and every call on a
sandbox goes to the engine that holds it.

An engine that stops answering: its sandboxes are not in any listing, so the
reaper asks each one how it ended (``exit_of``). For ``LOST_AFTER_S`` the answer
is "unknown" (a blip is not a loss); after that each is lost, ended at the last
moment its engine answered, which is where its billing ends. When the engine
comes back, its containers have no live record and the reaper removes them.

The interface is the ``SandboxDriver`` protocol and nothing more, so anything
that can start, reach and remove hardened sandboxes by label could stand behind
it (README "Past one machine": a Kubernetes cluster).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker.errors
import docker.tls
import requests.exceptions

from common.errors import BackendUnavailable, NotFound
from sandbox.docker import DockerDriver
from sandbox.driver import (
    LABEL_STORE,
    AgentRequest,
    AgentResponse,
    LabelledSandbox,
    OutputSink,
    SandboxExit,
    SandboxHandle,
    SandboxSpec,
)

log = logging.getLogger("cloudskills.engines")

LABEL_ENGINE = "cloudskills.engine"
RETRY_DOWN_S = 5.0
LOST_AFTER_S = 15.0
T = TypeVar("T")


@dataclass
class Engine:
    name: str
    driver: DockerDriver
    capacity: int = 32  # sandboxes at most
    draining: bool = False  # takes no new sandboxes; the ones it holds run on
    sandboxes: int = 0  # as last counted (a listing), plus creates and removals since
    down_since: float | None = None  # monotonic; None while it answers
    last_seen: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def room(self) -> int:
        return self.capacity - self.sandboxes


class Engines:
    """The ``SandboxDriver`` of several engines (the first is the default for everything else)."""

    def __init__(self, engines: list[Engine]) -> None:
        if not engines:
            raise ValueError("docker_hosts names no engine")
        self.engines = {engine.name: engine for engine in engines}
        self._where: dict[str, Engine] = {}  # container id -> the engine holding it
        self._lock = threading.Lock()

    @classmethod
    def from_hosts(cls, hosts: list[dict[str, Any]]) -> Engines:
        """From ``Settings.docker_hosts``."""
        engines = []
        for index, host in enumerate(hosts):
            tls = host.get("tls")
            config = None
            if tls:
                pair = (tls["cert"], tls["key"]) if tls.get("cert") else None
                config = docker.tls.TLSConfig(client_cert=pair, ca_cert=tls.get("ca"), verify=bool(tls.get("ca")))
            driver = DockerDriver(host["url"], tls=config)
            name = str(host.get("name") or f"engine-{index}")
            engines.append(Engine(name, driver, int(host.get("capacity", 32)), bool(host.get("drain", False))))
        return cls(engines)

    @property
    def default(self) -> Engine:
        return next(iter(self.engines.values()))

    # -- which engine -----------------------------------------------------------

    def _known(self, container_id: str) -> Engine | None:
        """The engine this process placed or found the container on, if any."""
        with self._lock:
            return self._where.get(container_id)

    def engine_of(self, container_id: str) -> Engine:
        found = self._known(container_id)
        if found is not None:
            return found
        for engine in self.engines.values():
            if engine.down_since is not None:
                continue
            try:
                engine.driver.client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                continue
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                self._down(engine)
                continue
            with self._lock:
                self._where[container_id] = engine
            return engine
        raise NotFound("this sandbox's container is on no engine that answers: destroy it and create a new one.")

    def room_of(self, container_id: str) -> int:
        """Room left on the engine holding the sandbox: a claim takes a warm one where most is."""
        found = self._known(container_id)
        return found.room if found is not None and found.down_since is None else -1

    def is_draining(self, container_id: str) -> bool:
        """Whether the sandbox is on an engine being drained (a warm one there is not handed out)."""
        found = self._known(container_id)
        return found is not None and found.draining

    def placement(self, local_only: bool = False) -> list[Engine]:
        """Where a new sandbox may go, most room first; ``local_only``: engines of this
        machine, for a sandbox that binds this machine's paths (workspaces, egress's socket)."""
        now = time.monotonic()
        usable = [
            engine
            for engine in self.engines.values()
            if not engine.draining
            and engine.room > 0
            and (engine.down_since is None or now - engine.down_since > RETRY_DOWN_S)
            and (engine.driver.local or not local_only)
        ]
        return sorted(usable, key=lambda engine: -engine.room)

    def _down(self, engine: Engine) -> None:
        if engine.down_since is None:
            log.warning("Docker engine %s stopped answering", engine.name)
            engine.down_since = time.monotonic()

    def _on(self, engine: Engine, action: Callable[[DockerDriver], T]) -> T:
        """Run ``action`` on the engine, noting whether it answered."""
        try:
            result = action(engine.driver)
        except BackendUnavailable:
            if not self._answers(engine):
                self._down(engine)
            raise
        engine.down_since, engine.last_seen = None, datetime.now(UTC)
        return result

    @staticmethod
    def _answers(engine: Engine) -> bool:
        try:
            engine.driver.client.api.ping()
            return True
        except (docker.errors.DockerException, requests.exceptions.RequestException, BackendUnavailable):
            return False

    # -- the SandboxDriver protocol ----------------------------------------------

    def create(self, spec: SandboxSpec) -> SandboxHandle:
        tried = []
        local_only = bool(spec.volumes)
        for engine in self.placement(local_only):
            labelled = replace(spec, labels={**spec.labels, LABEL_ENGINE: engine.name})
            try:
                handle = self._create_on(engine, labelled)
            except BackendUnavailable as exc:
                if engine.down_since is None:
                    raise  # the engine answers and refused this sandbox: its reason stands
                tried.append(f"{engine.name} ({exc.message})")
                continue
            with self._lock:
                self._where[handle.container_id] = engine
                engine.sandboxes += 1
            return handle
        why = "; ".join(tried) or (
            "every engine of this machine is full, draining or down, and this sandbox mounts this machine's files"
            if local_only
            else "every engine is full, draining or down"
        )
        raise BackendUnavailable(f"no Docker engine can take a sandbox now ({why}): try again in a minute.")

    def _create_on(self, engine: Engine, spec: SandboxSpec) -> SandboxHandle:
        """Create there; an image the engine lacks is copied from the default engine first."""
        try:
            return self._on(engine, lambda driver: driver.create(spec))
        except BackendUnavailable as exc:
            default = self.default
            if "is not built" not in exc.message or engine is default:
                raise
        log.info("copying image %s to Docker engine %s", spec.image, engine.name)
        copy_image(default.driver, engine.driver, spec.image)
        return self._on(engine, lambda driver: driver.create(spec))

    def call(
        self, handle: SandboxHandle, request: AgentRequest, deadline_s: float, on_output: OutputSink | None = None
    ) -> AgentResponse:
        engine = self.engine_of(handle.container_id)
        return self._on(engine, lambda driver: driver.call(handle, request, deadline_s, on_output))

    def ping(self, handle: SandboxHandle, timeout_s: float = 5.0) -> bool:
        try:
            engine = self.engine_of(handle.container_id)
        except NotFound:
            return False
        return engine.driver.ping(handle, timeout_s)

    def destroy(self, container_id: str) -> None:
        try:
            engine = self.engine_of(container_id)
        except NotFound:
            return  # on no engine that answers: a returning engine's reaper pass removes it
        self._on(engine, lambda driver: driver.destroy(container_id))
        with self._lock:
            if self._where.pop(container_id, None) is not None:
                engine.sandboxes = max(engine.sandboxes - 1, 0)

    def list_labelled(self, labels: dict[str, str]) -> list[LabelledSandbox]:
        """Every engine's that answers (each one's count refreshed: a listing by the store's
        label is the reaper's, once a pass)."""
        found: list[LabelledSandbox] = []
        for engine in self.engines.values():
            try:
                listed = self._on(engine, lambda driver: driver.list_labelled(labels))
            except BackendUnavailable:
                continue
            with self._lock:
                for container in listed:
                    self._where[container.container_id] = engine
            if set(labels) == {LABEL_STORE}:  # all of this store's on that engine: the count
                engine.sandboxes = len(listed)
            found += listed
        return found

    def exit_of(self, container_id: str) -> SandboxExit | None:
        with self._lock:
            engine = self._where.get(container_id)
        if engine is not None and engine.down_since is not None:
            if time.monotonic() - engine.down_since < LOST_AFTER_S:
                raise BackendUnavailable(f"Docker engine {engine.name} is not answering; its sandboxes wait.")
            return SandboxExit(engine.last_seen, f"its Docker engine {engine.name} stopped answering: it is lost")
        try:
            engine = self.engine_of(container_id)
        except NotFound:
            return SandboxExit(datetime.now(UTC), "its container was removed outside cloudskills")
        return self._on(engine, lambda driver: driver.exit_of(container_id))

    def abandon(self, labels: list[str]) -> None:
        for engine in self.engines.values():
            engine.driver.abandon(labels)

    def sweep(self) -> list[str]:
        swept: list[str] = []
        for engine in self.engines.values():
            if engine.down_since is None:
                try:
                    swept += self._on(engine, lambda driver: driver.sweep())
                except BackendUnavailable:
                    continue
        return swept

    def pause_problem(self, container_id: str) -> str | None:
        return self.engine_of(container_id).driver.pause_problem(container_id)

    def pause(self, container_id: str) -> int:
        return self._on(self.engine_of(container_id), lambda driver: driver.pause(container_id))

    def resume(self, container_id: str) -> None:
        self._on(self.engine_of(container_id), lambda driver: driver.resume(container_id))


def copy_image(source: DockerDriver, target: DockerDriver, tag: str) -> None:
    """Stream an image from one engine to another (``docker save | docker load``)."""
    try:
        target.client.api.load_image(source.client.api.get_image(tag))  # type: ignore[no-untyped-call]
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise BackendUnavailable(f"could not copy the sandbox image {tag} to another Docker engine ({exc}).") from exc
