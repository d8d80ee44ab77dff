"""The skills extension (``io.modelcontextprotocol/skills``, SEP-2640): our skills as Agent Skills.

Every file of a skill is a resource ``skill://<name>/<path>``, read with
``resources/read`` as its raw bytes (SKILL.md with its front matter), so a host
can check each one against the digest the skill's entry publishes. A skill's
files are its SKILL.md and whatever lies under the Agent Skills folders
(``references/``, ``scripts/``, ``assets/``); the Python modules beside them
are the server's code, not the skill's. A new skill folder is served as it is
discovered, with nothing to register.

- ``skills/list``: every skill's entry (paginated): the SKILL.md URI, its front
  matter verbatim as JSON, and the complete manifest of its files, each with a
  ``sha256:`` digest and its size.
- ``skills/get``: one entry by its SKILL.md URI; ``-32602`` for anything else.
- ``resources/directory/read``: the direct children of ``skill://<name>`` or
  of a folder under it.

The files are read once, when the server is built, and served from memory, so
an entry and the bytes a host then reads always agree.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding, ResourceBinding
from mcp.server.mcpserver.resources import BinaryResource, Resource, TextResource
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, PaginatedRequestParams, RequestParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from skills.base import Skill
from skills.registry import Registry, front_matter

SKILLS_EXTENSION = "io.modelcontextprotocol/skills"
SKILL_FOLDERS = ("references", "scripts", "assets")
DIRECTORY = "inode/directory"
PAGE_SIZE = 50
# Skills change only when the server is redeployed; the same for every caller.
CACHE = {"ttlMs": 300_000, "cacheScope": "public"}


@dataclass(frozen=True)
class SkillFile:
    uri: str
    path: str  # relative to the skill's folder, with "/"
    data: bytes

    @property
    def mime_type(self) -> str:
        if self.path.endswith(".md"):
            return "text/markdown"
        guessed = mimetypes.guess_type(self.path)[0]
        return guessed or ("text/plain" if self.text is not None else "application/octet-stream")

    @cached_property
    def text(self) -> str | None:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def manifest(self) -> dict[str, Any]:
        return {"uri": self.uri, "digest": f"sha256:{hashlib.sha256(self.data).hexdigest()}", "size": len(self.data)}

    def listing(self) -> dict[str, Any]:
        """The file as a child in a directory read."""
        return {
            "uri": self.uri,
            "name": self.path.rsplit("/", 1)[-1],
            "mimeType": self.mime_type,
            "size": len(self.data),
        }


@dataclass(frozen=True)
class ServedSkill:
    name: str
    frontmatter: dict[str, Any]
    files: tuple[SkillFile, ...]  # SKILL.md first

    @property
    def uri(self) -> str:
        return self.files[0].uri

    def entry(self) -> dict[str, Any]:
        return {"uri": self.uri, "frontmatter": self.frontmatter, "resources": [f.manifest() for f in self.files]}


def skill_files(folder: Path) -> list[Path]:
    """SKILL.md, then every file under the Agent Skills folders, in a stable order."""
    found = [folder / "SKILL.md"]
    for sub in SKILL_FOLDERS:
        for path in sorted((folder / sub).rglob("*")):
            relative = path.relative_to(folder).parts
            if path.is_file() and not any(part.startswith((".", "__")) for part in relative):
                found.append(path)
    return found


def read_skill(skill: Skill) -> ServedSkill | None:
    if skill.folder is None:  # declared in code alone (tests): nothing on disk to serve
        return None
    files = []
    for path in skill_files(skill.folder):
        relative = path.relative_to(skill.folder).as_posix()
        files.append(SkillFile(f"skill://{skill.name}/{relative}", relative, path.read_bytes()))
    # The front matter of the very bytes we serve, not of an earlier read.
    frontmatter, _ = front_matter(files[0].data.decode("utf-8"))
    return ServedSkill(skill.name, frontmatter, tuple(files))


def as_resource(skill: ServedSkill, file: SkillFile) -> Resource:
    if file is skill.files[0]:
        return TextResource(
            uri=file.uri,
            name=skill.name,
            description=str(skill.frontmatter.get("description", "")),
            mime_type="text/markdown",
            text=file.text or "",
        )
    name = f"{skill.name}/{file.path}"
    if file.text is not None:
        return TextResource(uri=file.uri, name=name, mime_type=file.mime_type, text=file.text)
    return BinaryResource(uri=file.uri, name=name, mime_type=file.mime_type, data=file.data)


def page(items: Sequence[dict[str, Any]], cursor: str | None, size: int) -> dict[str, Any]:
    """One page of ``items`` from an opaque cursor, with the cursor of the next if any."""
    start = 0
    if cursor is not None:
        try:
            start = int(base64.urlsafe_b64decode(cursor.encode()).decode().removeprefix("at:"))
        except ValueError:
            start = -1
        if not 0 <= start <= len(items):
            raise MCPError(code=INVALID_PARAMS, message="this cursor is not one we gave: list again without a cursor.")
    shown: dict[str, Any] = {"items": list(items[start : start + size])}
    if start + size < len(items):
        shown["nextCursor"] = base64.urlsafe_b64encode(f"at:{start + size}".encode()).decode()
    return shown


class GetSkillParams(RequestParams):
    uri: str


class DirectoryParams(PaginatedRequestParams):
    uri: str


class SkillsExtension(Extension):
    identifier = SKILLS_EXTENSION

    def __init__(self, registry: Registry, page_size: int = PAGE_SIZE) -> None:
        self.page_size = page_size
        self.skills = [served for skill in registry.skills if (served := read_skill(skill)) is not None]
        self.by_uri = {skill.uri: skill for skill in self.skills}
        # Every folder of every skill, the skill's own included, with its direct children.
        self.folders: dict[str, list[dict[str, Any]]] = {}
        for skill in self.skills:
            root = f"skill://{skill.name}"
            self.folders[root] = []
            for file in skill.files:
                parent, parts = root, file.path.split("/")
                for folder in parts[:-1]:
                    here = f"{parent}/{folder}"
                    if here not in self.folders:
                        self.folders[here] = []
                        self.folders[parent].append({"uri": here, "name": folder, "mimeType": DIRECTORY})
                    parent = here
                self.folders[parent].append(file.listing())

    def settings(self) -> dict[str, Any]:
        return {"directoryRead": True}

    async def advertise_on_legacy(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """A server middleware: 2025-11-25's initialize has no ``extensions`` capability, so the
        SDK leaves ours out there; yet hosts that speak skills on that wire (the Inspector, for
        one) look for it, and skills/* are served on both wires, so declare it there too."""
        result = await call_next(ctx)
        if ctx.method == "initialize" and isinstance(result, dict):
            capabilities = result.setdefault("capabilities", {})
            capabilities.setdefault("extensions", {})[SKILLS_EXTENSION] = self.settings()
        return result

    def resources(self) -> list[ResourceBinding]:
        return [ResourceBinding(as_resource(skill, file)) for skill in self.skills for file in skill.files]

    def methods(self) -> list[MethodBinding]:
        return [
            MethodBinding("skills/list", PaginatedRequestParams, self.list_skills),
            MethodBinding("skills/get", GetSkillParams, self.get_skill),
            MethodBinding("resources/directory/read", DirectoryParams, self.read_directory),
        ]

    async def list_skills(self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams) -> HandlerResult:
        shown = page([skill.entry() for skill in self.skills], params.cursor, self.page_size)
        return {"skills": shown.pop("items"), **shown, **cacheable(ctx)}

    async def get_skill(self, ctx: ServerRequestContext[Any, Any], params: GetSkillParams) -> HandlerResult:
        skill = self.by_uri.get(params.uri)
        if skill is None:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"No skill is served at {params.uri}: a skill is named by the URI of its SKILL.md, "
                "e.g. skill://sandbox/SKILL.md; skills/list shows every one.",
            )
        return {"skill": skill.entry(), **cacheable(ctx)}

    async def read_directory(self, ctx: ServerRequestContext[Any, Any], params: DirectoryParams) -> HandlerResult:
        children = self.folders.get(params.uri.rstrip("/"))
        if children is None:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"{params.uri} is not a directory resource: read a skill's folder, e.g. skill://sandbox "
                "or skill://sandbox/references, or read a file with resources/read.",
            )
        shown = page(children, params.cursor, self.page_size)
        return {"resources": shown.pop("items"), **shown}


def cacheable(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """The list-caching attributes 2026-07-28 requires on these results; older wires have none."""
    return dict(CACHE) if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS else {}
