"""Settings: CLOUDSKILLS_* environment variables, then ``config.toml`` in the data dir, then defaults."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.paths import user_cache


def default_image_cache() -> Path:
    """Built VM guests, shared by every data dir on the machine (they take a minute to build)."""
    explicit = os.environ.get("CLOUDSKILLS_IMAGE_CACHE")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/cache/cloudskills")
    return user_cache()


def default_home() -> Path:
    explicit = os.environ.get("CLOUDSKILLS_HOME")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "cloudskills"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLOUDSKILLS_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="The data dir.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in the data dir.")
    docker_host: str | None = Field(
        default=None, description="Docker Engine URL; default: DOCKER_HOST or the local socket."
    )
    docker_hosts: list[dict[str, Any]] | None = Field(
        default=None,
        description="Several Docker Engines for sandboxes (sandbox/engines.py), the first the default for "
        "everything else: each {name, url (unix://, tcp:// or ssh://), capacity (sandboxes, default 32), "
        "drain (takes no new sandboxes), tls: {ca, cert, key} for tcp}; default: docker_host alone.",
    )
    tenant: str = Field(default="local", description="The tenant a stdio server and the CLI act for.")
    agent: str | None = Field(
        default=None, description="The tenant's agent a stdio server and the CLI act as (default: unnamed)."
    )
    workers: int = Field(default=16, ge=1, le=1024, description="Tasks run at once by this process.")
    reap_interval_s: float = Field(default=10.0, gt=0, description="Seconds between reaper passes.")
    pool_size: int = Field(default=8, ge=0, le=256, description="Warm sandboxes kept ready by a server.")
    pool_memory_mib: int = Field(default=4096, ge=0, description="Host memory the warm pool may hold, in MiB.")
    pool_drain_s: float | None = Field(
        default=None,
        ge=0,
        description="At shutdown, seconds to wait for the warm pool's removal (None: all of it). A warm sandbox "
        "ends anyway once its server lets go, and the engine completes a removal under way; a stdio server "
        "waits 0.3 s, as MCP clients give a server about a second.",
    )
    worker_lapse_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds without a heartbeat after which a server sharing the store (a replica) is judged "
        "dead: another fails or retries its tasks, reaps its warm sandboxes and takes over its duties.",
    )
    sandbox_idle_pause: bool = Field(
        default=False,
        description="Pause an idle session sandbox at its ttl_s instead of destroying it, where its runtime can "
        "(gVisor templates); a paused one is destroyed after sandbox_paused_retention_s.",
    )
    sandbox_paused_retention_s: float = Field(
        default=7 * 86400, gt=0, description="Seconds a paused session sandbox is kept before it is destroyed."
    )
    task_retention_s: float = Field(
        default=7 * 86400,
        gt=0,
        description="Seconds a finished task's details (arguments and result, never contents or secrets) are kept; "
        "its op, timing, cost and error and the ledger are kept for good.",
    )
    lease_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds of running cost a long-lived resource (session sandbox, database, VM) holds ahead; "
        "it is billed and renewed when half of it is left.",
    )
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Models offered besides the default: name -> engine (llama or openai), path or base_url, ...",
    )
    auto_confirm: bool = Field(
        default=False, description="Go ahead with destructive ops without asking the client (unattended agents)."
    )
    image_cache: Path = Field(default_factory=default_image_cache, description="Where VM guests are built and kept.")
    prices_file: Path | None = Field(default=None, description="A price catalog overriding the built-in one.")
    operator_key: str | None = Field(
        default=None,
        description="The operator's key: signs in to the console over every tenant and reads /metrics "
        "(Authorization: Bearer). Unset: no operator, and /metrics only on metrics_address.",
    )
    metrics_address: str | None = Field(
        default=None,
        description="host:port where an HTTP server also serves /metrics without a key (e.g. 127.0.0.1:9464).",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector (e.g. http://127.0.0.1:4318) to export traces to; also read from "
        "OTEL_EXPORTER_OTLP_ENDPOINT. Unset: no tracing.",
    )
    public_url: str | None = Field(
        default=None,
        description="The server's address as clients reach it (e.g. https://cloud.example.org), for the URLs "
        "sandbox_expose returns; default the address it listens on.",
    )
    sandbox_egress_cap: list[str] | None = Field(
        default=None,
        description="What sandboxes' network allow-lists may name at most (host:port rules, '*' for any port, "
        "e.g. ['*.example.org:443', '10.1.2.0/24:*']); None: any host name or public address, nothing inside this "
        "server's networks.",
    )
    log_json: bool = Field(default=False, description="Log one JSON object a line, with task id, tenant and agent.")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="The server's event loop: uvloop (libuv's: less CPU a streamed token) or asyncio (Python's own).",
    )

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'cloudskills.db'}"


def load_settings(**overrides: Any) -> Settings:
    """Environment first, then the data dir's config.toml for what the environment left unset."""
    settings = Settings()
    config = settings.home / "config.toml"
    if config.is_file():
        from_file = tomllib.loads(config.read_text())
        unset = {k: v for k, v in from_file.items() if k not in settings.model_fields_set}
        settings = Settings(**{**settings.model_dump(exclude_unset=True), **unset})
    if overrides:
        settings = Settings(**{**settings.model_dump(exclude_unset=True), **overrides})
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings
