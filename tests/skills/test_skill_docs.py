"""Every skill is an Agent Skill worth loading, and what its files say is true to the code.

For each skill folder: front matter in the Agent Skills format (name equal to the
folder, a description, a license, metadata with a version); a reference of its
errors and a worked example beside SKILL.md. Every tool its files name exists;
every argument an example passes validates against the tool's input model, and
every field an answer shows is in the tool's output schema; every error code the
reference names is one of ours, and every error its own code raises is in it;
every message it quotes is one the code can produce.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from common import errors
from common.errors import ERRORS_BY_CODE, CloudSkillsError
from runtime.mcp_skills import read_skill, skill_files
from skills.base import Skill
from skills.registry import discover

ROOT = Path(__file__).resolve().parents[2]
SKILLS = discover().skills
TOOLS = {name: op for name, _skill, op in discover().tools()}
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # the Agent Skills rule for `name`
CALL = re.compile(r"^\s*([a-z]+_[a-z_]+) (\{.*\})\s*$")
ANSWER = re.compile(r"^\s*→ (\{.*\})\s*$")


def ids(skill: Skill) -> str:
    return skill.name


def properties(schema: dict[str, Any]) -> set[str]:
    """Every property name in a JSON schema, nested models ($defs) included."""
    names = set(schema.get("properties", {}))
    for sub in schema.get("$defs", {}).values():
        names |= properties(sub)
    return names


@cache
def field_names() -> frozenset[str]:
    names: set[str] = set()
    for op in TOOLS.values():
        names |= properties(op.input.model_json_schema()) | properties(op.wire_output.model_json_schema())
    return frozenset(names)


def literal(node: ast.expr) -> str | None:
    """A string as the code writes it, each interpolated part as `…`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)  # type: ignore[misc]
    return None


@cache
def messages() -> tuple[str, ...]:
    """Every string literal of our packages: what an error message can be made of."""
    found = []
    for package in ("common", "runtime", "scheduler", "sandbox", "skills"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.expr) and (text := literal(node)) is not None:
                    found.append(text)
    return tuple(found)


def raised_codes(folder: Path) -> set[str]:
    """The codes of the errors a skill's own code constructs."""
    classes = {
        name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, CloudSkillsError)
    }
    codes = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                codes.add(classes[node.func.id].code)
    return codes


def reference(skill: Skill, name: str) -> str:
    assert skill.folder is not None
    path = skill.folder / "references" / name
    assert path.is_file(), f"skills/{skill.name}/references/{name} is missing: every skill has one"
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("skill", SKILLS, ids=ids)
def test_front_matter_is_in_the_agent_skills_format(skill: Skill) -> None:
    assert skill.folder is not None and skill.folder.name == skill.name, "name must equal the skill's folder"
    assert NAME.match(skill.name) and len(skill.name) <= 64
    meta = skill.meta
    assert isinstance(meta["description"], str) and 0 < len(meta["description"]) <= 1024
    assert isinstance(meta.get("license"), str) and meta["license"]
    assert isinstance(meta.get("metadata"), dict) and isinstance(meta["metadata"].get("version"), str)
    doc = (skill.folder / "SKILL.md").read_text(encoding="utf-8")
    assert "references/ERRORS.md" in doc and "references/EXAMPLE.md" in doc, "SKILL.md points to its references"
    served = read_skill(skill)
    assert served is not None and served.frontmatter == meta
    assert [f.path for f in served.files] == [p.relative_to(skill.folder).as_posix() for p in skill_files(skill.folder)]
    assert {"SKILL.md", "references/ERRORS.md", "references/EXAMPLE.md"} <= {f.path for f in served.files}


@pytest.mark.parametrize("skill", SKILLS, ids=ids)
def test_every_tool_and_argument_the_files_name_exists(skill: Skill) -> None:
    assert skill.folder is not None
    prefixes = "|".join(s.name for s in SKILLS)
    named = re.compile(rf"\b(?:{prefixes})_[a-z_]+\b")
    for path in skill_files(skill.folder):
        for word in set(named.findall(path.read_text(encoding="utf-8"))):
            assert word in TOOLS or word in field_names(), f"{path.relative_to(ROOT)} names {word!r}, which is no tool"


@pytest.mark.parametrize("skill", SKILLS, ids=ids)
def test_the_example_calls_are_valid_and_show_real_fields(skill: Skill) -> None:
    calls = 0
    last: str | None = None
    for line in reference(skill, "EXAMPLE.md").splitlines():
        if call := CALL.match(line):
            tool, arguments = call.group(1), json.loads(call.group(2))
            assert tool in TOOLS, f"EXAMPLE.md calls {tool!r}, which is no tool"
            TOOLS[tool].input.model_validate(arguments)  # raises on any argument the tool would refuse
            last, calls = tool, calls + 1
        elif answer := ANSWER.match(line):
            assert last is not None, f"an answer with no call before it: {line.strip()}"
            shown = set(json.loads(answer.group(1)))
            schema = TOOLS[last].wire_output.model_json_schema()
            assert shown <= set(schema["properties"]), f"{last} answers no {shown - set(schema['properties'])}"
    assert calls >= 3, "a worked example shows a sequence of calls"
    assert {name for name in TOOLS if name.startswith(f"{skill.name}_")} & {
        m.group(1) for line in reference(skill, "EXAMPLE.md").splitlines() if (m := CALL.match(line))
    }, "the example calls this skill's own tools"


@pytest.mark.parametrize("skill", SKILLS, ids=ids)
def test_the_error_reference_covers_the_code(skill: Skill) -> None:
    assert skill.folder is not None
    text = reference(skill, "ERRORS.md")
    documented = set(re.findall(r"^## `([a-z_]+)`", text, flags=re.M))
    assert documented, "ERRORS.md has one `## `code`` section per error code"
    assert documented <= set(ERRORS_BY_CODE), f"unknown codes: {documented - set(ERRORS_BY_CODE)}"
    missing = raised_codes(skill.folder) - documented
    assert not missing, f"skills/{skill.name} raises errors with codes {missing} that ERRORS.md does not explain"
    for op in skill.ops:
        assert f"`{skill.name}_{op.name}`" in text, f"ERRORS.md says nothing of {skill.name}_{op.name}"


@pytest.mark.parametrize("skill", SKILLS, ids=ids)
def test_every_quoted_message_is_one_the_code_can_produce(skill: Skill) -> None:
    # A quote spans lines in the Markdown source: join them as a reader does.
    text = " ".join(reference(skill, "ERRORS.md").split())
    quotes = re.findall(r'"([^"`]+)"', text)
    assert quotes, "ERRORS.md quotes the messages it explains"
    for quote in quotes:
        pieces = [piece.strip() for piece in quote.split("…") if piece.strip()]
        pattern = re.compile(".*".join(re.escape(piece) for piece in pieces), re.S)
        assert any(pattern.search(message) for message in messages()), f"no message of ours says {quote!r}"
