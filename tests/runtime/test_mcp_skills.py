"""The skills extension (io.modelcontextprotocol/skills, SEP-2640) through the SDK's in-memory
client, at both protocol versions: entries, digests that match the bytes resources/read
gives, directory reads, pagination, and -32602 for anything that is not a skill."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, PaginatedRequestParams, Request, RequestParams, Result
from pydantic import ConfigDict

from runtime.app import App
from runtime.server import CloudSkillsServer
from runtime.settings import Settings
from sandbox.docker import DockerDriver
from skills.base import Skill
from skills.registry import Registry, front_matter

pytestmark = pytest.mark.anyio
MODES = ["legacy", "2026-07-28"]


class Answer(Result):
    model_config = ConfigDict(extra="allow")


class UriParams(RequestParams):
    uri: str


class DirectoryParams(PaginatedRequestParams):
    uri: str


class ListSkills(Request[PaginatedRequestParams, Literal["skills/list"]]):
    method: Literal["skills/list"] = "skills/list"
    params: PaginatedRequestParams


class GetSkill(Request[UriParams, Literal["skills/get"]]):
    method: Literal["skills/get"] = "skills/get"
    params: UriParams


class ReadDirectory(Request[DirectoryParams, Literal["resources/directory/read"]]):
    method: Literal["resources/directory/read"] = "resources/directory/read"
    params: DirectoryParams


async def ask(client: Client, request: Request[Any, Any]) -> dict[str, Any]:
    answer = await client.session.send_request(request, Answer)
    return answer.model_dump(by_alias=True, exclude_none=True)


async def every_skill(client: Client) -> list[dict[str, Any]]:
    entries, cursor = [], None
    while True:
        page = await ask(client, ListSkills(params=PaginatedRequestParams(cursor=cursor)))
        entries += page["skills"]
        cursor = page.get("nextCursor")
        if cursor is None:
            return entries


async def raw_bytes(client: Client, uri: str) -> bytes:
    (content,) = (await client.read_resource(uri)).contents
    text = getattr(content, "text", None)
    assert text is not None, f"{uri} is text"
    return str(text).encode()


@pytest.fixture
def offline_app(settings: Settings) -> Iterator[App]:
    app = App(settings, DockerDriver("unix:///nonexistent/docker.sock"))
    yield app
    app.close()


@pytest.mark.parametrize("mode", MODES)
async def test_every_skill_is_listed_with_a_manifest_that_matches_what_resources_read_gives(
    offline_app: App, mode: str
) -> None:
    server = CloudSkillsServer(offline_app, "local")
    server.agent_skills.page_size = 2  # several pages, as a large catalog would have
    async with Client(server, mode=mode) as client:
        first = await ask(client, ListSkills(params=PaginatedRequestParams()))
        entries = await every_skill(client)
        assert [e["frontmatter"]["name"] for e in entries] == [s.name for s in offline_app.registry.skills]
        for entry in entries:
            name = entry["frontmatter"]["name"]
            assert entry["uri"] == f"skill://{name}/SKILL.md"
            assert entry["resources"][0]["uri"] == entry["uri"]
            assert {f"skill://{name}/references/ERRORS.md", f"skill://{name}/references/EXAMPLE.md"} <= {
                r["uri"] for r in entry["resources"]
            }
            for resource in entry["resources"]:
                data = await raw_bytes(client, resource["uri"])
                assert resource["digest"] == f"sha256:{hashlib.sha256(data).hexdigest()}"
                assert resource["size"] == len(data)
            # resources/read of SKILL.md is the file itself, its front matter the entry's.
            skill_md = (await raw_bytes(client, entry["uri"])).decode()
            assert skill_md.startswith("---\n") and front_matter(skill_md)[0] == entry["frontmatter"]
            got = await ask(client, GetSkill(params=UriParams(uri=entry["uri"])))
            assert got["skill"] == entry
    # The list-caching attributes 2026-07-28 requires (on skills/get too); the legacy wire has none.
    cache = (300_000, "public") if mode != "legacy" else (None, None)
    assert (first.get("ttlMs"), first.get("cacheScope")) == cache == (got.get("ttlMs"), got.get("cacheScope"))
    assert len(first["skills"]) == 2 and "nextCursor" in first


@pytest.mark.parametrize("mode", MODES)
async def test_skills_get_of_anything_but_a_skill_is_invalid_params(offline_app: App, mode: str) -> None:
    async with Client(CloudSkillsServer(offline_app, "local"), mode=mode) as client:
        for uri in (
            "skill://nope/SKILL.md",
            "skill://sandbox/references/ERRORS.md",
            "skill://sandbox",
            "file:///etc/passwd",
        ):
            with pytest.raises(MCPError) as refused:
                await ask(client, GetSkill(params=UriParams(uri=uri)))
            assert refused.value.code == INVALID_PARAMS
            assert f"No skill is served at {uri}" in refused.value.message and "skills/list" in refused.value.message
        with pytest.raises(MCPError) as bad_cursor:
            await ask(client, ListSkills(params=PaginatedRequestParams(cursor="not-ours")))
        assert bad_cursor.value.code == INVALID_PARAMS


@pytest.mark.parametrize("mode", MODES)
async def test_directories_of_a_skill_read_as_their_direct_children(offline_app: App, mode: str) -> None:
    async with Client(CloudSkillsServer(offline_app, "local"), mode=mode) as client:
        root = await ask(client, ReadDirectory(params=DirectoryParams(uri="skill://sandbox")))
        assert [(r["uri"], r["mimeType"]) for r in root["resources"]] == [
            ("skill://sandbox/SKILL.md", "text/markdown"),
            ("skill://sandbox/references", "inode/directory"),
        ]
        refs = await ask(client, ReadDirectory(params=DirectoryParams(uri="skill://sandbox/references")))
        assert {r["name"] for r in refs["resources"]} >= {"ERRORS.md", "EXAMPLE.md"}
        for uri in ("skill://sandbox/SKILL.md", "skill://nope", "skill://sandbox/scripts"):
            with pytest.raises(MCPError) as refused:
                await ask(client, ReadDirectory(params=DirectoryParams(uri=uri)))
            assert refused.value.code == INVALID_PARAMS and "is not a directory resource" in refused.value.message


async def test_the_extension_is_declared_on_the_legacy_wire_too(offline_app: App) -> None:
    async with Client(CloudSkillsServer(offline_app, "local"), mode="legacy") as client:
        capabilities = client.server_capabilities
    assert capabilities is not None and capabilities.resources is not None
    assert (capabilities.extensions or {}).get("io.modelcontextprotocol/skills") == {"directoryRead": True}
    assert "io.modelcontextprotocol/tasks" not in (capabilities.extensions or {}), "no task handles on this wire"


async def test_a_new_skill_folder_is_served_with_nothing_to_register(offline_app: App, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    (folder / "references").mkdir(parents=True)
    (folder / "SKILL.md").write_text("---\nname: notes\ndescription: Keep notes.\ntags: [a, b]\n---\n# Notes\n")
    (folder / "references" / "GUIDE.md").write_text("How to keep notes.\n")
    (folder / "references" / "logo.bin").write_bytes(bytes(range(256)))
    (folder / "ops.py").write_text("# the server's code, not the skill's\n")
    meta = front_matter((folder / "SKILL.md").read_text())[0]
    new = Skill(name="notes", description="Keep notes.", doc="# Notes\n", meta=meta, folder=folder)
    offline_app.registry = Registry((*offline_app.registry.skills, new))
    async with Client(CloudSkillsServer(offline_app, "local"), mode="2026-07-28") as client:
        entry = (await ask(client, GetSkill(params=UriParams(uri="skill://notes/SKILL.md"))))["skill"]
        assert entry["frontmatter"] == {"name": "notes", "description": "Keep notes.", "tags": ["a", "b"]}
        assert [r["uri"] for r in entry["resources"]] == [
            "skill://notes/SKILL.md",
            "skill://notes/references/GUIDE.md",
            "skill://notes/references/logo.bin",
        ]
        (blob,) = (await client.read_resource("skill://notes/references/logo.bin")).contents
        assert getattr(blob, "blob", None) is not None, "a file that is not UTF-8 is read as a blob"
        assert entry["resources"][2]["size"] == 256
