"""Every tool's name, description, schemas and annotations, against the recorded surface.

The surface is what agents and their clients rely on: a change to it must be
deliberate. After one, record it again with
`.venv/bin/python -m tests.runtime.test_tool_surface` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.app import App
from runtime.server import CloudSkillsServer
from runtime.settings import Settings, load_settings
from sandbox.docker import DockerDriver

RECORDED = Path(__file__).with_name("tool_surface.json")


def surface(app: App) -> dict[str, Any]:
    server = CloudSkillsServer(app, "local")
    tools = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in server._tools]
    return {tool.pop("name"): tool for tool in tools}


def offline_app(settings: Settings) -> App:
    # Listing needs no engine; the driver connects on first use only.
    return App(settings, DockerDriver("unix:///nonexistent/docker.sock"))


def test_the_tools_are_the_recorded_ones(settings: Settings) -> None:
    app = offline_app(settings)
    try:
        current = surface(app)
    finally:
        app.close()
    recorded = json.loads(RECORDED.read_text())
    assert sorted(current) == sorted(recorded), "tools were added or removed"
    for name, tool in recorded.items():
        for part, value in tool.items():
            assert current[name].get(part) == value, f"{name}: its {part} changed"


if __name__ == "__main__":
    import os
    import tempfile

    os.environ["CLOUDSKILLS_HOME"] = tempfile.mkdtemp()
    app = offline_app(load_settings(pool_size=0))
    RECORDED.write_text(json.dumps(surface(app), indent=1, sort_keys=True) + "\n")
    app.close()
    print(f"recorded {RECORDED}")
