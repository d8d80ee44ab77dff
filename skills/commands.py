"""What a shell command takes and gives back, wherever it runs (a sandbox, a VM)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from common.errors import Timeout
from skills.base import Secret

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,255}$"


def checked_env(env: dict[str, str]) -> dict[str, str]:
    """Refuse what no process environment can hold, before anything runs or is charged."""
    for name, value in env.items():
        if not re.fullmatch(ENV_NAME, name):
            raise PydanticCustomError(
                "env_name",
                "{name} is not an environment variable name: use up to 256 letters, digits and '_', "
                "not starting with a digit",
                {"name": repr(name[:60])},
            )
        if "\0" in value:
            raise PydanticCustomError(
                "env_value",
                "the value of {name} holds a NUL byte, which no environment can hold: remove it",
                {"name": name},
            )
    return env


EnvVars = Annotated[
    dict[str, Annotated[str, Field(max_length=32768)]],
    Secret(),
    Field(
        max_length=100,
        description="Environment variables for the command: names are letters, digits and '_'.",
        json_schema_extra={"propertyNames": {"pattern": ENV_NAME}},
    ),
    AfterValidator(checked_env),
]


class ExecOutput(BaseModel):
    exit_code: int = Field(description="The command's exit status; 128+N when killed by signal N.")
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int


def command_timed_out(timeout_s: float, stdout: str, stderr: str) -> Timeout:
    """The error for a command killed at its timeout, with the end of what it printed."""
    tail = stdout[-400:] + stderr[-400:]
    return Timeout(
        f"the command ran past its timeout_s of {timeout_s:g} s and was killed; "
        f"give it a longer timeout_s or make it finish sooner. Output before it was killed: {tail!r}"
    )
