"""Discovers the skills under ``skills/``: each subpackage with a SKILL.md and a ``SKILL``."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

import skills
from scheduler.resources import LiveQuota
from skills.base import Op, Platform, Skill


class FrontMatterLoader(yaml.SafeLoader):
    """YAML read as hosts of Agent Skills read it (YAML 1.2's core scalars): a date stays the
    string it was written as and only true/false are booleans, so the front matter we send
    as JSON is what any host parses from the same bytes."""


FrontMatterLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in found if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")]
    for first, found in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
FrontMatterLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split Agent Skills front matter (YAML between ``---`` lines) from the body."""
    if not text.startswith("---\n"):
        return {}, text
    header, _, body = text[4:].partition("\n---\n")
    fields = yaml.load(header, Loader=FrontMatterLoader)
    if not isinstance(fields, dict):
        raise ValueError("SKILL.md front matter must be a YAML mapping of fields (name, description, ...)")
    json.dumps(fields)  # it goes out as JSON verbatim: a value JSON cannot carry fails here, at discovery
    return fields, body.lstrip("\n")


def skill_doc(package: str) -> str:
    return resources.files(package).joinpath("SKILL.md").read_text(encoding="utf-8")


def skill_from_doc(
    package: str,
    ops: tuple[Op[Any, Any], ...],
    resource: Callable[[Platform], object] | None = None,
    quota: LiveQuota | tuple[LiveQuota, ...] | None = None,
    store_extensions: tuple[str, ...] = (),
    host_bound: tuple[str, ...] = (),
) -> Skill:
    """A skill named and described by its package's SKILL.md front matter, the body its guide;
    ``resource`` builds the manager of what it keeps alive past a call, if anything, and
    ``store_extensions`` are the SQLite extensions its tables need; ``host_bound`` the argument
    fields naming resources that live on the machine that made them."""
    meta, body = front_matter(skill_doc(package))
    return Skill(
        name=meta["name"],
        description=meta["description"],
        doc=body,
        ops=ops,
        resource=resource,
        quota=quota,
        meta=meta,
        folder=Path(str(resources.files(package))),
        store_extensions=store_extensions,
        host_bound=host_bound,
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
        found: list[LiveQuota] = []
        for skill in self.skills:
            if isinstance(skill.quota, LiveQuota):
                found.append(skill.quota)
            elif skill.quota is not None:
                found.extend(skill.quota)
        return found

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
