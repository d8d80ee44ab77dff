"""What crosses the wire for the sandbox skill: the ops' arguments and results."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from skills.base import OpInput
from skills.commands import EnvVars
from skills.commands import ExecOutput as ExecOutput  # re-exported: the sandbox ops' answer
from skills.sandbox.mounts import WORKSPACES, Workspaces
from skills.sandbox.network import NETWORK, NetworkPolicy
from skills.sandbox.records import CREATE_DEFAULT, RUN_DEFAULT
from skills.sandbox.results import RichOutput

Language = Literal["python", "bash"]
Encoding = Literal["utf-8", "base64"]

SANDBOX_ID = Field(description="The id sandbox_create returned, e.g. 'sb_0123abcd4567ef89'.")
TIMEOUT = Field(default=60.0, gt=0, le=3600, description="Seconds the command may run before it is killed.")
MAX_OUTPUT = Field(
    default=65536,
    ge=1,
    le=1 << 20,
    description="Bytes of stdout and of stderr kept; the rest is cut with a marker.",
)
MAX_PATH_CHARS = 1024
MAX_PATH_DEPTH = 64


def checked_path(path: str) -> str:
    """Refuse a path no sandbox needs, before it reaches one: no NUL, at most MAX_PATH_DEPTH deep."""
    if "\0" in path:
        raise PydanticCustomError("sandbox_path", "a path cannot hold a NUL byte: remove it")
    depth = sum(1 for part in path.split("/") if part)
    if depth > MAX_PATH_DEPTH:
        raise PydanticCustomError(
            "sandbox_path",
            "the path is {depth} directories deep, more than the {limit} a sandbox path may have: use a shorter path",
            {"depth": depth, "limit": MAX_PATH_DEPTH},
        )
    return path


# Every path argument of the sandbox skill: bounded in length and depth.
SandboxPath = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PATH_CHARS),
    AfterValidator(checked_path),
]


class FileIn(BaseModel):
    path: SandboxPath = Field(description="Where to write it; relative paths are under /work.")
    content: str = Field(description="The file's content, as text or base64 (see encoding).")
    encoding: Encoding = "utf-8"


class FileOut(BaseModel):
    path: str
    size: int = Field(description="The file's size in bytes.")
    content: str = Field(description="The content read (at most max_bytes), as text or base64 (see encoding).")
    encoding: Encoding
    truncated: bool = False
    error: str | None = Field(default=None, description="Why the file could not be read, if it could not.")


class RunInput(OpInput):
    language: Language = Field(default="python", description="The language of `code`.")
    code: str | None = Field(default=None, description="Code to run. Give this or `command`.")
    command: str | None = Field(default=None, description="A shell command line to run with bash. Or give `code`.")
    files: list[FileIn] = Field(default_factory=list, max_length=100, description="Files to write before running.")
    outputs: list[SandboxPath] = Field(
        default_factory=list, max_length=100, description="Paths to read back after running."
    )
    timeout_s: float = TIMEOUT
    max_output: int = MAX_OUTPUT
    env: EnvVars = Field(default_factory=dict)
    template: str = Field(default=RUN_DEFAULT, description="The sandbox template (see sandbox_create).")
    workspaces: Workspaces = WORKSPACES
    network: NetworkPolicy | None = NETWORK


class RunOutput(RichOutput):
    files: list[FileOut] = Field(default_factory=list, description="The files named in `outputs`.")


class CreateInput(OpInput):
    template: str = Field(
        default=CREATE_DEFAULT,
        description="'dev' (gcc, make, git, pip, venv, pytest, curl), 'python' or 'bash' (runc), "
        "or 'python-gvisor' / 'bash-gvisor' for gVisor's stronger isolation.",
    )
    ttl_s: int = Field(
        default=900,
        ge=10,
        le=86400,
        description="Idle seconds before the sandbox ends; it ends then even if no server is running.",
    )
    vcpus: float | None = Field(default=None, gt=0, le=2, description="CPUs the sandbox may use; default 1.")
    memory_mib: int | None = Field(default=None, ge=64, le=4096, description="Memory limit in MiB; default 512.")
    disk_mib: int | None = Field(
        default=None,
        ge=256,
        le=16384,
        description="The disk /work and /tmp share, in MiB, billed by the GiB-hour; default the template's "
        "(2048; 4096 for dev).",
    )
    workspaces: Workspaces = WORKSPACES
    network: NetworkPolicy | None = NETWORK


class SandboxInfo(BaseModel):
    sandbox_id: str
    template: str
    state: str
    vcpus: float
    memory_mib: int
    disk_mib: int
    ttl_s: int
    created_at: str
    last_used_at: str


class CreateOutput(SandboxInfo):
    pass


class ExecInput(OpInput):
    sandbox_id: str = SANDBOX_ID
    command: str = Field(min_length=1, description="A shell command line, run with bash in /work.")
    timeout_s: float = TIMEOUT
    max_output: int = MAX_OUTPUT
    env: EnvVars = Field(default_factory=dict)
    cwd: SandboxPath | None = Field(default=None, description="Working directory; default /work.")
    background: bool = Field(
        default=False,
        description="Start it in the background and return its process_id at once; read its output with "
        "sandbox_process_output, stop it with sandbox_process_kill. It ends with the sandbox.",
    )


class SessionExecOutput(RichOutput):
    process_id: str | None = Field(
        default=None,
        description="With background: the process started (exit_code, stdout and stderr are then 0 and empty).",
    )


class RunCodeInput(OpInput):
    sandbox_id: str = SANDBOX_ID
    code: str = Field(description="The code to run.")
    language: Language | None = Field(default=None, description="Default: the template's language.")
    timeout_s: float = TIMEOUT
    max_output: int = MAX_OUTPUT


class WriteFileInput(OpInput):
    sandbox_id: str = SANDBOX_ID
    path: SandboxPath = Field(description="Relative paths are under /work.")
    content: str
    encoding: Encoding = "utf-8"


class WriteFileOutput(BaseModel):
    path: str
    size: int


class ReadFileInput(OpInput):
    sandbox_id: str = SANDBOX_ID
    path: SandboxPath
    encoding: Encoding | None = Field(default=None, description="Default: utf-8 when the file is text, else base64.")
    max_bytes: int = Field(default=1 << 20, ge=1, le=10 << 20)


class ReadFileOutput(FileOut):
    pass


class ListFilesInput(OpInput):
    sandbox_id: str = SANDBOX_ID
    path: SandboxPath = Field(default="/work")


class FileEntry(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "link"]
    size: int


class ListFilesOutput(BaseModel):
    path: str
    entries: list[FileEntry]


class ListInput(OpInput):
    pass


class ListOutput(BaseModel):
    sandboxes: list[SandboxInfo]


class DestroyInput(OpInput):
    sandbox_id: str = SANDBOX_ID


class DestroyOutput(BaseModel):
    sandbox_id: str
    destroyed: bool = Field(description="False when it was already gone (destroy is idempotent).")
