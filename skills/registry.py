"""Discovers the skills under ``skills/``: each subpackage with a SKILL.md and a ``SKILL``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import skills
from scheduler.resources import LiveQuota
from skills.base import Op, Platform, Skill


def front_matter(text: str) -> tuple[dict[str, str], str]:
    """Split Agent Skills front matter (``---`` delimited ``key: value`` lines) from the body."""
    if not text.startswith("---\n"):
        return {}, text
    header, _, body = text[4:].partition("\n---\n")
    fields = {}
    for line in header.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields, body.lstrip("\n")


def skill_doc(package: str) -> str:
    return resources.files(package).joinpath("SKILL.md").read_text()


def skill_from_doc(
    package: str,
    ops: tuple[Op[Any, Any], ...],
    resource: Callable[[Platform], object] | None = None,
    quota: LiveQuota | None = None,
) -> Skill:
    """A skill named and described by its package's SKILL.md front matter, the body its guide;
    ``resource`` builds the manager of what it keeps alive past a call, if anything."""
    meta, body = front_matter(skill_doc(package))
    return Skill(
        name=meta["name"], description=meta["description"], doc=body, ops=ops, resource=resource, quota=quota, meta=meta
    )


@dataclass(frozen=True)
class Registry:
    skills: tuple[Skill, ...]

    def find(self, tool_name: str) -> tuple[Skill, Op[Any, Any]] | None:
        """The skill and op behind a tool name ``<skill>_<op>``."""
        for skill in self.skills:
            prefix = f"{skill.name}_"
            if tool_name.startswith(prefix):
                op = skill.op(tool_name[len(prefix) :])
                if op is not None:
                    return skill, op
        return None

    def quotas(self) -> list[LiveQuota]:
        return [skill.quota for skill in self.skills if skill.quota is not None]

    def tools(self) -> list[tuple[str, Skill, Op[Any, Any]]]:
        return [(f"{skill.name}_{op.name}", skill, op) for skill in self.skills for op in skill.ops]


def discover() -> Registry:
    found = []
    for module in sorted(pkgutil.iter_modules(skills.__path__), key=lambda m: m.name):
        if not module.ispkg:
            continue
        package = importlib.import_module(f"skills.{module.name}")
        skill = getattr(package, "SKILL", None)
        if isinstance(skill, Skill):
            found.append(skill)
    return Registry(tuple(found))
