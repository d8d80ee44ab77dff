"""A sandbox's egress allow-list: the ``network`` argument of sandbox_create and sandbox_run.

No ``network`` (the default): no network at all. With ``{"allow": [...]}``
the sandbox is started with its proxy's socket bound in and the proxy's
address in its environment (``sandbox/egress.py``), its policy recorded
(``SandboxNetwork``), then the forwarder inside is started before any command
runs. The proxies of this server's live sandboxes are kept in step with the
records (``serve``): started again after a restart, closed and removed once
their sandbox has ended.
"""

from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio
import docker.errors
import requests.exceptions
from pydantic import BaseModel, Field
from sqlalchemy import select

from common.errors import BackendUnavailable, CloudSkillsError, InvalidInput
from sandbox.docker import DockerDriver
from sandbox.driver import Limits, VolumeMount
from sandbox.egress import FORWARDER, PROXY_ENV, SOCKET_DIR, SOCKET_NAME, EgressProxy, Policy, Rule, socket_root
from sandbox.templates import Template
from scheduler.store import Store
from scheduler.tasks import TaskContext
from skills.sandbox.manager import SandboxManager
from skills.sandbox.network_rows import SandboxNetwork
from skills.sandbox.records import LIVE_STATES, SandboxRecord
from skills.sandbox.rows import Sandbox

log = logging.getLogger("cloudskills.egress")
RECONCILE_S = 1.0


class NetworkPolicy(BaseModel):
    allow: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="host:port the sandbox may connect to, e.g. 'pypi.org:443', '*.example.org:443', "
        "'10.1.2.0/24:5432' (port '*': any); through the proxy its HTTP_PROXY/HTTPS_PROXY name. Nothing else "
        "is reachable.",
    )


NETWORK = Field(
    default=None,
    description="Egress: {'allow': ['host:port', ...]}. Default: no network at all.",
)


@dataclass(frozen=True)
class EgressPlan:
    """What a sandbox with an allow-list is started with, and its proxy (already listening)."""

    policy: Policy
    proxy: EgressProxy
    volume: VolumeMount
    env: dict[str, str]


class Egress:
    """The egress proxies of this server's sandboxes."""

    def __init__(self, store: Store, docker: DockerDriver, cap: list[str] | None = None) -> None:
        self.store = store
        self.docker = docker
        self.cap = cap
        self.proxies: dict[str, EgressProxy] = {}  # by sandbox id

    async def plan(self, network: NetworkPolicy | None, template: Template, image: str) -> EgressPlan | None:
        """Check the policy and start its proxy, before the sandbox is made; None: no network."""
        if network is None or not network.allow:
            return None
        policy = Policy.parse(network.allow, self.cap)
        if template.runtime == "runsc" and not await anyio.to_thread.run_sync(self._gvisor_reaches_sockets):
            raise InvalidInput(
                f"template {template.name!r} runs under gVisor, which on this engine cannot reach the server's "
                "egress proxy (runsc runs without --host-uds=open): use a runc template (e.g. 'python' or 'dev') "
                "for a network allow-list."
            )
        if not self.docker.local:
            raise InvalidInput(
                "network allow-lists need the Docker Engine on this server's machine; this one is remote: "
                "leave out `network`."
            )
        proxy = EgressProxy(socket_root() / secrets.token_hex(8), policy)
        await proxy.start()
        volume = VolumeMount(name="egress", source=str(proxy.directory), target=SOCKET_DIR, read_only=True)
        names = (await anyio.to_thread.run_sync(self._image_env, image)).split()
        env = {**PROXY_ENV, "CLOUDSKILLS_IMAGE_ENV": " ".join(sorted({*names, *PROXY_ENV}))}
        return EgressPlan(policy, proxy, volume, env)

    def _gvisor_reaches_sockets(self) -> bool:
        """Whether the engine runs gVisor with ``--host-uds=open``: only then can a gVisor sandbox
        connect to the proxy's unix socket bound into it (``scripts/ensure-docker`` sets it)."""
        try:
            runtimes = self.docker.client.api.info().get("Runtimes") or {}
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        args = (runtimes.get("runsc") or {}).get("runtimeArgs") or []
        return any(arg in ("--host-uds=open", "--host-uds=all") for arg in args)

    def _image_env(self, image: str) -> str:
        """The names the image passes to commands (its CLOUDSKILLS_IMAGE_ENV), which ours join."""
        try:
            config = self.docker.client.api.inspect_image(image).get("Config") or {}  # type: ignore[no-untyped-call]
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return ""
        for item in cast(list[str], config.get("Env") or []):
            if item.startswith("CLOUDSKILLS_IMAGE_ENV="):
                return item.partition("=")[2]
        return ""

    async def attach(self, sandbox_id: str, container_id: str | None, plan: EgressPlan) -> None:
        """Record the sandbox's policy, and start the forwarder inside it."""
        with self.store.transaction() as session:
            session.add(
                SandboxNetwork(sandbox_id=sandbox_id, allow=plan.policy.texts(), socket_dir=str(plan.proxy.directory))
            )
        self.proxies[sandbox_id] = plan.proxy
        assert container_id is not None
        await anyio.to_thread.run_sync(self._start_forwarder, container_id)

    def _start_forwarder(self, container_id: str) -> None:
        api = self.docker.client.api
        try:
            exec_id = api.exec_create(container_id, ["python3", "-c", FORWARDER], user="1000:1000", workdir="/")["Id"]
            api.exec_start(exec_id)  # returns once it listens (its child serves)
            code = api.exec_inspect(exec_id).get("ExitCode")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendUnavailable(f"the sandbox's egress forwarder could not start ({exc}): try again.") from exc
        if code != 0:
            raise BackendUnavailable(
                f"the sandbox's egress forwarder exited with {code}: destroy the sandbox and try again."
            )

    async def abandon(self, plan: EgressPlan) -> None:
        await plan.proxy.close(remove=True)

    def policy_of(self, sandbox_id: str) -> list[str] | None:
        with self.store.transaction() as session:
            row = session.get(SandboxNetwork, sandbox_id)
            return None if row is None else list(row.allow)

    async def reconcile(self, every_record: bool = True) -> None:
        """Proxies for this server's live sandboxes with a policy; none for ended ones. Without
        ``every_record``, only live sandboxes' records and those of proxies this process runs are
        read (a pass a second must not grow with every sandbox that ever had a network); the
        first pass reads them all, for what a dead process left."""
        root = str(socket_root())
        query = select(SandboxNetwork.sandbox_id, SandboxNetwork.allow, SandboxNetwork.socket_dir, Sandbox.state)
        query = query.join(Sandbox, Sandbox.id == SandboxNetwork.sandbox_id)
        if not every_record:
            query = query.where(Sandbox.state.in_(LIVE_STATES) | SandboxNetwork.sandbox_id.in_(list(self.proxies)))
        with self.store.transaction() as session:
            rows = session.execute(query).all()
        live = {r.sandbox_id for r in rows if r.state in LIVE_STATES}
        for sandbox_id in [s for s in self.proxies if s not in live]:
            if any(r.sandbox_id == sandbox_id for r in rows):  # recorded and ended (not still being made)
                await self.proxies.pop(sandbox_id).close(remove=True)
        for row in rows:
            directory = Path(row.socket_dir)
            if (
                row.sandbox_id in live
                and row.sandbox_id not in self.proxies
                and row.socket_dir.startswith(root)
                and not await anyio.to_thread.run_sync(answers, directory)  # another process on this host serves it
            ):
                # Accepted under the cap when it was made: not judged again.
                proxy = EgressProxy(directory, Policy(tuple(Rule.parse(text) for text in row.allow)))
                try:
                    await proxy.start()
                except OSError as exc:
                    log.warning("could not restart the egress proxy of %s: %s", row.sandbox_id, exc)
                    continue
                self.proxies[row.sandbox_id] = proxy
            elif row.sandbox_id not in live and row.socket_dir.startswith(root) and directory.is_dir():  # noqa: ASYNC240
                await EgressProxy(directory, Policy(())).close(remove=True)

    async def serve(self) -> None:
        try:
            every_record = True
            while True:
                try:
                    await self.reconcile(every_record)
                    every_record = False
                except CloudSkillsError as exc:
                    log.warning("egress proxies: %s", exc)
                await anyio.sleep(RECONCILE_S)
        finally:
            with anyio.CancelScope(shield=True):
                for proxy in self.proxies.values():
                    await proxy.close()
                self.proxies.clear()


def answers(directory: Path) -> bool:
    """Whether a proxy (this process's or another's on this host) listens on the socket there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(directory / SOCKET_NAME))
        except OSError:
            return False
        return True


async def create_with_network(
    ctx: TaskContext,
    network: NetworkPolicy | None,
    template: Template,
    limits: Limits,
    ttl_s: int,
    task_id: str | None,
    volumes: tuple[VolumeMount, ...],
) -> SandboxRecord:
    """``SandboxManager.create``, with the sandbox's egress proxy when ``network`` allows any."""
    sandboxes = ctx.service(SandboxManager)
    egress = ctx.service(Egress)
    plan = await egress.plan(network, template, sandboxes.images.get(template.image, template.image))
    if plan is None:
        return await sandboxes.create(ctx.tenant_id, template, limits, ttl_s, task_id, volumes)
    try:
        record = await sandboxes.create(
            ctx.tenant_id, template, limits, ttl_s, task_id, (*volumes, plan.volume), plan.env
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await egress.abandon(plan)
        raise
    try:
        await egress.attach(record.id, record.container_id, plan)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await sandboxes.destroy(record.id, "failed_to_start")
            await egress.abandon(plan)
        raise
    return record
